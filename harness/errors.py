"""Errors the harness reports to the user in one line, before any job starts."""

import sys


class ConfigError(ValueError):
    """A bad configuration value. The message names the key, the value and what is accepted."""

    def __init__(self, key: str, value, accepted: str):
        self.key, self.value, self.accepted = key, value, accepted
        super().__init__(f"{key}={value!r} is not accepted: {accepted}")


class MissingInputError(FileNotFoundError):
    """A local input (weights, data set) that the configuration points at is absent."""


def fail(message: str) -> None:
    """Report a bad input in one line and exit with status 2 (nothing has been written)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class CorruptInputError(MissingInputError):
    """A local input that exists but is not what it should be (checksum, format, shapes)."""


class CellStopped(Exception):
    """A cell stopped on purpose before it finished (a tuning trial pruned): not a failure; its
    checkpoints are kept and running it again resumes it."""
