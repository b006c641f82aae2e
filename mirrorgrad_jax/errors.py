"""The exceptions that mean "the user gave something wrong", as opposed to a bug.

The command line prints these as one line and exits with status 2; anything else is a
bug and keeps its traceback. Library callers can catch :class:`UserInputError` to
handle every expected input mistake at once (each is also a ``ValueError``).
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "NoEpochFinished", "TrainingError", "UserInputError"]


class UserInputError(ValueError):
    """Something the user supplied (a name, a file, a setting) cannot be used as given."""


class ConfigError(UserInputError):
    """A configuration value of the wrong type or out of range, or an unknown key."""


class CheckpointError(UserInputError):
    """A file or folder that is not a usable mirrorgrad checkpoint for the request."""


class TrainingError(UserInputError):
    """A training set-up that cannot run as asked (a checkpoint that cannot be resumed from, a model's declared parameter groups that do not exist)."""


class NoEpochFinished(TrainingError, RuntimeError):
    """A run of the analysis tools that finished no epoch (its loss was not finite from the start, say): nothing to measure.

    A :class:`TrainingError`, so the command line says it in one line; also a
    ``RuntimeError``, what these tools raised before.
    """
