"""Exceptions raised on bad input, and how the command-line mains show them.

Every lstm_jax error is an `LstmJaxError`, itself a `ValueError` (so `except ValueError` catches
them). Every message names the problem (which sequence, which key, which value) and the fix.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable


class LstmJaxError(ValueError):
  """Bad input to lstm_jax: the message says what is wrong and how to fix it."""


class DataError(LstmJaxError):
  """The data cannot be used as given: empty, non-finite, mis-shaped or out of range."""


class ConfigError(LstmJaxError):
  """A setting is invalid: an unknown name, a value out of range, an impossible combination."""


class CheckpointError(LstmJaxError):
  """A checkpoint is missing, damaged, written by a different run, or could not be written."""


def exit_on_user_error(main: Callable) -> Callable:
  """Wraps a command-line main: an `LstmJaxError` is printed as one message on stderr (no
  traceback: the message is the part that matters) and the process exits with status 2; any
  other exception is a bug or a machine fault and keeps its traceback."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except LstmJaxError as e:
      print(f"error ({type(e).__name__}): {e}", file=sys.stderr, flush=True)
      sys.exit(2)

  return wrapped
