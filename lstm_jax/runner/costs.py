"""What a strategy will cost before it runs: compiles, training seconds, padding and memory.

lstm_jax knows each strategy's batches before anything trains (`Strategy.plan`), so the cost of a
run is a sum over its planned steps once two things are known for this machine and model:

* the seconds one train-step shape takes to compile (trace, lower, XLA), and
* the seconds one step of shape [B, T] takes. A scanned recurrent step runs T time steps one
  after another, each a [B, ...] GEMM chain, so `step_seconds(B, T) = T * (alpha + beta * B)`:
  alpha what a time step costs whatever its width (the loop, the kernels' start), beta what each
  row adds. Few wide rows are cheaper per token than many narrow ones, which a cost per token
  alone would miss.

`calibrate` measures both on this machine: it compiles a narrow, long shape and a wide, short
one and times a few steps of each (a few seconds), and fits alpha and beta; memory is fitted the
same way from XLA's analysis of the two compiles (bytes = m0 + m1 * B * T). A calibration can be
saved and read back (`Calibration.save` / `load`, keyed by the model's settings, the CPU and the
versions), so the same config gives the same predictions, and the same automatic choices, run
after run.

`predict` turns a calibration and a strategy into the run's predicted compile and train seconds
for a budget; `choose_num_buckets` picks the bucket count that minimises their sum (config
`strategy.bucket.num_buckets="auto"`): more buckets waste less padding but compile more shapes,
so short runs buy fewer buckets and long runs more; `recommend` ranks the strategies
(experiments/recommend.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time

import jax
import ml_collections
import numpy as np

from lstm_jax import batching, train
from lstm_jax.data import RaggedDataset
from lstm_jax.environment import cpu_model, versions
from lstm_jax.errors import ConfigError
from lstm_jax.files import write_json_atomically
from lstm_jax.runner import config, guards

CANDIDATE_BUCKETS = tuple(range(1, 17))  # num_buckets="auto" chooses among these


@dataclasses.dataclass
class Calibration:
  """This machine's costs for one model and optimizer (see the module docstring)."""

  compile_seconds: float  # one train-step shape: trace, lower and compile
  alpha: float  # seconds per time step of a train step, whatever its width
  beta: float  # seconds per time step per row
  memory_base: float  # bytes of a train step: memory_base + memory_per_token * B * T
  memory_per_token: float
  key: str = ""  # what it was measured for (model settings, CPU, versions)
  measured: dict = dataclasses.field(default_factory=dict)  # the raw timings behind the fit

  def step_seconds(self, batch, length):  # numbers or arrays of them
    return length * (self.alpha + self.beta * batch)

  def step_memory(self, batch: int, length: int) -> float:
    """Predicted bytes of a [batch, length] step: the fitted line, never below its per-token
    part (a negative intercept is the fit's noise: a line fitted on large steps would cross
    zero before the smallest)."""
    per_token = self.memory_per_token * batch * length
    return max(self.memory_base + per_token, per_token, 0.0)

  def save(self, path: str) -> None:
    write_json_atomically(path, dataclasses.asdict(self), indent=1)

  @classmethod
  def load(cls, path: str, key: str) -> Calibration | None:
    """The calibration saved at `path` if it was measured for `key`, else None (also for one
    an older version wrote, with other fields: it is measured again). ConfigError if the file
    is damaged: not JSON, or a cost that is not a finite number (measuring again could choose
    another bucket count than the run it belongs to)."""
    if not os.path.exists(path):
      return None
    fix = (
      "delete it to measure this machine's costs again (num_buckets='auto' may then choose "
      "another count than the runs already in this workdir)"
    )
    try:
      with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
      raise ConfigError(f"{path} is damaged ({type(e).__name__}: {str(e)[:200]}); {fix}.") from e
    if not isinstance(saved, dict):
      raise ConfigError(f"{path} holds a JSON {type(saved).__name__}, not a calibration; {fix}.")
    try:
      cal = cls(**saved)
    except TypeError:
      return None  # another version's fields: measure again
    for field in ("compile_seconds", "alpha", "beta", "memory_base", "memory_per_token"):
      value = getattr(cal, field)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{path}: {field} is {value!r}, not a finite number; {fix}.")
    return cal if cal.key == key else None


