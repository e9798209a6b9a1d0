"""Pollen's client app: trains the travelling tensors on the client's own data."""
