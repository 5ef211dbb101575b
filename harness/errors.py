"""Errors the harness reports to the user in one line, before any job starts."""


class ConfigError(ValueError):
    """A bad configuration value. The message names the key, the value and what is accepted."""

    def __init__(self, key: str, value, accepted: str):
        self.key, self.value, self.accepted = key, value, accepted
        super().__init__(f"{key}={value!r} is not accepted: {accepted}")


class MissingInputError(FileNotFoundError):
    """A local input (weights, data set) that the configuration points at is absent."""
