"""Checkpoints with orbax: the train state, the TBPTT carry and the data stream's position.

A checkpoint at step s (orbax `CheckpointManager`, `ocp.args.Composite`) holds
  arrays   <StandardSave>  params, opt_state, step, rng, and the carry handed to step s+1 (the
           TBPTT carry; the zero carry for strategies that carry none);
  stream   <JsonSave>      where the data stream stands: strategy, seed, the data's fingerprint,
           epoch, index (batches of that epoch already trained), real tokens so far, the length
           and SHA-256 of the per-step history, and the caller's `extra` state (the runner's eval
           curve and clock).
The per-step history itself is one append-only file beside the step directories,
`history.jsonl`, a record a line: each save appends only the steps since the last one and
records how many lines (and their hash) belong to it, so a run's checkpoints cost O(steps)
bytes in all, not the whole history again at every save (O(steps^2)). Restoring reads that many
lines back and checks their hash; lines written after the checkpoint (a run killed between the
two writes) are cut off. A checkpoint whose lines are missing or differ counts as damaged.
Resuming from it replays nothing and skips nothing: `fit` starts at batch `index` of epoch
`epoch` of the same seeded plan, with the same carry, so the final parameters are bit-identical
to an uninterrupted run's (tests/test_checkpoint.py kills a run with SIGKILL to check).

Saves are asynchronous: orbax writes in the background into a temporary directory and renames it
when complete, so a process killed mid-write leaves the previous checkpoints intact. The arrays
handed to orbax are fresh device copies, because the train step donates (reuses) the state's
buffers while the write may still be running.

Every array's SHA-256 (of its dtype, shape and bytes) is stored in the JSON part at save and
checked at restore, so damage that still reads (bytes flipped inside the array data, the size
kept) is caught like damage that does not: `restore` tries the newest checkpoint first; if it is
damaged (a checksum that differs, a truncated file, a missing directory, unreadable metadata) it
warns once, naming the step directory, the array or the error, moves that step aside into
`damaged/<step>` (so it is never the newest again, and the retrained step can be saved over its
number) and falls back to the next older one. Only when every checkpoint is unreadable does it
raise `CheckpointError`.

A write that fails (no space, a read-only or immutable directory, an I/O error) raises one
`CheckpointError` naming the step, the directory and the cause, within seconds: before orbax
starts a write, the step's directory is probed (orbax's own threads would otherwise wait forever
for a directory they could not create). Orbax's tracebacks from such faults (its logged errors,
its threads' uncaught exceptions) are kept off the terminal and summarised in that error or
warning; the `lstm_jax.orbax` logger has them in full at DEBUG level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lstm_jax.errors import CheckpointError, ConfigError, os_error_text
from lstm_jax.workdir import check_settings


@dataclasses.dataclass
class Restored:
  step: int
  state: Any  # the TrainState, params/opt_state/step/rng replaced
  carry: Any  # the carry handed to the next step
  stream: dict  # epoch, index, real_tokens, history, identity keys, caller's extra


class Checkpointer:
  """Saves every `every_steps` steps (0: only when forced, e.g. at the end) and keeps `keep`.

  Args:
    directory: where the step directories go (created if missing).
    every_steps: save after every this many train steps; 0 saves only when `force=True`.
    keep: how many of the newest checkpoints to keep.
    keep_period: also keep every checkpoint whose step is a multiple of this (None: none).
    async_save: write in the background (the default); False blocks until written.
    extra_state: the caller's own JSON state, asked for at each save and saved with it (the
      runner's eval curve and clock); `loop.resume` hands it back as `Resumed.extra`. The
      checkpointer is its one owner: nothing else writes it into a checkpoint.
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    every_steps: int = 100,
    keep: int = 3,
    async_save: bool = True,
    keep_period: int | None = None,
    extra_state: Callable[[], dict] | None = None,
  ):
    if not isinstance(every_steps, int) or every_steps < 0:
      raise ConfigError(
        f"checkpoint every_steps must be an integer >= 0 (0: only at the end), got {every_steps!r}."
      )
    if not isinstance(keep, int) or keep < 1:
      raise ConfigError(f"checkpoint keep must be an integer >= 1, got {keep!r}.")
    self.directory = os.path.abspath(os.fspath(directory))
    self.every_steps = every_steps
    self.extra_state = extra_state
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      keep_period=keep_period,
      create=True,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
    )
    try:
      self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("arrays", "stream")
      )
    except OSError as e:
      raise CheckpointError(
        f"cannot create the checkpoint directory {self.directory}: {os_error_text(e)}. Give "
        f"the run a --workdir it can write, or fix that directory's permissions."
      ) from e
    self._noise_mark = _NOISE.mark()
    self._writing: int | None = None  # the newest step handed to orbax
    self._failure: CheckpointError | None = None
    self.history_path = os.path.join(self.directory, HISTORY_FILE)
    # the history lines known to be in history.jsonl, and their running hash (None: unknown,
    # the next save writes the file afresh)
    self._logged: int | None = None
    self._hash = hashlib.sha256()

  def steps(self) -> list[int]:
    """The steps with a complete checkpoint, oldest first."""
    self.manager.reload()
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def due(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step: int, state, carry, stream: dict, force: bool = False) -> bool:
    """Saves (state, carry, stream) as step `step`; False if a checkpoint for it exists. A
    stream without an "extra" key gets `extra_state()`'s (or an empty one)."""
    if self._failure is not None:
      raise self._failure
    try:  # what went wrong in the previous background write is that write's failure
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._write_failed(e, self._writing) from e
    if step in self.manager.all_steps():
      return False
    self._probe(step)
    arrays = jax.tree.map(jnp.copy, _arrays_of(state, carry))  # the step donates the originals
    if "extra" not in stream:
      stream = dict(stream, extra=self.extra_state() if self.extra_state is not None else {})
    stream = json.loads(json.dumps(stream))  # a snapshot: the write runs after the caller moves on
    stream["checksums"] = checksums(arrays)
    if "history" in stream:
      try:
        stream.update(self._log_history(stream.pop("history")))
      except OSError as e:
        raise self._write_failed(e, step) from e
    try:
      saved = self.manager.save(
        step,
        args=ocp.args.Composite(
          arrays=ocp.args.StandardSave(arrays), stream=ocp.args.JsonSave(stream)
        ),
        force=True,
      )
    except Exception as e:  # no space, permissions, I/O: orbax and tensorstore raise many kinds
      raise self._write_failed(e, step) from e
    self._writing = step
    return saved

  def restore(self, state, carry, identity: dict | None = None) -> Restored | None:
    """The newest readable checkpoint, restored into `state`'s and `carry`'s structure (and
    shardings); None when the directory holds none. `identity`: the stream keys that must match
    (strategy, seed, data and plan; `settings`: the run's settings, compared key by key); a
    checkpoint from another run raises CheckpointError naming what differs."""
    steps = self.steps()
    if not steps:
      return None
    template = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays_of(state, carry))
    damaged = []  # (step, why) of the newer ones tried first
    for step in reversed(steps):
      try:
        got = self.manager.restore(
          step,
          args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(template), stream=ocp.args.JsonRestore()
          ),
        )
        arrays, stream = got["arrays"], dict(got["stream"])
        if jax.tree.structure(arrays) != jax.tree.structure(template):  # type: ignore[operator]
          raise ValueError("its arrays do not have the structure of this run's state")
        verify_checksums(arrays, stream)
        history_bytes = self._read_history(stream)
      except Exception as e:  # orbax/tensorstore raise many kinds; each means "unreadable"
        damaged.append((step, _cause(e)))  # orbax's tracebacks of the same failure: not shown
        continue
      path = os.path.join(self.directory, str(step))
      _check_identity(path, stream, identity)
      self._report_damaged(damaged, fallback=step)
      self._resume_history(stream, history_bytes)
      state = state.replace(
        params=arrays["params"],
        opt_state=arrays["opt_state"],
        step=arrays["step"],
        rng=arrays["rng"],
      )
      return Restored(step=step, state=state, carry=arrays["carry"], stream=stream)
    self._report_damaged(damaged, fallback=None)
    raise CheckpointError(
      f"every checkpoint in {self.directory} is damaged or incomplete ("
      + "; ".join(f"step {step}: {why}" for step, why in damaged)
      + f"). Nothing was moved or deleted: delete {self.directory} (or run with "
      f"--config.resume=False) to start over."
    )

  def _report_damaged(self, damaged: list, fallback: int | None) -> None:
    """One warning per damaged step. With a readable `fallback`, each is first moved aside,
    so it is never the newest again; with none, all are left in place for the error."""
    for step, why in damaged:
      path = os.path.join(self.directory, str(step))
      moved = self._move_aside(step) if fallback is not None else ""
      warnings.warn(
        f"checkpoint {path} is damaged or incomplete ({why}); {moved}"
        + (
          f"falling back to step {fallback}."
          if fallback is not None
          else "no older one is readable."
        ),
        RuntimeWarning,
        stacklevel=4,
      )

  def read(self, step: int | None = None) -> tuple[dict, dict]:
    """(arrays, stream) of checkpoint `step` (default: the newest) as saved, without a template:
    for inspecting or comparing checkpoints."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}.")
    path = os.path.join(self.directory, str(step))
    try:
      got = self.manager.restore(
        step,
        args=ocp.args.Composite(arrays=ocp.args.StandardRestore(), stream=ocp.args.JsonRestore()),
      )
      stream = dict(got["stream"])
      verify_checksums(got["arrays"], stream)
      self._read_history(stream)
    except Exception as e:  # orbax/tensorstore raise many kinds; each means "unreadable"
      raise CheckpointError(
        f"checkpoint {path} is damaged or incomplete ({_cause(e)}); read another step "
        f"(the steps here: {self.steps()}), or rerun the row to write it again."
      ) from e
    return got["arrays"], stream

  def _probe(self, step: int) -> None:
    """Raises the write's CheckpointError now if no directory can be made here: orbax would
    start the write's threads first, and they would wait forever for the directory."""
    probe = os.path.join(self.directory, f".probe-{step}-{os.getpid()}")
    try:
      os.mkdir(probe)
      os.rmdir(probe)
    except OSError as e:
      raise self._write_failed(e, step) from e

  def _move_aside(self, step: int) -> str:
    """Moves a damaged step into damaged/ (one process does it); says where, for the warning."""
    path = os.path.join(self.directory, str(step))
    if jax.process_index() != 0 or not os.path.isdir(path):
      return ""
    aside = os.path.join(self.directory, DAMAGED_DIR, str(step))
    n = 1
    while os.path.exists(aside):
      n += 1
      aside = os.path.join(self.directory, DAMAGED_DIR, f"{step}-{n}")
    try:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      os.replace(path, aside)
    except OSError as e:
      return f"it could not be moved aside ({os_error_text(e)}); "
    self.manager.reload()
    return f"moved to {aside}; "

  def _log_history(self, history: list[dict]) -> dict:
    """Appends the records history.jsonl lacks (all of them, afresh, when what it holds is not
    known to be this history's start); returns the stream keys that say which lines are this
    checkpoint's. One process writes the file (all compute the same hash)."""
    write = jax.process_index() == 0
    if self._logged is None or self._logged > len(history):
      self._logged, self._hash = 0, hashlib.sha256()
      if write:
        open(self.history_path, "wb").close()
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in history[self._logged :])
    if write and lines:
      with open(self.history_path, "ab") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
    self._hash.update(lines)
    self._logged = len(history)
    return dict(history_length=len(history), history_sha256=self._hash.hexdigest())

  def _read_history(self, stream: dict) -> bytes | None:
    """Puts the checkpoint's history into `stream` (read from history.jsonl, checked against its
    length and hash; a checkpoint that holds it inline is left as it is); returns the lines'
    bytes, or None for an inline history. ValueError if the lines are missing or differ."""
    if "history_length" not in stream:
      return None
    n, want = int(stream.pop("history_length")), stream.pop("history_sha256")
    lines = []
    if n:
      with open(self.history_path, "rb") as f:
        for _ in range(n):
          lines.append(f.readline())
          if not lines[-1].endswith(b"\n"):
            raise ValueError(f"{self.history_path} holds fewer than the {n} steps it saved")
    data = b"".join(lines)
    if hashlib.sha256(data).hexdigest() != want:
      raise ValueError(f"{self.history_path}: its first {n} steps are not those it saved")
    stream["history"] = [json.loads(line) for line in data.splitlines()]
    return data

  def _resume_history(self, stream: dict, data: bytes | None) -> None:
    """After a restore: history.jsonl holds exactly the restored history (lines a later,
    unfinished save appended are cut off), and saves append to it."""
    if data is None:  # inline: the next save writes the file afresh
      self._logged = None
      return
    if jax.process_index() == 0:
      with open(self.history_path, "r+b") as f:
        f.truncate(len(data))
    self._logged, self._hash = len(stream["history"]), hashlib.sha256(data)

  @staticmethod
  def check_settings(directory: str, settings: dict) -> None:
    """Raises CheckpointError if the newest readable checkpoint in `directory` was saved with
    other settings (see `fit(settings=...)`); reads only its JSON part. Nothing to check (no
    checkpoint, or none readable) passes: restoring handles those."""
    manager = ocp.CheckpointManager(
      os.path.abspath(directory),
      item_names=("arrays", "stream"),
      options=ocp.CheckpointManagerOptions(read_only=True),
    )
    try:
      for step in sorted(manager.all_steps(), reverse=True):
        try:
          stream = dict(
            manager.restore(step, args=ocp.args.Composite(stream=ocp.args.JsonRestore()))["stream"]
          )
        except Exception:  # damaged: restore() falls back past it, and says so
          continue
        check_settings(
          os.path.join(directory, str(step)),
          stream.get("settings"),
          settings,
          "checkpoint",
          CheckpointError,
        )
        return
    finally:
      manager.close()

  def wait(self) -> None:
    """Blocks until background writes are on disk; CheckpointError if one failed."""
    if self._failure is not None:
      raise self._failure
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._write_failed(e, self._writing) from e

  def _write_failed(self, error: Exception, step: int | None) -> CheckpointError:
    """The one error a failed write becomes: which directory, the cause, the free space; the
    partial step directory removed, so the next start sees only complete checkpoints."""
    try:
      self.manager.close()  # waits for and stops orbax's background writes
    except Exception:  # it reports the same failure again; the cause is already in hand
      pass
    try:
      listed = os.listdir(self.directory)
    except OSError:
      listed = []
    partial = sorted(d for d in listed if ".orbax-checkpoint-tmp" in d)
    if partial and partial[0].split(".")[0].isdigit():
      step = int(partial[0].split(".")[0])  # an earlier background write is what failed
    for d in partial:
      shutil.rmtree(os.path.join(self.directory, d), ignore_errors=True)
    if isinstance(error, OSError) and error.errno is not None:
      cause = os_error_text(error)  # the errno says it all; what orbax logged is at DEBUG
    else:  # an opaque error: what orbax logged on the way may be the only clue
      cause = " ".join(str(error).split())[:500] + _NOISE.summary(self._noise_mark)
    try:
      free = shutil.disk_usage(self.directory).free
    except OSError:
      free = 0
    good = sorted(int(d) for d in listed if d.isdigit())
    fix = _FIXES.get(getattr(error, "errno", None)) or next(
      (f for code, f in _FIXES.items() if f"os_error_code='{code}'" in str(error)), _FIXES[None]
    )
    self._failure = CheckpointError(
      f"could not write the checkpoint{f' of step {step}' if step is not None else ''} in "
      f"{self.directory}: {type(error).__name__}: {cause} ({free / 2**20:,.1f} MiB free there). "
      + (f"The partial write was removed ({', '.join(partial)}). " if partial else "")
      + (
        f"The complete checkpoints (steps {good}) are intact: {fix}, and run the same command "
        f"again to resume from step {good[-1]}."
        if good
        else f"No complete checkpoint exists yet: {fix}, and run the same command again."
      )
    )
    return self._failure

  def close(self) -> None:
    self.manager.close()


