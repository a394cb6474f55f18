"""A row's TensorBoard runs (config.tensorboard): the runner's side of `lstm_jax.metric_writers`.

Two run directories per (strategy, seed), so `tensorboard --logdir WORKDIR/tensorboard` shows
every row side by side on each horizontal axis:

    WORKDIR/tensorboard/steps/<strategy>-seed<seed>/   train/*, eval/* by optimizer step; their
                                                       wall time is the row's training clock, so
                                                       the "Relative" axis is training seconds
    WORKDIR/tensorboard/tokens/<strategy>-seed<seed>/  by_real_tokens/* by real tokens trained on

Both are flushed together at each of the row's checkpoints (`fit(hooks=Hooks(writer=...))`), so
after a SIGTERM, or a kill, and a resume, each step's and each evaluation's scalars are there once.
"""

from __future__ import annotations

import os

import jax

from lstm_jax import metric_writers

AXES = ("steps", "tokens")


def tensorboard_on(setting: str) -> bool:
  """Whether a run writes event files: config.tensorboard "on", or "auto" with tensorboardX."""
  return setting == "on" or (setting == "auto" and metric_writers.tensorboard_available())


class RowWriters:
  """The row's two TensorBoard runs behind one `MetricWriter`: scalars by step go to the
  steps run; `tokens(real_tokens, scalars)` to the tokens run; flush and close both.

  resumed: (step, real tokens) the row resumes from, or None: each run then starts with
  TensorBoard's restart marker just past it (events an earlier process wrote beyond its last
  checkpoint are hidden)."""

  def __init__(self, workdir: str, row: str, resumed: tuple[int, int] | None = None):
    step, tokens = (resumed[0] + 1, resumed[1] + 1) if resumed else (None, None)
    root = os.path.join(workdir, "tensorboard")
    self.by_step = metric_writers.TensorBoardWriter(
      os.path.join(root, "steps", row), purge_step=step
    )
    self.by_tokens = metric_writers.TensorBoardWriter(
      os.path.join(root, "tokens", row), purge_step=tokens
    )

  def write_scalars(self, step, scalars, *, walltime=None) -> None:
    self.by_step.write_scalars(step, scalars, walltime=walltime)

  def write_hparams(self, hparams) -> None:
    self.by_step.write_hparams(hparams)

  def write_texts(self, step, texts) -> None:
    self.by_step.write_texts(step, texts)

  def tokens(self, real_tokens: int, scalars: dict, *, walltime: float | None = None) -> None:
    named = {f"by_real_tokens/{k.replace('/', '_')}": v for k, v in scalars.items()}
    self.by_tokens.write_scalars(real_tokens, named, walltime=walltime)

  def flush(self) -> None:
    self.by_step.flush()
    self.by_tokens.flush()

  def close(self) -> None:
    self.by_step.close()
    self.by_tokens.close()


def row_writers(
  setting: str, workdir: str | None, row: str, resumed: tuple[int, int] | None
) -> RowWriters | None:
  """The row's writers, or None (no workdir, TensorBoard off, or not process 0)."""
  if not workdir or not tensorboard_on(setting) or jax.process_index() > 0:
    return None
  return RowWriters(workdir, row, resumed)
