"""Exceptions raised on bad input. Both are `ValueError`s, so `except ValueError` catches them.

Every message names the problem (which sequence, which key, which value) and the fix.
"""


class DataError(ValueError):
    """The data cannot be used as given: empty, non-finite, mis-shaped or out of range."""


class ConfigError(ValueError):
    """A setting is invalid: an unknown name, a value out of range, an impossible combination."""


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, or was written by a different run."""
