"""Exceptions raised on bad input, and how the command-line mains show them.

Every lstm_jax error is an `LstmJaxError`, itself a `ValueError` (so `except ValueError` catches
them). Every message names the problem (which sequence, which key, which value) and the fix.
"""

from __future__ import annotations

import ast
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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for the command-line mains (`app.run(main, flags_parser=parse_flags)`),
  with a bad flag as one line and exit status 2: an unknown flag, a value of the wrong type, a
  misspelt `--config.` key (ml_collections' own "Did you mean" kept), a bad preset. A config
  value given as `None` (`--config.strategy.pack.row_length=None`) is set to None, which
  ml_collections' typed parsing refuses, except where the setting is a string (`--config.data.
  normalize=none` is the word "none")."""
  from absl import flags  # noqa: PLC0415 (only the mains use absl)

  nones, rest = [], []
  for arg in _last_of_each_config_key(argv):
    name, _, value = arg.partition("=")
    if arg.startswith("--") and "." in name and value in ("None", "none"):
      nones.append((name[2:], value))
    else:
      rest.append(arg)
  try:
    left = flags.FLAGS(rest)
    _split_comma_lists(flags.FLAGS, rest)
    for path, value in nones:
      root, *keys = path.split(".")
      node = getattr(flags.FLAGS, root)
      for key in keys[:-1]:
        node = node[key]
      if keys[-1] not in node:
        raise KeyError(f"{keys[-1]!r}")
      # a string setting takes the word itself (--config.data.normalize=none is "none")
      node[keys[-1]] = value if isinstance(node[keys[-1]], str) else None
    return left
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    said = _flag_error_text(e)
    bad = [a for a in argv if a.startswith("--") and a.split("=")[0] not in said]
    bad = [a for a in bad if any(w.strip("'\"") in a.split("=")[0] for w in said.split()[:2])]
    where = f" (in {bad[0]})" if bad else ""
    print(
      f"error (ConfigError): bad flag{where}: {said}{'' if said[-1:] in '.?' else '.'} The keys "
      f"and their types are in configs/compare.py and lstm_jax/runner/config.py; --helpfull lists "
      f"the flags.",
      file=sys.stderr,
      flush=True,
    )
    sys.exit(2)


def _split_comma_lists(flag_values, argv: list[str]) -> None:
  """`--config.strategies=pad,bucket` as ('pad', 'bucket'): ml_collections reads a tuple of
  strings given without parentheses as one string ('pad,bucket',)."""
  for arg in argv:
    name, _, value = arg.partition("=")
    if not (arg.startswith("--") and "." in name and "," in value):
      continue
    if value.strip().startswith(("(", "[")):
      continue
    root, *keys = name[2:].split(".")
    node = getattr(flag_values, root)
    for key in keys[:-1]:
      node = node[key]
    now = node[keys[-1]]
    if isinstance(now, tuple) and now == (value,):
      node[keys[-1]] = tuple(v.strip() for v in value.split(",") if v.strip())


def _last_of_each_config_key(argv: list[str]) -> list[str]:
  """argv with only the last `--name.key=value` of each dotted key: a key given twice takes its
  last value, as any other flag does (ml_collections would join a tuple key's values:
  `--config.strategies=pad --config.strategies=bucket` ran both)."""
  last = {}
  for i, arg in enumerate(argv):
    name = arg.partition("=")[0]
    if arg.startswith("--") and "." in name and "=" in arg:
      last[name] = i
  return [
    a
    for i, a in enumerate(argv)
    if not (a.startswith("--") and "=" in a and last.get(a.partition("=")[0], i) != i)
  ]


def _flag_error_text(e: Exception) -> str:
  """One line of a flag error: ml_collections' quoted KeyError text unquoted, a config file's
  traceback reduced to its last line."""
  text = str(e)
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
  if "Traceback (most recent call last)" in text:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = next((line for line in reversed(lines) if ": " in line), lines[-1])
    text = text.split(": ", 1)[1] if text.split(": ", 1)[0].endswith("Error") else text
  return " ".join(text.split())


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
