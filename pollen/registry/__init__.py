"""Pollen's adapter registry: bundles (``bundle``), the gRPC service and its store
(``server``), the client side with resumable fetches (``client``) and the server app's
per-round publisher (``publisher``). Wire types: proto/pollen/v1/adapters.proto."""
