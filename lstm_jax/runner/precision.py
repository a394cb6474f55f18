"""config.model.matmul_dtype="auto" (the default): bfloat16 matmuls where they measure faster on
this machine, float32 everywhere else.

Whether bfloat16 operands speed the LSTM's GEMMs up depends on the CPU: 1.29x on an AMD EPYC
with AVX512-BF16, 1.32x on an Intel Xeon with AMX, 0.72x on another Xeon with AVX512-BF16 and
0.73-0.79x on a Zen 3 EPYC without bfloat16 instructions; on a Zen 5 EPYC (AVX512-BF16) 1.31x
at the benchmark's H=256 but 0.97x at the main job's H=128 shape, which keeps float32
(docs/speed.md). So "auto" decides per machine, before anything trains:

* float32 without measuring where bfloat16 cannot run or cannot be faster: a cell other than the
  hand-written LSTM (bfloat16 is the LSTM's), a fused backend (cudnn, reference: float32), or a
  CPU whose flags show no bfloat16 dot instructions (x86 `avx512_bf16` / `amx_bf16`, Arm `bf16`):
  XLA then widens every bfloat16 dot back to float32, which only adds conversions;
* otherwise both train steps are compiled at the calibration's wide shape and timed alternately
  (`ROUNDS` rounds of `STEPS_PER_ROUND` steps each, medians of the per-round ratios), and
  bfloat16 is chosen only if it is at least `MARGIN` times as fast: never slower than float32,
  and a machine whose two precisions run about equally keeps float32's exact numbers.

The choice is kept, so the same config gives the same numbers run after run on one machine: in
the workdir (`precision.json`, written with the calibration once the workdir's settings check
has passed; a resumed run reads it back) and in the machine's cache (`sources.parse_cache_dir()`
/precision, keyed by the model and optimizer settings, the data's kind, the step's shape, the CPU
and the versions), so another workdir on the same machine reuses it instead of measuring again.
Results record the choice and its figures (meta.json `auto_precision`). Pin
`config.model.matmul_dtype=float32` (or bfloat16) to take no decision at all.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import statistics
from time import perf_counter

import jax
import ml_collections
import numpy as np

from lstm_jax import train
from lstm_jax.data import RaggedDataset
from lstm_jax.environment import cpu_model
from lstm_jax.errors import ConfigError
from lstm_jax.files import write_json_atomically
from lstm_jax.runner import costs
from lstm_jax.runner.build import new_train_state
from lstm_jax.sources import parse_cache_dir

MARGIN = 1.10  # bfloat16 is chosen only at least this much faster than float32
ROUNDS = 5
STEPS_PER_ROUND = 3
# the CPU flags (Linux /proc/cpuinfo) of bfloat16 dot-product instructions
BF16_DOT_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
FILE = "precision.json"  # in the workdir


@dataclasses.dataclass
class PrecisionChoice:
  """What matmul_dtype="auto" chose on this machine, and why."""

  chosen: str  # "float32" or "bfloat16"
  reason: str  # one line: why (the log and meta.json say it)
  speedup: float | None = None  # median float32/bfloat16 step time; None: not measured
  rounds: list = dataclasses.field(default_factory=list)  # each round's ratio
  shape: list | None = None  # the [B, T] timed
  key: str = ""

  def save(self, path: str) -> None:
    write_json_atomically(path, dataclasses.asdict(self), indent=1)

  @classmethod
  def load(cls, path: str, key: str, strict: bool = True) -> PrecisionChoice | None:
    """The choice saved at `path` for `key`, else None. A damaged file: ConfigError naming it
    if `strict` (the workdir's: measuring again could choose otherwise than the runs already
    there), else None (the machine's cache: measured again and rewritten)."""
    if not os.path.exists(path):
      return None
    fix = (
      "delete it to measure again (matmul_dtype='auto' may then choose another precision than "
      "the runs already in this workdir), or set config.model.matmul_dtype to float32 or "
      "bfloat16"
    )
    try:
      with open(path, "rb") as f:
        raw = f.read()
    except OSError as e:  # there, but not readable: not a damaged file, and not to be re-timed
      if not strict:
        return None
      raise ConfigError(
        f"{path} cannot be read ({type(e).__name__}: {str(e)[:200]}); make it readable, or {fix}."
      ) from e
    try:
      saved = json.loads(raw.decode("utf-8"))  # UnicodeDecodeError is a ValueError
      choice = cls(**saved)
      if choice.chosen not in ("float32", "bfloat16") or not isinstance(choice.key, str):
        raise ValueError(f"chosen is {choice.chosen!r}")
    except (ValueError, TypeError) as e:
      if not strict:
        return None
      raise ConfigError(f"{path} is damaged ({type(e).__name__}: {str(e)[:200]}); {fix}.") from e
    return choice if choice.key == key else None


def bfloat16_dot_instructions() -> bool | None:
  """Whether this CPU's flags show bfloat16 dot instructions; None where the flags cannot be
  read (not Linux): then "auto" measures."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          return bool(set(line.split(":", 1)[1].split()) & set(BF16_DOT_FLAGS))
  except OSError:
    pass
  return None


def _needs_no_measurement(cfg: ml_collections.ConfigDict) -> str | None:
  """Why float32 is the answer without timing anything, or None."""
  if cfg.model.cell != "lstm":
    return f"bfloat16 matmuls are the LSTM's; cell {cfg.model.cell!r} computes in float32"
  if cfg.model.backend in ("cudnn", "reference"):
    return f"backend {cfg.model.backend!r} computes in float32"
  if jax.process_count() > 1:  # each process would time its own steps and might choose otherwise
    return "a multi-process run takes float32 unless bfloat16 is set"
  if jax.default_backend() == "cpu" and bfloat16_dot_instructions() is False:
    return f"this CPU ({cpu_model()}) has no bfloat16 dot instructions"
  return None


def measure(
  cfg: ml_collections.ConfigDict, train_ds: RaggedDataset, shape: tuple[int, int], key: str = ""
) -> PrecisionChoice:
  """Times the float32 and bfloat16 train steps of `shape` alternately and chooses (see the
  module docstring)."""
  batch = costs.full_batch(train_ds, shape)
  runs = {}
  for dtype in ("float32", "bfloat16"):
    c = copy.deepcopy(cfg)
    with c.unlocked():
      c.model.matmul_dtype = dtype
    state = new_train_state(c, train_ds, c.seed, 1, right_padded=False)
    steps = train.StepFunctions.create()
    carry = state.model.zero_carry(shape[0])
    state, _, _ = steps.train(state, batch, carry, np.float32(1.0))  # compiles; warms up
    jax.block_until_ready(state)
    runs[dtype] = [steps, state, carry]

  def timed(dtype: str) -> float:
    steps, state, carry = runs[dtype]
    t0 = perf_counter()
    for _ in range(STEPS_PER_ROUND):
      state, _, _ = steps.train(state, batch, carry, np.float32(1.0))
    jax.block_until_ready(state)
    runs[dtype][1] = state
    return perf_counter() - t0

  ratios = []
  for r in range(ROUNDS):  # alternating which goes first
    order = ("float32", "bfloat16") if r % 2 == 0 else ("bfloat16", "float32")
    seconds = {dtype: timed(dtype) for dtype in order}
    ratios.append(seconds["float32"] / seconds["bfloat16"])
  speedup = float(statistics.median(ratios))
  chosen = "bfloat16" if speedup >= MARGIN else "float32"
  return PrecisionChoice(
    chosen=chosen,
    reason=(
      f"bfloat16 train steps ran {speedup:.2f}x float32's (median of {ROUNDS} rounds at "
      f"[{shape[0]}, {shape[1]}]); bfloat16 is chosen from {MARGIN:.2f}x"
    ),
    speedup=speedup,
    rounds=[float(x) for x in ratios],
    shape=list(shape),
    key=key,
  )


def _cache_path(key: str) -> str:
  digest = hashlib.sha256(key.encode()).hexdigest()[:24]
  return os.path.join(parse_cache_dir(), "precision", f"{digest}.json")


def resolve_auto_precision(
  cfg: ml_collections.ConfigDict,
  train_ds: RaggedDataset,
  workdir: str | None,
  quiet: bool = True,
) -> tuple[ml_collections.ConfigDict, dict | None]:
  """cfg with model.matmul_dtype="auto" replaced by this machine's choice (and the choice's
  record for meta.json), or cfg as it is. Read from the workdir's precision.json, else the
  machine's cache, else measured (and saved to the cache; the runner saves the workdir's copy
  once its settings check has passed)."""
  if cfg.model.matmul_dtype != "auto":
    return cfg, None
  reason = _needs_no_measurement(cfg)
  choice: PrecisionChoice | None
  if reason is not None:
    choice = PrecisionChoice(chosen="float32", reason=reason)
  else:
    shape = costs.calibration_shapes(train_ds, cfg.train.tokens_per_step)[1]  # the wide one
    key = json.dumps([costs.calibration_key(cfg, train_ds), list(shape)])
    cached = _cache_path(key)
    choice = (PrecisionChoice.load(os.path.join(workdir, FILE), key) if workdir else None) or (
      PrecisionChoice.load(cached, key, strict=False)
    )
    if choice is None:
      if not quiet:
        print(f"matmul_dtype=auto: timing float32 and bfloat16 steps at {shape} ...", flush=True)
      choice = measure(cfg, train_ds, shape, key)
      try:  # the machine's cache: another workdir reuses the choice (best effort)
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        choice.save(cached)
      except OSError:
        pass  # not kept for other workdirs; this run records it in its own workdir
  assert choice is not None  # found or measured
  cfg = copy.deepcopy(cfg)
  with cfg.unlocked():
    cfg.model.matmul_dtype = choice.chosen
  return cfg, dataclasses.asdict(choice)


def precision_note(record: dict | None) -> str | None:
  """The log's line for what `resolve_auto_precision` chose."""
  if not record:
    return None
  return f"matmul_dtype=auto: {record['chosen']} ({record['reason']})"


def save_choice(record: dict | None, workdir: str) -> None:
  """The workdir's copy of a measured choice (the runner calls it once the settings check has
  passed), so a rerun of this workdir takes the same precision."""
  if record and record.get("key"):
    PrecisionChoice(**record).save(os.path.join(workdir, FILE))