def calibration_key(cfg: ml_collections.ConfigDict, dataset: RaggedDataset) -> str:
  """What a calibration depends on: the model and optimizer settings, the data's kind (features
  or tokens, and how many), the CPU and the numerical stack's versions."""
  v = versions()
  parts = dict(
    model=cfg.model.to_dict(),
    optimizer=cfg.optimizer.to_dict(),
    data=[dataset.is_tokens, dataset.num_features, dataset.vocab_size, dataset.num_classes],
    cpu=cpu_model(),
    devices=[d.device_kind for d in jax.local_devices()],
    versions=[v.get(k) for k in ("python", "jax", "jaxlib", "flax", "optax")],
  )
  return json.dumps(parts, sort_keys=True, default=str)


def _time_steps(steps, state, dataset, shape, repeats: int) -> float:
  """Median seconds of `repeats` train steps of `shape` (after one warm-up), on synthetic
  batches of real tokens: what matters to the time is the shape."""
  batch = full_batch(dataset, shape)
  carry = state.model.zero_carry(shape[0])
  lr = np.float32(1.0)
  state = jax.tree.map(lambda x: x.copy() if hasattr(x, "copy") else x, state)
  state, _, _ = steps.train(state, batch, carry, lr)
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, _, _ = steps.train(state, batch, carry, lr)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def full_batch(dataset: RaggedDataset, shape: tuple[int, int]) -> batching.Batch:
  """A [B, T] batch of the dataset's first tokens, every step real."""
  b, t = shape
  n = b * t
  # the first sequences, whole and in order, until they hold n steps (repeated if the data
  # holds fewer): only those are read
  k = min(len(dataset), int(np.searchsorted(np.cumsum(dataset.lengths), n)) + 1)
  seq = np.arange(k)
  values, step_targets = dataset.gather(seq, np.zeros(k, np.int64), dataset.lengths[:k])
  if step_targets is None:  # sequence-level targets: any class will do for timing
    step_targets = np.resize(dataset.sequence_targets(seq), len(values))
  idx = np.arange(n) % len(values)
  values = values[idx].reshape((b, t) + values.shape[1:])
  targets = step_targets[idx].reshape((b, t) + step_targets.shape[1:])
  ones = np.ones((b, t), bool)
  batch = batching.Batch(
    inputs=values,
    targets=targets,
    weights=ones.astype(np.float32),
    mask=ones,
    resets=np.zeros((b, t), bool),
  )
  want = train.abstract_batch(dataset, shape)  # the compiled step's dtypes exactly
  return jax.tree.map(lambda a, w: np.asarray(a, w.dtype).reshape(w.shape), batch, want)


def calibrate(
  state: train.TrainState,
  dataset: RaggedDataset,
  shapes: tuple[tuple[int, int], tuple[int, int]],
  key: str = "",
  repeats: int = 5,
) -> Calibration:
  """Measures compile seconds, alpha, beta and memory on two shapes (a narrow, long one and a
  wide, short one: their B must differ) with fresh step functions (nothing cached in memory)."""
  (b1, t1), (b2, t2) = shapes
  if b1 == b2:
    raise ConfigError(f"calibration shapes need different batch sizes, got {shapes}.")
  steps = train.StepFunctions.create()
  compile_s, memory, per_step = [], [], []
  for shape in shapes:
    args = train.abstract_step_args(steps.train, state, dataset, shape)
    t0 = time.perf_counter()
    steps.train.compile(*args)
    compile_s.append(time.perf_counter() - t0)
    memory.append(guards.step_memory(steps.train.record(*args)) or 0)
    per_step.append(_time_steps(steps, state, dataset, shape, repeats))
  # per time step: s_k / t_k = alpha + beta * b_k, two equations
  r1, r2 = per_step[0] / t1, per_step[1] / t2
  beta = max((r2 - r1) / (b2 - b1), 0.0)
  alpha = max(r1 - beta * b1, 0.0)
  m1 = (memory[1] - memory[0]) / (b2 * t2 - b1 * t1) if b2 * t2 != b1 * t1 else 0.0
  return Calibration(
    compile_seconds=float(np.mean(compile_s)),
    alpha=alpha,
    beta=beta,
    memory_base=float(memory[0] - m1 * b1 * t1),
    memory_per_token=float(m1),
    key=key,
    measured=dict(
      shapes=[list(s) for s in shapes],
      compile_seconds=compile_s,
      step_seconds=per_step,
      step_memory_bytes=memory,
    ),
  )


