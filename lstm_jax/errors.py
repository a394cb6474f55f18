"""Exceptions raised on bad input, and how the command-line mains show them.

Every lstm_jax error is an `LstmJaxError`, itself a `ValueError` (so `except ValueError` catches
them). Every message names the problem (which sequence, which key, which value) and the fix.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import threading
import time
import warnings
from typing import Callable

from lstm_jax.preemption import EXIT_PREEMPTED, Preempted


class LstmJaxError(ValueError):
  """Bad input to lstm_jax: the message says what is wrong and how to fix it."""


class DataError(LstmJaxError):
  """The data cannot be used as given: empty, non-finite, mis-shaped or out of range."""


class ConfigError(LstmJaxError):
  """A setting is invalid: an unknown name, a value out of range, an impossible combination."""


class CheckpointError(LstmJaxError):
  """A checkpoint is missing, damaged, written by a different run, or could not be written."""


def os_error_text(e: OSError) -> str:
  """'Permission denied (EACCES) at /path': an OSError in one line, with its errno's name."""
  name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else "?"
  return f"{e.strerror or e} ({name}){f' at {e.filename}' if e.filename else ''}"


def exit_on_user_error(main: Callable) -> Callable:
  """Wraps a command-line main: an `LstmJaxError` is printed as one message on stderr (no
  traceback: the message is the part that matters) and the process exits with status 2; a
  `Preempted` (training stopped at a SIGTERM or SIGINT, its checkpoint written) is one line and
  status 75 (`EXIT_PREEMPTED`); any other exception is a bug or a machine fault and keeps its
  traceback."""

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    warnings.formatwarning = _one_line_warning
    try:
      return main(*args, **kwargs)
    except LstmJaxError as e:
      print(f"error ({type(e).__name__}): {e}", file=sys.stderr, flush=True)
      if isinstance(e, CheckpointError):  # a failed write may leave orbax's threads waiting
        exit_without_hanging(2)
      sys.exit(2)
    except Preempted as e:  # a SIGTERM or SIGINT, after the checkpoint was written
      print(f"preempted: {e}", file=sys.stderr, flush=True)
      exit_without_hanging(EXIT_PREEMPTED)

  return wrapped


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
  """A warning as the command line prints it: 'warning (RuntimeWarning): ...', one line."""
  return f"warning ({category.__name__}): {' '.join(str(message).split())}\n"


def exit_without_hanging(status: int, grace_seconds: float = 2.0) -> None:
  """sys.exit(status), unless orbax's threads are still running after `grace_seconds` (waiting
  for a checkpoint write that failed, they would keep the process from exiting: a batch job
  would hold its allocation until killed). Then the streams are flushed and the process ends at
  once with `status`. Other threads are left alone (and the exit is the usual one)."""
  deadline = time.monotonic() + grace_seconds

  def orbax_threads():
    return [
      t
      for t in threading.enumerate()
      if not t.daemon and t.is_alive() and type(t).__module__.startswith("orbax")
    ]

  for t in orbax_threads():
    try:
      t.join(max(0.0, deadline - time.monotonic()))
    except Exception:  # orbax's threads raise TimeoutError from join instead of returning
      pass
  if orbax_threads():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
  sys.exit(status)