HISTORY_FILE = "history.jsonl"
# what to do about a failed write, by its errno (orbax reports tensorstore's as os_error_code)
_FIXES = {
  errno.ENOSPC: "free some space there",
  errno.EDQUOT: "free some of your disk quota",
  errno.EPERM: "make the directory writable (it is immutable or not yours: chattr -i, chown)",
  errno.EACCES: "make the directory writable (chmod u+w, or run as its owner)",
  errno.EROFS: "give the run a --workdir on a writable file system (this one is read-only)",
  errno.EIO: "check the disk (an I/O error: dmesg says more)",
  None: "free some space, or fix the directory's permissions",
}
DAMAGED_DIR = "damaged"  # damaged steps moved aside (orbax reads only numbered directories)


def checksums(arrays) -> dict[str, str | None]:
  """SHA-256 of each array's dtype, shape and bytes, by its path in the tree. An array split
  across processes (not replicated) has None: no process holds all of its bytes."""
  return {_key(path): _digest(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(arrays)}


def _key(path) -> str:
  """'opt_state/0/mu/head/bias': the same whether read into the run's own containers (optax's
  named tuples) or orbax's plain dicts and lists."""
  names = (getattr(k, a) for k in path for a in ("key", "idx", "name") if hasattr(k, a))
  return "/".join(str(n) for n in names)


def _digest(x) -> str | None:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      return None
    x = x.addressable_data(0)
  a = np.ascontiguousarray(np.asarray(x))
  h = hashlib.sha256(f"{a.dtype.name}{a.shape}".encode())
  h.update(a.reshape(-1).view(np.uint8).data)
  return h.hexdigest()


def verify_checksums(arrays, stream: dict) -> None:
  """ValueError naming the first array whose bytes differ from the checksum saved with them.
  Checkpoints written before checksums were saved have none to check."""
  saved = stream.get("checksums")
  if saved is None:
    return
  now = checksums(arrays)
  bad = [k for k, v in now.items() if saved.get(k) is not None and v is not None and saved[k] != v]
  missing = sorted(set(saved) - set(now))
  if bad or missing:
    raise ValueError(
      f"array {(bad or missing)[0]} does not match the checksum saved with it "
      f"({len(bad) + len(missing)} of {len(saved)} arrays differ)"
    )


def _cause(e: Exception) -> str:
  """An exception in one line, without tensorstore's long spec dump."""
  text = str(e).splitlines()[0].split(" [tensorstore_spec")[0] if str(e) else ""
  return f"{type(e).__name__}: {text[:600]}"


_ORBAX_LOG = logging.getLogger("lstm_jax.orbax")
_TENSORSTORE_ERRORS = ("OCDBT database", 'Error opening "zarr" driver', "tensorstore")
_READ_ONLY_NOISE = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")


def _from_orbax(tb) -> bool:
  while tb is not None:
    if "/orbax/" in tb.tb_frame.f_code.co_filename.replace(os.sep, "/"):
      return True
    tb = tb.tb_next
  return False


def _closed_loop_callback(exc, tb) -> bool:
  """A read orbax abandoned (a damaged checkpoint's other arrays) completing after orbax closed
  the event loop it ran in: tensorstore's callback then prints this, once per array."""
  if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
    return False
  while tb is not None:
    if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
      return True
    tb = tb.tb_next
  return False


class _OrbaxNoise(logging.Filter):
  """Keeps orbax's tracebacks off the terminal while installed (`quiet_orbax`): its logged
  errors (absl, and asyncio's unretrieved-exception reports), its threads' uncaught exceptions
  and its dropped futures' errors. Each goes to the `lstm_jax.orbax` logger at DEBUG, in full,
  and its first line is kept for the one warning or CheckpointError that reports the fault.
  Installed once however often it is entered; `uninstall` puts back what it replaced."""

  def __init__(self):
    super().__init__()
    self.lines: list[str] = []
    self.lock = threading.Lock()
    self.depth = 0
    self.replaced: tuple | None = None

  def install(self) -> None:
    with self.lock:
      self.depth += 1
      if self.depth > 1:
        return
    for name in ("absl", "asyncio"):
      logging.getLogger(name).addFilter(self)
    thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook
    replaced = (thread_hook, unraisable_hook, sys.excepthook)

    def excepthook(args):
      if not self._take(args.exc_value, args.exc_traceback):
        thread_hook(args)

    def unraisablehook(args):
      if not self._take(args.exc_value, args.exc_traceback):
        unraisable_hook(args)

    def printed_hook(kind, value, tb, previous=sys.excepthook):
      if not self._take(value, tb):
        previous(kind, value, tb)

    threading.excepthook = excepthook
    sys.unraisablehook = unraisablehook
    sys.excepthook = printed_hook  # tensorstore's callbacks print through it
    # an abandoned read's coroutine, collected: ignored by a filter of its own, added only if
    # none like it is there (pytest's config has one) and removed alone on leaving
    message = r"coroutine 'Store\._\w+' was never awaited"
    own_filter: tuple | None = ("ignore", re.compile(message, re.I), RuntimeWarning, None, 0)
    if own_filter in warnings.filters:
      own_filter = None
    else:
      warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)
    self.replaced = replaced + (own_filter, (excepthook, unraisablehook, printed_hook))

  def uninstall(self) -> None:
    """Undoes `install` once its last user leaves: the filters removed, and each hook put back
    where it is still this filter's own (one installed after it is left in place)."""
    with self.lock:
      self.depth -= 1
      if self.depth > 0 or self.replaced is None:
        return
      replaced, self.replaced = self.replaced, None
    thread_hook, unraisable_hook, printed, own_filter, ours = replaced
    for name in ("absl", "asyncio"):
      logging.getLogger(name).removeFilter(self)
    if threading.excepthook is ours[0]:
      threading.excepthook = thread_hook
    if sys.unraisablehook is ours[1]:
      sys.unraisablehook = unraisable_hook
    if sys.excepthook is ours[2]:
      sys.excepthook = printed
    if own_filter is not None and own_filter in warnings.filters:  # others' filters stay
      warnings.filters.remove(own_filter)  # type: ignore[attr-defined]  # a list at run time
      warnings._filters_mutated()  # type: ignore[attr-defined]  # as filterwarnings does

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:  # what orbax says of every read-only look is noise
      return not any(m in record.getMessage() for m in _READ_ONLY_NOISE)
    ours = "/orbax/" in record.pathname.replace(os.sep, "/")
    if not ours and record.exc_info and record.exc_info[2] is not None:
      ours = _from_orbax(record.exc_info[2])
    if not ours and record.name == "asyncio" and record.exc_info:  # an abandoned read's future
      ours = any(m in str(record.exc_info[1]) for m in _TENSORSTORE_ERRORS)
    if not ours:
      return True
    self._keep(record.getMessage().splitlines()[0] if record.getMessage() else record.name)
    _ORBAX_LOG.debug(record.getMessage(), exc_info=record.exc_info)
    return False

  def _take(self, exc, tb) -> bool:
    if exc is None or not (_from_orbax(tb) or _closed_loop_callback(exc, tb)):
      return False
    self._keep(_cause(exc))
    _ORBAX_LOG.debug("orbax: %s", _cause(exc), exc_info=(type(exc), exc, tb))
    return True

  def _keep(self, line: str) -> None:
    line = re.sub(r"^(\[[^\]]*\])+\s*", "", line)  # orbax's [process=0][thread=...] prefix
    with self.lock:
      self.lines.append(line[:300])

  def mark(self) -> int:
    with self.lock:
      return len(self.lines)

  def summary(self, mark: int) -> str:
    """'; orbax reported N errors, the first: ...' for those kept since `mark`, or ""."""
    with self.lock:
      new = self.lines[mark:]
    if not new:
      return ""
    return (
      f"; orbax reported {len(new)} error{'s' * (len(new) != 1)} (the first: {new[0][:200]}; "
      f"all of them at DEBUG level on the 'lstm_jax.orbax' logger)"
    )


