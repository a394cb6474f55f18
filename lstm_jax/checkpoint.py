"""Checkpoints with orbax: the train state, the TBPTT carry and the data stream's position.

A checkpoint at step s (orbax `CheckpointManager`, `ocp.args.Composite`) holds
  arrays   <StandardSave>  params, opt_state, step, rng, and the carry handed to step s+1 (the
           TBPTT carry; the zero carry for strategies that carry none);
  stream   <JsonSave>      where the data stream stands: strategy, seed, the data's fingerprint,
           epoch, index (batches of that epoch already trained), real tokens so far, the per-step
           history, and whatever the caller adds (the runner's eval curve and clock).
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
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lstm_jax.errors import CheckpointError, ConfigError

# The keys of the stream position that must match for a checkpoint to belong to this run.
IDENTITY_KEYS = ("strategy", "seed", "data_fingerprint")


@dataclasses.dataclass
class Restored:
  step: int
  state: Any          # the TrainState, params/opt_state/step/rng replaced
  carry: Any          # the carry handed to the next step
  stream: dict        # epoch, index, real_tokens, history, identity keys, caller's extra


class Checkpointer:
  """Saves every `every_steps` steps (0: only when forced, e.g. at the end) and keeps `keep`.

  Args:
    directory: where the step directories go (created if missing).
    every_steps: save after every this many train steps; 0 saves only when `force=True`.
    keep: how many of the newest checkpoints to keep.
    async_save: write in the background (the default); False blocks until written.
  """

  def __init__(self, directory: str | os.PathLike, every_steps: int = 100, keep: int = 3,
               async_save: bool = True):
    if not isinstance(every_steps, int) or every_steps < 0:
      raise ConfigError(f"checkpoint every_steps must be an integer >= 0 (0: only at the end), "
                        f"got {every_steps!r}.")
    if not isinstance(keep, int) or keep < 1:
      raise ConfigError(f"checkpoint keep must be an integer >= 1, got {keep!r}.")
    self.directory = os.path.abspath(os.fspath(directory))
    self.every_steps = every_steps
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("arrays", "stream"))

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
    """Saves (state, carry, stream) as step `step`; False if a checkpoint for it exists."""
    if step in self.manager.all_steps():
      return False
    arrays = jax.tree.map(jnp.copy, _arrays_of(state, carry))  # the step donates the originals
    stream = json.loads(json.dumps(stream))  # a snapshot: the write runs after the caller moves on
    return self.manager.save(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays), stream=ocp.args.JsonSave(stream)), force=True)

  def restore(self, state, carry, identity: dict | None = None) -> Restored | None:
    """The newest readable checkpoint, restored into `state`'s and `carry`'s structure (and
    shardings); None when the directory holds none. `identity`: the stream keys that must match
    (see IDENTITY_KEYS); a checkpoint from another run raises CheckpointError."""
    steps = self.steps()
    if not steps:
      return None
    template = jax.tree.map(ocp.utils.to_shape_dtype_struct, _arrays_of(state, carry))
    errors = []
    for step in reversed(steps):
      path = os.path.join(self.directory, str(step))
      try:
        got = self.manager.restore(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(template), stream=ocp.args.JsonRestore()))
        arrays, stream = got["arrays"], dict(got["stream"])
        if jax.tree.structure(arrays) != jax.tree.structure(template):
          raise ValueError("its arrays do not have the structure of this run's state")
      except Exception as e:  # orbax/tensorstore raise many kinds; each means "unreadable"
        cause = str(e).splitlines()[0].split(" [tensorstore_spec")[0]  # drop the long spec dump
        errors.append(f"{path}: {type(e).__name__}: {cause[:600]}")
        warnings.warn(f"checkpoint {path} is damaged or incomplete ({errors[-1]}); falling back "
                      f"to the previous one.", RuntimeWarning, stacklevel=2)
        continue
      _check_identity(path, stream, identity)
      state = state.replace(params=arrays["params"], opt_state=arrays["opt_state"],
                            step=arrays["step"], rng=arrays["rng"])
      return Restored(step=step, state=state, carry=arrays["carry"], stream=stream)
    raise CheckpointError(
        f"every checkpoint in {self.directory} is damaged or incomplete:\n  " + "\n  ".join(errors)
        + f"\nDelete {self.directory} (or run with --config.resume=False) to start over.")

  def read(self, step: int | None = None) -> tuple[dict, dict]:
    """(arrays, stream) of checkpoint `step` (default: the newest) as saved, without a template:
    for inspecting or comparing checkpoints."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}.")
    got = self.manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(), stream=ocp.args.JsonRestore()))
    return got["arrays"], dict(got["stream"])

  def wait(self) -> None:
    """Blocks until background writes are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _arrays_of(state, carry) -> dict:
  return dict(params=state.params, opt_state=state.opt_state, step=state.step, rng=state.rng,
              carry=carry)


def _check_identity(path: str, stream: dict, identity: dict | None) -> None:
  if not identity:
    return
  diff = {k: (stream.get(k), v) for k, v in identity.items() if stream.get(k) != v}
  if diff:
    said = ", ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in diff.items())
    raise CheckpointError(f"checkpoint {path} was written by a different run ({said}); use a "
                          f"new workdir, or --config.resume=False to start over.")
