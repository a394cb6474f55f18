"""Files written whole: a temporary file beside the target, flushed to disk, renamed over it.

    with atomic_write(path) as f:  # also write_text_atomically, write_json_atomically
      f.write(text)

A kill, a full disk or an exception mid-write leaves the old file or the new one, never half of
one. Every file lstm_jax writes goes through here, except the checkpoints' append-only
history.jsonl (whose readers check the length and hash a checkpoint recorded) and orbax's own
files (which orbax writes into a temporary directory and renames).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile


def write_json_atomically(path: str, obj, indent: int | None = None) -> None:
  write_text_atomically(path, json.dumps(obj, indent=indent))


def write_text_atomically(path: str, text: str) -> None:
  with atomic_write(path) as f:
    f.write(text)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", newline: str | None = None):
  """A file to write `path` through: a temporary file beside it, flushed to disk and renamed
  over `path` when the block ends without an exception (removed if it raises). A kill, a full
  disk or an exception mid-write leaves the old file or the new one, never half of one."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(
      fd, mode, **({} if "b" in mode else dict(encoding="utf-8", newline=newline))
    ) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
