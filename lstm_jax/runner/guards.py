"""Row guards: what makes a row of the runner's comparison one a researcher can trust.

Before anything trains, from what each strategy already knows (its plans) and from XLA's memory
analysis of its largest train step (compiled once, the compile the row would make anyway):

- `check_steps`: the strategy takes at least `min_steps` optimizer steps within the real-token
  budget, and no single step holds more real tokens than the whole budget;
- `check_memory`: the largest step fits under `max_step_memory` bytes (0: `default_memory_limit`).

Either raises a ConfigError naming the strategy, the numbers and the fix. After training,
`mark_comparable` flags the rows whose optimizer step counts differ from the median row's by more
than `step_tolerance`: such a row measures a different number of updates, not a strategy, so it
is reported with its reason and left out of the target loss and the report's reading.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from lstm_jax.batching import STRATEGIES, Bucket, Pack, Strategy
from lstm_jax.errors import ConfigError


def _row_setting(name: str) -> str:
  """The strategy's setting for rows per batch, which a fix names."""
  return STRATEGIES[name].row_setting if name in STRATEGIES else "batch_size"


def planned_plans(strategy: Strategy, real_tokens: int | None, epochs: int | None) -> dict:
  """The optimizer steps a run of `strategy` will take, epoch by epoch until `real_tokens` are
  reached or `epochs` are done, as `loop.fit` stops: per step, its batch_size, length and
  real_tokens (<int64>[steps] arrays, from the plans' arrays: no batch is built)."""
  parts, total, epoch = [], 0, 0
  while True:
    plan = strategy.plan(epoch)
    if real_tokens:
      reached = np.flatnonzero(total + np.cumsum(plan.real_tokens) >= real_tokens)
      if len(reached):
        parts.append((plan, int(reached[0]) + 1))
        break
    parts.append((plan, len(plan)))
    total += int(plan.real_tokens.sum())
    epoch += 1
    if epochs and epoch >= epochs:
      break
  return {
    k: np.concatenate([getattr(p, k)[:n] for p, n in parts])
    for k in ("batch_size", "length", "real_tokens")
  }


def planned_steps(strategy: Strategy, real_tokens: int | None, epochs: int | None) -> np.ndarray:
  """The real tokens of each optimizer step a run of `strategy` will take (`planned_plans`)."""
  return planned_plans(strategy, real_tokens, epochs)["real_tokens"]


def check_steps(
  name: str, strategy: Strategy, real_tokens: int | None, epochs: int | None, min_steps: int
) -> int:
  """Raises ConfigError if the strategy's run would be too few steps to compare, or one step
  would hold more than the whole budget. Returns the planned number of steps."""
  steps = planned_steps(strategy, real_tokens, epochs)
  budget = f"the budget of {real_tokens:,} real tokens" if real_tokens else f"{epochs} epoch(s)"
  fix = (
    f"Lower its rows per step (config.train.tokens_per_step, or "
    f"config.strategy.{name}.{_row_setting(name)}), raise "
    f"config.train.real_tokens or epochs, or leave {name} out of config.strategies."
  )
  if strategy.batch_settings().get("batch_size") == 1:
    fix = (
      f"Its batches already hold one row, so a step is at least one whole sequence: for "
      f"long documents use tbptt or vbptt, which cut them into chunks; or raise "
      f"config.train.real_tokens or epochs, or leave {name} out of config.strategies."
    )
  if real_tokens and max(steps) > real_tokens:
    raise ConfigError(
      f"{name}: one step holds {max(steps):,} real tokens, more than {budget}. " + fix
    )
  if len(steps) < min_steps:
    raise ConfigError(
      f"{name} would take only {len(steps)} optimizer step(s) within {budget} (its steps hold "
      f"{np.mean(steps):,.0f} real tokens on average, up to {max(steps):,}); a comparable row "
      f"needs at least config.guards.min_steps={min_steps}. " + fix
    )
  return len(steps)


