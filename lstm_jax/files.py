"""Files and directories written whole: a temporary file (or directory) beside the target, flushed
to disk, renamed over it.

    with atomic_write(path) as f:  # also write_text_atomically, write_json_atomically
      f.write(text)

A kill, a full disk or an exception mid-write leaves the old file or the new one, never half of
one. Every file lstm_jax writes goes through here, except the checkpoints' append-only
history.jsonl (whose readers check the length and hash a checkpoint recorded), TensorBoard's
append-only event files (lstm_jax.metric_writers: each record framed and checksummed, a record
cut short ends the file for its readers, and each writer opens a file of its own) and orbax's
own files (which orbax writes into a temporary directory and renames). A directory written whole
(an on-disk store) goes through `DirectoryWriter`: written beside its place under a lock,
swapped in so that a complete one is always there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from typing import Any, Callable

from lstm_jax.errors import ConfigError, LstmJaxError


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
    text: dict[str, Any] = {} if "b" in mode else dict(encoding="utf-8", newline=newline)
    with os.fdopen(fd, mode, **text) as f:
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


# --- directories written whole -------------------------------------------------------------------
LOCK_NAME = ".writer"  # the lock file inside a partial directory: who is writing it


def normalized_path(path, what: str = "output") -> str:
  """`path` made absolute and normal (no trailing slash, no `..`), so that `path + ".partial"`
  lies beside it, never inside it. An empty path is an error."""
  text = os.fspath(path)
  if not str(text).strip():
    raise ConfigError(f"the {what} path is empty; give a directory (for example --out NAME).")
  return os.path.abspath(os.path.normpath(text))


class DirectoryWriter:
  """A directory written whole, for a writer that fills `partial` and then calls `commit()`.

  - The writer claims `path.partial` under an exclusive lock (`flock` on `partial/.writer`,
    which names the holder): a second writer of the same path is refused in one line naming the
    first; a partial left by a writer that died (its lock released by the kernel) is cleared.
  - `path` is replaced only if `replaceable(path)` says it is what this writer writes (and
    `overwrite` is set), or is an empty directory; a file, a link or any other directory is
    refused: the user's files are theirs.
  - `commit()` renames the old directory aside (`path.replaced`), renames the new one in, then
    deletes the old: at every instant a complete directory (old or new) is at `path` or, for
    the instant between the two renames, at `path.replaced`, which the next writer puts back
    (and says so). `abort()` undoes whatever part of this was done.

  `names` are the entries a writer of this kind puts in its partial directory: a leftover holding
  anything else is not cleared but refused (it may be the user's). What is found and put right
  (a dead writer's partial, an interrupted swap) is said in a `LeftoverWarning`.
  """

  def __init__(
    self,
    path,
    *,
    replaceable: Callable[[str], bool],
    names: tuple[str, ...],
    overwrite: bool = False,
    error: type[Exception] = LstmJaxError,
    flag: str = "overwrite=True",
  ):
    self.error = error
    self.path = normalized_path(path)
    self.partial, self.aside = self.path + ".partial", self.path + ".replaced"
    self.replaceable, self.names, self.flag = replaceable, frozenset(names), flag
    self._stems = {n.split(".")[0] for n in self.names}  # an atomic write's temporary files
    self.committed = False
    self._check_target(overwrite)
    self._lock = self._claim()
    try:
      self._recover()
    except BaseException:
      os.close(self._lock)
      raise

  # -- before writing
  def _check_target(self, overwrite: bool) -> None:
    p = self.path
    if os.path.islink(p):
      raise self.error(f"{p} is a symbolic link; give the directory it points to, or another path.")
    if not os.path.lexists(p):
      return
    if not os.path.isdir(p):
      raise self.error(
        f"{p} is a file, not a directory; nothing replaces a file here: choose another path."
      )
    if self.replaceable(p):
      if not overwrite:
        raise self.error(
          f"{p} already exists; choose another output directory or pass {self.flag} to replace it."
        )
    elif os.listdir(p):
      raise self.error(
        f"{p} is a directory that this program did not write (it holds no lstm_jax metadata), "
        f"so it is never replaced, even with {self.flag}: choose another path."
      )

  def _ours(self, directory: str) -> bool:
    """Whether everything in `directory` is what a writer of this kind puts there (its files,
    its lock, an atomic write's temporary file)."""
    for name in os.listdir(directory):
      if name in self.names or name == LOCK_NAME:
        continue
      if name.startswith(".") and name.endswith(".tmp") and name[1:].split(".")[0] in self._stems:
        continue
      return False
    return True

  def _claim(self) -> int:
    """Creates (or takes over from a dead writer) `partial` and locks it; returns the lock's
    file descriptor."""
    os.makedirs(os.path.dirname(self.partial), exist_ok=True)
    lock_path = os.path.join(self.partial, LOCK_NAME)
    waited = 0
    while True:
      try:
        os.mkdir(self.partial)
        fresh = True
      except FileExistsError:
        fresh = False
        if os.path.islink(self.partial) or not os.path.isdir(self.partial):
          raise self.error(
            f"{self.partial} is in the way (not a directory this program writes); move it away."
          ) from None
        if not os.path.exists(lock_path) and not os.listdir(self.partial) and waited < 40:
          time.sleep(0.05)  # another writer may have just made it, and not locked it yet
          waited += 1
          continue
        if not self._ours(self.partial):
          raise self.error(
            f"{self.partial} holds files this program did not write; move it away and run again."
          ) from None
      try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
      except FileNotFoundError:
        continue  # the partial was renamed into place by its writer meanwhile: claim again
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise self.error(
          f"{self.path} is being written by {holder} (its lock is {lock_path}); wait for it to "
          f"finish, or choose another path."
        ) from None
      try:
        same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # the directory we locked was renamed away: claim again
        os.close(fd)
        continue
      if not fresh:
        stale = [n for n in os.listdir(self.partial) if n != LOCK_NAME]
        for name in stale:
          _remove(os.path.join(self.partial, name))
        if stale:
          _say(f"cleared {self.partial}, left by a writer that did not finish")
      holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}"
      os.ftruncate(fd, 0)
      os.pwrite(fd, holder.encode(), 0)
      return fd

  def _recover(self) -> None:
    """Puts right what an interrupted `commit()` left (the lock is held, so no writer is
    mid-commit): the old directory set aside and not yet deleted, or not yet replaced."""
    if not os.path.lexists(self.aside):
      return
    if os.path.islink(self.aside) or not os.path.isdir(self.aside) or not self._ours(self.aside):
      raise self.error(f"{self.aside} is in the way and was not written here; move it away.")
    if os.path.lexists(self.path):
      shutil.rmtree(self.aside)
      _say(f"removed {self.aside}, the old copy an interrupted replacement left")
    else:
      os.rename(self.aside, self.path)
      _fsync_directory(self.path)
      _say(
        f"{self.path} was missing after an interrupted replacement: put back the previous one "
        f"from {self.aside}"
      )

  # -- after writing
  def commit(self) -> None:
    """Puts the complete `partial` at `path` (replacing the old directory, if any)."""
    if os.path.lexists(self.path):
      os.rename(self.path, self.aside)
    os.rename(self.partial, self.path)
    self.committed = True
    _fsync_directory(self.path)
    self._finish()

  def abort(self) -> None:
    """Undoes what was done: the old directory put back if it was set aside, the partial
    removed. If the new directory was already renamed in, it stays (it is complete)."""
    try:
      if not self.committed and self._holds(self.path):  # renamed in, not yet marked
        self.committed = True
      if not self.committed:
        if os.path.lexists(self.aside) and not os.path.lexists(self.path):
          os.rename(self.aside, self.path)
        if self._holds(self.partial):
          shutil.rmtree(self.partial, ignore_errors=True)
    except OSError:
      pass
    self._finish()

  def _holds(self, directory: str) -> bool:
    """Whether `directory` holds this writer's lock file (the very file, not a namesake)."""
    try:
      return os.stat(os.path.join(directory, LOCK_NAME)).st_ino == os.fstat(self._lock).st_ino
    except OSError:
      return False

  def _finish(self) -> None:
    if self._lock < 0:
      return
    if self.committed:
      with contextlib.suppress(OSError):
        os.remove(os.path.join(self.path, LOCK_NAME))
      shutil.rmtree(self.aside, ignore_errors=True)
    os.close(self._lock)
    self._lock = -1


class LeftoverWarning(UserWarning):
  """What an interrupted writer left was found and put right (named in the message)."""


def _say(text: str) -> None:
  warnings.warn(text, LeftoverWarning, stacklevel=4)


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  else:
    os.remove(path)


def _fsync_directory(path: str) -> None:
  """Makes a rename in `path`'s parent durable (a crash after it returns keeps it)."""
  with contextlib.suppress(OSError):
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
