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

`restore` tries the newest checkpoint first; if it is damaged (a truncated file, a missing
directory, unreadable metadata) it warns, naming the step directory and the error, and falls back
to the next older one. Only when every checkpoint is unreadable does it raise `CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lstm_jax.errors import CheckpointError, ConfigError
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
      runner's eval curve and clock); `train.resume` hands it back as `Resumed.extra`. The
      checkpointer is its one owner: nothing else writes it into a checkpoint.
  """

  def __init__(
    self,
    directory: str | os.PathLike,
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
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("arrays", "stream")
    )
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
    if step in self.manager.all_steps():
      return False
    arrays = jax.tree.map(jnp.copy, _arrays_of(state, carry))  # the step donates the originals
    if "extra" not in stream:
      stream = dict(stream, extra=self.extra_state() if self.extra_state is not None else {})
    stream = json.loads(json.dumps(stream))  # a snapshot: the write runs after the caller moves on
    if "history" in stream:
      try:
        stream.update(self._log_history(stream.pop("history")))
      except OSError as e:
        raise self._write_failed(e, step) from e
    try:  # orbax also raises here what went wrong in the previous background write
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
    errors = []
    for step in reversed(steps):
      path = os.path.join(self.directory, str(step))
      try:
        got = self.manager.restore(
          step,
          args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(template), stream=ocp.args.JsonRestore()
          ),
        )
        arrays, stream = got["arrays"], dict(got["stream"])
        if jax.tree.structure(arrays) != jax.tree.structure(template):
          raise ValueError("its arrays do not have the structure of this run's state")
        history_bytes = self._read_history(stream)
      except Exception as e:  # orbax/tensorstore raise many kinds; each means "unreadable"
        cause = str(e).splitlines()[0].split(" [tensorstore_spec")[0]  # drop the long spec dump
        errors.append(f"{path}: {type(e).__name__}: {cause[:600]}")
        warnings.warn(
          f"checkpoint {path} is damaged or incomplete ({errors[-1]}); falling back "
          f"to the previous one.",
          RuntimeWarning,
          stacklevel=2,
        )
        continue
      _check_identity(path, stream, identity)
      self._resume_history(stream, history_bytes)
      state = state.replace(
        params=arrays["params"],
        opt_state=arrays["opt_state"],
        step=arrays["step"],
        rng=arrays["rng"],
      )
      return Restored(step=step, state=state, carry=arrays["carry"], stream=stream)
    raise CheckpointError(
      f"every checkpoint in {self.directory} is damaged or incomplete:\n  "
      + "\n  ".join(errors)
      + f"\nDelete {self.directory} (or run with --config.resume=False) to start over."
    )

  def read(self, step: int | None = None) -> tuple[dict, dict]:
    """(arrays, stream) of checkpoint `step` (default: the newest) as saved, without a template:
    for inspecting or comparing checkpoints."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}.")
    got = self.manager.restore(
      step,
      args=ocp.args.Composite(arrays=ocp.args.StandardRestore(), stream=ocp.args.JsonRestore()),
    )
    stream = dict(got["stream"])
    self._read_history(stream)
    return got["arrays"], stream

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
    partial = sorted(d for d in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in d)
    if partial and partial[0].split(".")[0].isdigit():
      step = int(partial[0].split(".")[0])  # an earlier background write is what failed
    for d in partial:
      shutil.rmtree(os.path.join(self.directory, d), ignore_errors=True)
    cause = " ".join(str(error).split())[:500]
    free = shutil.disk_usage(self.directory).free
    good = sorted(int(d) for d in os.listdir(self.directory) if d.isdigit())
    self._failure = CheckpointError(
      f"could not write the checkpoint{f' of step {step}' if step is not None else ''} in "
      f"{self.directory}: {type(error).__name__}: {cause} ({free / 2**20:,.1f} MiB free there). "
      + (f"The partial write was removed ({', '.join(partial)}). " if partial else "")
      + (
        f"The complete checkpoints (steps {good}) are intact: free some space (or fix the "
        f"directory's permissions) and run the same command again to resume from step "
        f"{good[-1]}."
        if good
        else "No complete checkpoint exists yet: free some space (or fix the directory's "
        "permissions) and run the same command again."
      )
    )
    return self._failure

  def close(self) -> None:
    self.manager.close()


HISTORY_FILE = "history.jsonl"


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
