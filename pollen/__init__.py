"""Pollen's shared package: config, data, models, adapters and training loops.

Both the server app and the client app import it; neither imports the other.
"""