def equal_steps_hint(name: str, strategy: Strategy, cfg) -> str:
  """What brings a strategy's step count in line with the others (for the runner's log)."""
  per_epoch = strategy.dataset.num_steps / cfg.train.tokens_per_step
  for setting in dict.fromkeys((_row_setting(name), "batch_size")):
    if cfg.strategy[name].get(setting) is not None:
      return (
        f"Leave config.strategy.{name}.{setting} unset (None) to derive it from "
        f"config.train.tokens_per_step."
      )
  if isinstance(strategy, Bucket):
    return (
      f"An epoch holds {per_epoch:.1f} steps of train.tokens_per_step real tokens and each "
      f"of its {len(strategy.boundaries)} buckets takes at least one: use at most "
      f"{max(1, int(per_epoch / 5))} buckets (config.strategy.bucket.num_buckets) or a "
      f"lower config.train.tokens_per_step."
    )
  if isinstance(strategy, Pack) and strategy.length > cfg.train.tokens_per_step:
    return (
      f"Its rows hold up to {strategy.length} tokens, more than train.tokens_per_step: "
      f"set config.strategy.pack.row_length <= {cfg.train.tokens_per_step}."
    )
  return (
    f"An epoch holds {per_epoch:.1f} steps of train.tokens_per_step real tokens; a lower "
    f"config.train.tokens_per_step makes whole-epoch rounding matter less."
  )


def default_memory_limit() -> int:
  """Half of this machine's memory (or of the process's cgroup limit, if lower) on the CPU; 90%
  of the device's memory on an accelerator. Half leaves room for the data, the evaluation step,
  the compiler and whatever else shares the machine."""
  device = jax.local_devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
      return int(0.9 * stats["bytes_limit"])
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  try:
    with open("/sys/fs/cgroup/memory.max") as f:
      limit = f.read().strip()
    if limit.isdigit():
      total = min(total, int(limit))
  except OSError:
    pass
  return total // 2


def step_memory(record) -> int | None:
  """Bytes one call of a compiled step needs, by XLA's memory analysis (a `CompileRecord`):
  scratch plus arguments plus outputs, less the outputs written into donated arguments."""
  if record.temp_bytes is None:
    return None
  return (
    record.temp_bytes
    + (record.argument_bytes or 0)
    + (record.output_bytes or 0)
    - (record.alias_bytes or 0)
  )


def largest_shape(strategy: Strategy) -> tuple[int, int]:
  """The strategy's shape with the most computed tokens (`largest_of`)."""
  return largest_of(strategy.shapes())


def largest_of(shapes) -> tuple[int, int]:
  """The shape with the most computed tokens (the longest, among equals): the step that needs
  the most memory."""
  return max(shapes, key=lambda s: (s[0] * s[1], s[1]))


def check_memory(name: str, shape: tuple[int, int], needed: int | None, limit: int) -> None:
  """Raises ConfigError if a step of `shape` needs more than `limit` bytes, with the largest
  shape of the same kind that would fit (memory grows about linearly with B x T)."""
  if needed is None or needed <= limit:
    return
  b, t = shape
  scale = limit / needed
  setting = _row_setting(name)
  if b > 1:
    hint = (
      f"about {max(1, math.floor(b * scale))} rows per batch ({setting}, or a lower "
      f"config.train.tokens_per_step)"
    )
  else:
    hint = "a shorter row length"
  raise ConfigError(
    f"{name}: its largest train step, a [{b}, {t}] batch, needs {needed / 2**20:,.0f} MiB by "
    f"XLA's memory analysis, more than config.guards.max_step_memory ({limit / 2**20:,.0f} MiB)."
    f" Memory grows with B x T: {hint} would fit"
    + ("; for long documents use tbptt or vbptt, which cut them into chunks" if t > 4096 else "")
    + ", or raise config.guards.max_step_memory, or leave it out of config.strategies."
  )


def mark_comparable(rows: list[dict], tolerance: float, min_steps: int) -> None:
  """Sets row["comparable"] and row["not_comparable"] (the reason, or None) on each row of one
  seed: a row is not comparable if it took fewer than min_steps optimizer steps, or a number of
  steps more than `tolerance` (a fraction) away from the median row's."""
  median = float(np.median([r["steps"] for r in rows])) if rows else 0.0
  for r in rows:
    reason = None
    if r["steps"] < min_steps:
      reason = f"took {r['steps']} optimizer steps, fewer than min_steps={min_steps}"
    elif median and abs(r["steps"] / median - 1) > tolerance:
      reason = (
        f"took {r['steps']} optimizer steps against the median row's {median:g} "
        f"({100 * (r['steps'] / median - 1):+.0f}%, tolerance ±{100 * tolerance:.0f}%): "
        f"it measures a different number of updates"
      )
    r["comparable"], r["not_comparable"] = reason is None, reason
