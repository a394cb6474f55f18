"""The runner's working directory: one runner at a time, and results tied to the settings that
made them.

    <workdir>/.lock                          held (flock) by the runner using the workdir
    <workdir>/checkpoints/<name>-seed<seed>  orbax checkpoints of one (strategy, seed)
    <workdir>/results/<name>-seed<seed>.json its finished result, with its settings

A finished result or a checkpoint is read back only by a run whose settings (`config.
run_settings`: everything that changes the numbers) are the same; otherwise the runner stops and
names the keys that differ (`settings_difference`), and the fix: a new workdir, or
--config.resume=False to start over. It never mixes two configurations into one result.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import threading
import time

from lstm_jax.errors import ConfigError, os_error_text
from lstm_jax.files import write_json_atomically


def run_dir(workdir: str, kind: str, name: str, seed: int) -> str:
  """Where one (strategy, seed) keeps its checkpoints (kind="checkpoints") or its finished
  result (kind="results", plus ".json")."""
  return os.path.join(workdir, kind, f"{name}-seed{seed}")


_WORKDIR_HINTS = {
  errno.ENOTDIR: "a file stands where a directory must be",
  errno.EEXIST: "a file stands where a directory must be",
  errno.ENAMETOOLONG: "a name in the path is too long (at most 255 bytes each)",
  errno.EROFS: "the file system is read-only",
  errno.EACCES: "you may not write there",
  errno.EPERM: "the directory is immutable or not yours",
  errno.ENOSPC: "the disk is full",
}


def check_writable(workdir: str, kinds: tuple[str, ...] = ("results", "checkpoints")) -> None:
  """ConfigError, before anything loads or compiles, unless the runner can make `workdir` and
  its `kinds` subdirectories and write a file in each."""
  for d in (workdir, *(os.path.join(workdir, k) for k in kinds)):
    made = not os.path.exists(d) and d != workdir  # left as found: the run makes it when needed
    try:
      os.makedirs(d, exist_ok=True)
      fd, probe = tempfile.mkstemp(dir=d, prefix=".write-probe-")
      os.close(fd)
      os.remove(probe)
      if made:
        os.rmdir(d)
    except OSError as e:
      hint = _WORKDIR_HINTS.get(e.errno or 0, "")
      raise ConfigError(
        f"cannot write the workdir {workdir}: {os_error_text(e)}{f': {hint}' if hint else ''}. "
        f"Give --workdir a directory you can write (or fix this one), then run again."
      ) from e


def settings_difference(saved: dict, current: dict, limit: int = 8) -> str:
  """'key: saved value there, current value here' for each key that differs, or "" if none."""
  keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
  said = [
    f"{k}: {saved.get(k, '(absent)')!r} there, {current.get(k, '(absent)')!r} here"
    for k in keys[:limit]
  ]
  if len(keys) > limit:
    said.append(f"and {len(keys) - limit} more")
  return "; ".join(said)


FIX = (
  "Use a new --workdir for this config, or --config.resume=False to delete this workdir's "
  "results and checkpoints and start over."
)


def check_settings(
  path: str, saved: dict | None, current: dict, what: str, error: type = ConfigError
) -> None:
  """Raises `error` unless `saved` (the settings stored with a result or checkpoint at `path`)
  equal `current`."""
  if saved is None:
    raise error(
      f"{what} {path} does not record the settings that made it (written by an "
      f"earlier version of lstm_jax), so it cannot be checked against this config. " + FIX
    )
  diff = settings_difference(saved, current)
  if diff:
    raise error(
      f"{what} {path} was made with different settings ({diff}); reading it back "
      f"would report or continue another configuration's run as this one. " + FIX
    )


def read_result(path: str, settings: dict) -> dict | None:
  """The finished result at `path` if there is one; ConfigError if it was made with other
  settings."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      done = json.load(f)
    if not isinstance(done, dict):
      raise ValueError(f"it holds a JSON {type(done).__name__}, not a result")
  except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
    raise ConfigError(
      f"the finished result {path} is damaged ({type(e).__name__}: {str(e)[:200]}); delete it "
      f"to train that row again, or run with --config.resume=False to start over."
    ) from e
  check_settings(path, done.get("settings"), settings, "the finished result")
  return done


