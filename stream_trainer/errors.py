"""One root exception for errors a user can cause and fix.

The CLI prints ``str(err)`` on one line (no traceback) and exits with ``err.exit_code``.
"""

from __future__ import annotations


class StreamTrainerError(Exception):
    """An error with a message that tells the user what to do."""

    exit_code = 2


class ConfigError(StreamTrainerError):
    """The configuration file or an override is invalid."""


class BrokerError(StreamTrainerError):
    """The Kafka broker cannot be reached, started, or used."""

    exit_code = 3


class PluginError(StreamTrainerError):
    """A user-supplied model or featurizer import path cannot be loaded."""


class CheckpointError(StreamTrainerError):
    """No usable checkpoint could be read, or one could not be written."""