def calibration_shapes(dataset: RaggedDataset, tokens_per_step: int) -> tuple:
  """A narrow, long shape and a wide, short one holding about `tokens_per_step` tokens each,
  spanning the data's lengths (its 95th percentile and its median, at least 8)."""
  long_t = int(max(8, np.percentile(dataset.lengths, 95)))
  short_t = int(max(8, np.median(dataset.lengths)))
  if short_t * 2 > long_t:
    short_t = max(8, long_t // 4)
  return (
    (max(1, tokens_per_step // long_t), long_t),
    (max(2, tokens_per_step // short_t), short_t),
  )


def predict(
  strategy: batching.Strategy,
  cal: Calibration,
  real_tokens: int | None,
  epochs: int | None = None,
) -> dict:
  """The run's predicted costs within the budget: steps, shapes (= compiles), padding,
  compile and train seconds, their total, and the largest step's memory."""
  steps = guards.planned_plans(strategy, real_tokens, epochs)
  b, t = steps["batch_size"], steps["length"]
  shapes = sorted(set(zip(b.tolist(), t.tolist())))
  real = int(steps["real_tokens"].sum())
  computed = int((b * t).sum())
  compile_s = len(shapes) * cal.compile_seconds
  train_s = float(cal.step_seconds(b, t).sum())
  largest = guards.largest_of(shapes)
  return dict(
    strategy=strategy.name,
    steps=len(b),
    shapes=len(shapes),
    real_tokens=real,
    computed_tokens=computed,
    padding_fraction=1.0 - real / computed,
    compile_seconds=compile_s,
    train_seconds=train_s,
    total_seconds=compile_s + train_s,
    largest_shape=list(largest),
    step_memory_bytes=cal.step_memory(*largest),
    truncates_gradients=bool(strategy.carries_state),
  )


def choose_num_buckets(
  dataset: RaggedDataset,
  cfg: ml_collections.ConfigDict,
  cal: Calibration,
  seed: int = 0,
  candidates=CANDIDATE_BUCKETS,
  batch_multiple: int = 1,
) -> tuple[int, list[dict]]:
  """The bucket count whose run within cfg's budget is predicted to finish first (compiles
  plus training), and the prediction for every candidate."""
  rows = []
  for n in candidates:
    if n > len(np.unique(dataset.lengths)):
      break
    kwargs = dict(config.strategy_kwargs("bucket", cfg), num_buckets=n)
    strategy = batching.make_strategy(
      "bucket", dataset, seed=seed, batch_multiple=batch_multiple, **kwargs
    )
    rows.append(
      dict(
        predict(strategy, cal, cfg.train.real_tokens or None, cfg.train.epochs or None),
        num_buckets=n,
        boundaries=list(getattr(strategy, "boundaries")),  # a Bucket
      )
    )
  best = min(rows, key=lambda r: r["total_seconds"])
  return best["num_buckets"], rows


def recommend(predictions: list[dict], exact_gradients: bool = False) -> tuple[str, str]:
  """(strategy, the reason in a sentence): the strategy predicted to finish its budget first;
  when that one truncates gradients, the sentence names the fastest exact one too.
  `exact_gradients` (the runner sets it for sequence-level labels, unless
  config.truncation_ok): only strategies with exact gradients are recommended, and the sentence
  says what truncation would have saved."""
  fastest = min(predictions, key=lambda p: p["total_seconds"])
  exact = [p for p in predictions if not p["truncates_gradients"]]
  if exact_gradients and exact and fastest["truncates_gradients"]:
    best = min(exact, key=lambda p: p["total_seconds"])
    return best["strategy"], (
      f"{best['strategy']} is the fastest strategy with exact gradients: "
      f"{best['total_seconds']:.0f} s ({best['shapes']} compile(s), then "
      f"{best['train_seconds']:.0f} s of steps with {100 * best['padding_fraction']:.1f}% "
      f"padding). A sequence-level label needs the gradient through the whole sequence, which "
      f"{fastest['strategy']} ({fastest['total_seconds']:.0f} s) cuts at its chunk boundaries; "
      f"if truncation is fine for this task, say so with --config.truncation_ok=True."
    )
  best = fastest
  why = (
    f"{best['strategy']} is predicted to train the budget first: {best['total_seconds']:.0f} s "
    f"({best['shapes']} compile(s), {best['compile_seconds']:.0f} s, then "
    f"{best['train_seconds']:.0f} s of steps with {100 * best['padding_fraction']:.1f}% padding)"
  )
  if best["truncates_gradients"] and exact:
    alt = min(exact, key=lambda p: p["total_seconds"])
    why += (
      f"; it truncates gradients at its chunk boundaries, so if the task needs dependencies "
      f"longer than a chunk, take {alt['strategy']} ({alt['total_seconds']:.0f} s, exact)"
    )
  others = sorted((p for p in predictions if p is not best), key=lambda p: p["total_seconds"])
  if others:
    why += f"; next: {others[0]['strategy']} at {others[0]['total_seconds']:.0f} s."
  else:
    why += "."
  return best["strategy"], why