class WorkdirLock:
  """Holds an exclusive lock on <workdir>/.lock while a runner uses the workdir.

  The lock is the kernel's (flock), so it goes with the process: a runner killed by SIGKILL or
  a crash leaves the file behind but not the lock, and the next run takes it. A second runner on
  a busy workdir gets a ConfigError at once, naming the holder. (flock is local to one machine:
  two machines sharing a workdir over NFS are not kept apart.)
  """

  def __init__(self, workdir: str):
    check_writable(workdir, ())
    self.path = os.path.join(workdir, ".lock")
    self.file = open(self.path, "a+", encoding="utf-8")
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.file.seek(0)
      holder = self.file.read().strip() or "holder unknown"
      self.file.close()
      raise ConfigError(
        f"workdir {workdir} is in use by another runner ({holder}); two runners in one workdir "
        f"would overwrite each other's results and checkpoints. Wait for it to finish, or give "
        f"this run another --workdir."
      ) from None
    self.file.seek(0)
    self.file.truncate()
    self.file.write(
      f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    )
    self.file.flush()

  def release(self) -> None:
    if not self.file.closed:
      fcntl.flock(self.file, fcntl.LOCK_UN)
      self.file.close()

  def __enter__(self) -> WorkdirLock:
    return self

  def __exit__(self, *exc) -> None:
    self.release()


class Invocations:
  """The runner's invocations of one workdir, in <workdir>/invocations.json: when each started,
  its seconds so far and how it ended ("finished", "preempted", "failed"; null: running, or
  killed). meta.json's `started` is the first one's start and `total_seconds` their sum, so a
  run preempted and resumed, or a finished one rendered again, reports its whole time.
  `fresh` (resume=False) starts the list over.

  A heartbeat (a thread, every `heartbeat_seconds`) rewrites the running entry's seconds, so an
  invocation killed without a word (SIGKILL, the OOM killer, a node lost) still counts up to its
  last heartbeat, not the 0 s it started with. `close()` stops it."""

  def __init__(self, workdir: str, fresh: bool = False, heartbeat_seconds: float = 10.0):
    self.path = os.path.join(workdir, "invocations.json")
    self.entries = [] if fresh else self._read()
    self.t0 = time.time()
    self.entries.append(
      dict(started=time.strftime("%Y-%m-%d %H:%M:%S"), t=self.t0, seconds=0.0, ended=None)
    )
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self.update()
    self._beat = threading.Thread(
      target=self._heartbeat, args=(heartbeat_seconds,), name="invocations-heartbeat", daemon=True
    )
    self._beat.start()

  def _heartbeat(self, every: float) -> None:
    while not self._stop.wait(every):
      try:
        self.update()
      except OSError:  # a full or read-only disk: the next row's update says so, not this thread
        pass

  def close(self) -> None:
    self._stop.set()
    self._beat.join()

  def _read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    try:
      with open(self.path, encoding="utf-8") as f:
        entries = json.load(f)
      if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("seconds"), (int, float)) for e in entries
      ):
        raise ValueError("not a list of invocations")
    except (ValueError, UnicodeDecodeError) as e:
      raise ConfigError(
        f"{self.path} is damaged ({type(e).__name__}: {str(e)[:200]}); delete it (the run's "
        f"total time then counts from this invocation), or run with --config.resume=False."
      ) from e
    return entries

  def update(self, ended: str | None = None) -> None:
    with self._lock:
      if self.entries[-1]["ended"] is not None and ended is None:
        return  # ended already: a late heartbeat changes nothing
      self.entries[-1].update(seconds=time.time() - self.t0, ended=ended)
      write_json_atomically(self.path, self.entries, indent=1)
    if ended is not None:
      self._stop.set()

  @property
  def started(self) -> str:
    return self.entries[0]["started"]

  @property
  def first_started_at(self) -> float:
    """The first invocation's start, in seconds since the epoch (its local-time stamp, to the
    second, for entries written before `t` was recorded)."""
    first = self.entries[0]
    if isinstance(first.get("t"), (int, float)):
      return float(first["t"])
    return time.mktime(time.strptime(first["started"], "%Y-%m-%d %H:%M:%S"))

  @property
  def total_seconds(self) -> float:
    return float(sum(e["seconds"] for e in self.entries))