_NOISE = _OrbaxNoise()


@contextlib.contextmanager
def quiet_orbax():
  """Orbax's and tensorstore's tracebacks kept off the terminal while inside: a damaged or
  unwritable checkpoint then reports as one warning or CheckpointError that summarises them
  (the full text at DEBUG on the `lstm_jax.orbax` logger). It replaces the process's exception
  hooks and adds logging filters, so the library never enters it by itself: the runner and the
  mains do, around a run, and research code may (`with quiet_orbax(): fit(...)`). Leaving puts
  everything back.

  Args: none.

  Yields:
    None, once everything is installed.
  """
  _NOISE.install()
  try:
    yield
  finally:
    _NOISE.uninstall()


def _arrays_of(state, carry) -> dict:
  return dict(
    params=state.params, opt_state=state.opt_state, step=state.step, rng=state.rng, carry=carry
  )


def _check_identity(path: str, stream: dict, identity: dict | None) -> None:
  if not identity:
    return
  identity = dict(identity)
  settings = identity.pop("settings", None)
  diff = {k: (stream.get(k), v) for k, v in identity.items() if stream.get(k) != v}
  if diff:
    said = ", ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in diff.items())
    raise CheckpointError(
      f"checkpoint {path} was written by a different run ({said}); use a "
      f"new workdir, or --config.resume=False to start over."
    )
  if settings is not None:
    check_settings(path, stream.get("settings"), settings, "checkpoint", CheckpointError)
