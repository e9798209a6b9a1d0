"""The error every input check raises: a run-config value, a file, a model or a client's
data that cannot be used, named before any training."""


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type, or out of range."""
