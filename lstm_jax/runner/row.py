"""One row of the comparison: a strategy and a seed trained, evaluated and recorded.

`run_strategy` builds what the row needs (or takes it ready), resumes it from its checkpoints,
trains it through `loop.fit` on the row's clock (`RowClock`), evaluates it on the held-out
split along the way (`EvalCurve`), keeps the model of best validation for a test split
(`BestOnValidation`), scores it class by class, writes its TensorBoard runs and returns the
row (`report.Row`), its step records and its curve. `lstm_jax.runner.experiment` runs the rows
and compares them.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import serialization

from lstm_jax import baselines, batching, compiles, evaluation, loop, train
from lstm_jax.checkpoint import Checkpointer
from lstm_jax.data import RaggedDataset
from lstm_jax.environment import versions
from lstm_jax.errors import CheckpointError, ConfigError
from lstm_jax.files import atomic_write
from lstm_jax.preemption import Preempted, Preemption
from lstm_jax.runner import config, guards, report
from lstm_jax.runner.build import (
  eval_chunk_length,
  eval_strategy,
  metric_of,
  metric_value,
  new_train_state,
  planned_steps_from_config,
  row_backends,
  strategy_from_config,
)
from lstm_jax.runner.writers import row_writers
from lstm_jax.workdir import (
  read_result,
  run_dir,
  write_json_atomically,
)


def compile_largest_step(
  name: str,
  steps: train.StepFunctions,
  state: train.TrainState,
  strategy: batching.Strategy,
  cfg: ml_collections.ConfigDict,
) -> None:
  """Compiles the strategy's largest train step (a compile its run makes anyway, so counted in
  its row) and applies the memory guard to XLA's memory analysis of it."""
  shape = guards.largest_shape(strategy)
  args = train.abstract_step_args(
    steps.train, state, strategy.dataset, shape, strategy.right_padded
  )
  steps.train.compile(*args)
  guards.check_memory(
    name,
    shape,
    guards.step_memory(steps.train.record(*args)),
    cfg.guards.max_step_memory or guards.default_memory_limit(),
  )


@dataclasses.dataclass
class RowClock:
  """A row's clock (big_vision's Chrono in miniature): the seconds it has spent training, which
  are the compile made before its first step plus each step's seconds; evaluations and the
  blocking part of checkpoint writes are not on it. Checkpointed with the row, so a resumed
  row's clock goes on from where it stood."""

  train_seconds: float = 0.0

  def tick(self, seconds: float) -> float:
    self.train_seconds += seconds
    return self.train_seconds


@dataclasses.dataclass
class EvalCurve:
  """A row's evaluations in order, each: real tokens trained on, the row's clock then, eval
  loss and metric, and the seconds the evaluation took (off the clock)."""

  points: list[dict] = dataclasses.field(default_factory=list)

  def add(self, **point) -> dict:
    self.points.append(point)
    return point

  def covers(self, real_tokens: int) -> bool:
    """Whether the last evaluation was made after `real_tokens` real tokens."""
    return bool(self.points) and self.points[-1]["real_tokens"] == real_tokens

  @property
  def last(self) -> dict:
    return self.points[-1]


class BestOnValidation:
  """The model selected on the eval (validation) split, for a row with a test split: the
  parameters at the evaluation with the best eval metric (accuracy for classification, ties
  broken by the lower eval loss; else the lowest eval loss), kept on the host and, with a
  workdir, written whole
  to `path` (flax's msgpack) so a resumed row still holds them. A resume replays its steps
  bit-identically, so an evaluation seen again rewrites the same parameters."""

  def __init__(self, metric: str, path: str | None):
    self.metric, self.path = metric, path
    self.score: list[float] | None = None
    self.step: int | None = None
    self.eval_metric: float | None = None
    self.params: Any = None

  def _score(self, point: dict) -> list[float]:
    """Higher is better: accuracy, then (among equal accuracies: a small validation split
    saturates early) the lower loss; or the lower loss alone."""
    if self.metric == "accuracy":
      return [point["eval_metric"], -point["eval_loss"]]
    return [-point["eval_loss"]]

  def consider(self, state: train.TrainState, point: dict) -> None:
    score = self._score(point)
    if self.score is not None and not score > self.score:
      return
    self.score, self.step, self.eval_metric = score, int(state.step), point["eval_metric"]
    self.params = jax.device_get(state.params)
    if self.path and jax.process_index() == 0:
      record = dict(step=self.step, score=score, eval_metric=self.eval_metric)
      with atomic_write(self.path, "wb") as f:
        params = serialization.to_state_dict(self.params)
        f.write(serialization.msgpack_serialize(dict(record=record, params=params)))

  def restore(self, like_params, resumed_step: int) -> None:
    """After a resume from `resumed_step`: the selection written before it, if any."""
    if not self.path or not os.path.exists(self.path):
      return
    try:
      with open(self.path, "rb") as f:
        saved = serialization.msgpack_restore(f.read())
      record = saved["record"]
      params = serialization.from_state_dict(jax.device_get(like_params), saved["params"])
    except Exception as e:  # a damaged file: refuse, naming it (the selection would be wrong)
      raise CheckpointError(
        f"{self.path} (the row's model selected on validation) cannot be read ({e}); delete "
        f"it and the row's checkpoints to run the row again."
      ) from None
    if record["step"] <= resumed_step:
      self.score, self.step = record["score"], record["step"]
      self.eval_metric, self.params = record["eval_metric"], params


def _progress_state(clock: RowClock, curve: EvalCurve) -> dict:
  """The row's own state in its checkpoints (`Checkpointer.extra_state`)."""
  return dict(curve=curve.points, train_seconds=clock.train_seconds)


@dataclasses.dataclass(frozen=True)
class RowInputs:
  """What every row of a run shares: the config, the splits and the data's identity (whose
  fingerprints enter each row's settings), where files go, the devices and the stop signal.

  test_ds: the test split (`config.data.test_path`), if any: each row's final model (the one
    selected on validation) is scored on it once, never during training.
  workdir: None: nothing is written (no checkpoints, results or TensorBoard runs).
  preemption: an entered `Preemption`: at a SIGTERM or SIGINT a row stops after the step in
    flight with a checkpoint and `Preempted` is raised, naming the row.
  """

  cfg: ml_collections.ConfigDict
  train_ds: RaggedDataset
  eval_ds: RaggedDataset
  test_ds: RaggedDataset | None = None
  data_identity: dict | None = None
  workdir: str | None = None
  mesh: jax.sharding.Mesh | None = None
  preemption: Preemption | None = None


def run_strategy(
  name: str,
  seed: int,
  shared: RowInputs,
  log,
  *,
  strategy: batching.Strategy | None = None,
  prepared: tuple[train.TrainState, train.StepFunctions] | None = None,
  done: dict | None = None,
) -> tuple[dict, list, list]:
  """Trains and evaluates one strategy. Returns (row, step records, eval curve).

  With a workdir, training checkpoints into workdir/checkpoints/<name>-seed<seed> and resumes
  from there (config.resume); a finished run's result goes to workdir/results/<name>-seed<seed>
  .json, and a rerun with resume on reads it back instead of training again. Both carry the
  run's settings (`config.run_settings`) and are read back only under the same settings.
  shared: what the run's rows share (`RowInputs`).
  log: the run's `report.ProgressLog` (the progress bar and metrics.jsonl).
  strategy: the strategy if already built (for this name and seed), else built here.
  prepared: the row's initial train state and step functions, if made already (`preflight`;
    the steps are compiled for that state's optimizer and model objects), else made here.
  done: the run's finished result, if the caller read it already (`check_workdir_settings`).
  Before the first step the largest train step is compiled and checked by the memory guard (by
  preflight, for the first seed), its compile seconds charged to the row's clock at its start.
  With `cfg.background_compiles` (the default) fit then compiles the row's other shapes in the
  background from its first step on, in the order training meets them, on the row's clock;
  otherwise they compile when training first meets them.
  """
  cfg, train_ds, eval_ds, test_ds = shared.cfg, shared.train_ds, shared.eval_ds, shared.test_ds
  mesh, workdir, data_identity = shared.mesh, shared.workdir, shared.data_identity
  preemption = shared.preemption
  devices = 1 if mesh is None else int(mesh.devices.size)
  settings = config.run_settings(
    cfg,
    name,
    seed,
    data_identity
    or dict(train_fingerprint=train_ds.fingerprint(), eval_fingerprint=eval_ds.fingerprint()),
    versions(),
    devices,
  )
  result_path = run_dir(workdir, "results", name, seed) + ".json" if workdir else None
  if done is None and result_path and cfg.resume:
    done = read_result(result_path, settings)
  if done is not None and result_path:
    log.note(f"{name} seed {seed}: finished earlier, read from {result_path}")
    return (
      _read_row(result_path, done["row"]).to_dict(finished=False),
      done["history"],
      done["curve"],
    )
  strategy = strategy or strategy_from_config(name, train_ds, cfg, seed, batch_multiple=devices)
  planned = planned_steps_from_config(
    strategy, cfg
  )  # the row's steps: its schedule and its progress bar
  evaluator = eval_strategy(eval_ds, cfg, batch_multiple=devices)
  state, steps = prepared or (
    new_train_state(cfg, train_ds, seed, len(planned), strategy.right_padded),
    train.StepFunctions.create(mesh),
  )
  background = cfg.background_compiles > 0
  compile_largest_step(name, steps, state, strategy, cfg)  # done already if prepared
  compiled_ahead = steps.train.compile_seconds
  waited_ahead = steps.train.blocked_seconds  # the compile before fit: on the clock already
  metric = metric_of(train_ds)
  clock, curve = RowClock(), EvalCurve()  # checkpointed with the row
  checkpointer = (
    Checkpointer(
      run_dir(workdir, "checkpoints", name, seed),
      every_steps=cfg.checkpoint.every_steps,
      keep=cfg.checkpoint.keep,
      keep_period=cfg.checkpoint.keep_period or None,
      extra_state=lambda: _progress_state(clock, curve),
    )
    if workdir and cfg.checkpoint.enabled
    else None
  )

  tb = None  # the row's TensorBoard runs (config.tensorboard), opened once resume is known
  steps_clock = [0.0]  # the steps' seconds summed: TensorBoard's time axis, as fit's

  def on_step(rec):
    rec["train_seconds"] = clock.tick(rec["step_seconds"])
    log.step(rec)
    steps_clock[0] += rec["step_seconds"]
    if tb is not None:
      tb.tokens(log.tokens, {"train/loss": rec["loss"]}, walltime=steps_clock[0])

  # with a test split, the model it scores is the one selected on the eval (validation) split
  best = (
    BestOnValidation(
      metric, run_dir(workdir, "selected", name, seed) + ".msgpack" if workdir else None
    )
    if test_ds is not None
    else None
  )

  def on_eval(st, real_tokens):
    t0 = time.perf_counter()
    r = evaluation.evaluate(st, evaluator, steps=steps)
    point = curve.add(
      real_tokens=real_tokens,
      train_seconds=clock.train_seconds,
      eval_loss=r["loss"],
      eval_metric=metric_value(metric, r),
      eval_seconds=time.perf_counter() - t0,
    )
    log.eval(point)
    if tb is not None:
      scalars = {"eval/loss": r["loss"], f"eval/{metric}": point["eval_metric"]}
      tb.write_scalars(int(st.step), scalars, walltime=steps_clock[0])
      tb.tokens(real_tokens, scalars, walltime=steps_clock[0])
    if best is not None:
      best.consider(st, point)

  # the bar's 100%: the budget's real tokens, or all the planned epochs' (not the first one's)
  log.start(name, seed, cfg.train.real_tokens or int(planned.sum()), strategy, metric)
  resumed = (
    loop.resume(checkpointer, state, strategy, steps, settings)
    if checkpointer is not None
    else None
  )
  tb = row_writers(
    cfg.tensorboard,
    workdir,
    f"{name}-seed{seed}",
    (resumed.step, resumed.position.real_tokens) if resumed is not None else None,
  )
  if resumed is None:
    if tb is not None:
      tb.write_hparams(dict(settings, strategy=name))
    on_eval(state, 0)
  else:
    steps_clock[0] = sum(h["step_seconds"] for h in resumed.history)
    clock.train_seconds = resumed.extra["train_seconds"]
    curve.points = list(resumed.extra["curve"])
    if best is not None:
      best.restore(state.params, resumed.step)
    log.resumed(
      resumed.position.real_tokens,
      clock.train_seconds + compiled_ahead,
      curve.last if curve.points else None,
    )
  clock.tick(compiled_ahead)  # the compile made before the first step
  every = cfg.train.eval_every_tokens  # 0: evaluated only at the start and the end
  try:
    result = loop.fit(
      state,
      strategy,
      epochs=cfg.train.epochs or None,
      real_tokens=cfg.train.real_tokens or None,
      steps=steps,
      pipeline=loop.Pipeline(
        compile_shapes="background" if background else "lazily",
        compile_workers=cfg.background_compiles if background else 1,
      ),
      checkpointing=loop.Checkpointing(
        checkpointer,
        settings=settings if checkpointer is not None else None,  # nothing to check them against
        resumed=resumed,
        preemption=preemption,
      ),
      hooks=loop.Hooks(
        on_step=on_step,
        on_eval=on_eval if every else None,
        eval_every_tokens=every or None,
        writer=tb,
      ),
    )
  except Preempted as e:
    log.end()
    raise e.for_row(f"{name} seed {seed}") from None
  if not curve.covers(result.real_tokens):
    on_eval(result.state, result.real_tokens)
  log.end()
  hist = result.history
  steady = [h for h in hist[1:] if not h["compiled"]]  # warm-up step and compiling steps excluded
  # Compiles on the row's clock (which starts at compiled_ahead, the compile made before fit):
  # when the first step ended, when the last train shape finished compiling, and how long steps
  # stood waiting for compiles (all of it when shapes compile as training meets them).
  ended = steps.train.last_compile_finished
  compile_timing: dict[str, Any] = dict(
    first_step_seconds=compiled_ahead + hist[0]["step_seconds"] if hist else None,
    compiles_done_seconds=(
      compiled_ahead + max(0.0, ended - result.clock_start)
      if ended is not None and result.clock_start is not None
      else compiled_ahead
    ),
    compile_wait_seconds=steps.train.blocked_seconds - waited_ahead,
  )
  steady_seconds = sum(h["step_seconds"] for h in steady)
  computed = sum(h["computed_tokens"] for h in hist)
  classes = scores_by_class(result.state, eval_ds, cfg)  # off the row's clock
  tested = (  # read now, once: the model selected on validation
    _score_on_test(result.state, best, test_ds, shared, steps)
    if test_ds is not None and best is not None
    else {}
  )
  train_rec = list(steps.train.records.values())
  row = report.Row(
    strategy=name,
    seed=seed,
    compiles=dict(train=steps.train.compiles, eval=steps.eval.compiles),
    compile_seconds=steps.train.compile_seconds,
    eval_compile_seconds=steps.eval.compile_seconds,
    cache_loads=dict(train=steps.train.cache_loads, eval=steps.eval.cache_loads),
    shapes=len(strategy.shapes()),
    steps=len(hist),
    batch_settings=strategy.batch_settings(),
    backend=row_backends(result.state, strategy, evaluator),
    real_tokens=result.real_tokens,
    computed_tokens=computed,
    padding_fraction=1.0 - result.real_tokens / computed,
    tokens_per_second=(
      sum(h["real_tokens"] for h in steady) / steady_seconds if steady_seconds > 0 else float("nan")
    ),
    wall_seconds=clock.train_seconds,
    eval_loss=curve.last["eval_loss"],
    eval_metric=curve.last["eval_metric"],
    metric=metric,
    step_memory_bytes=max((r.temp_bytes or 0) for r in train_rec) if train_rec else 0,
    step_peak_bytes=max((guards.step_memory(r) or 0) for r in train_rec) if train_rec else 0,
    peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    devices=devices,
    processes=jax.process_count(),
    resumed_from_step=result.resumed_from,
    background_compiles=cfg.background_compiles,
    **compile_timing,
    balanced_accuracy=classes["balanced_accuracy"] if classes else None,
    classes=classes,
    **tested,
  )
  record = row.to_dict(finished=False)  # the rest is set once every row of the seed has run
  if tb is not None:  # the row's figures as text, and its final evaluation, flushed
    tb.write_texts(int(result.state.step), {"row": _row_text(record)})
    tb.close()
  if result_path and jax.process_index() == 0:
    write_json_atomically(
      result_path, dict(row=record, history=hist, curve=curve.points, settings=settings)
    )
  return record, hist, curve.points


def _score_on_test(
  final: train.TrainState,
  best: BestOnValidation,
  test_ds: RaggedDataset,
  shared: RowInputs,
  steps: train.StepFunctions,
) -> dict:
  """The row's test fields: the model selected on validation (else the final one) scored on
  the test split, once, and which step was chosen."""
  cfg = shared.cfg
  devices = 1 if shared.mesh is None else int(shared.mesh.devices.size)
  chosen = final.replace(params=best.params) if best.params is not None else final
  scored = evaluation.evaluate(chosen, eval_strategy(test_ds, cfg, devices), steps=steps)
  return dict(
    test_loss=scored["loss"],
    test_metric=metric_value(best.metric, scored),
    test_classes=scores_by_class(chosen, test_ds, cfg),
    selected_step=best.step,
    selected_eval_metric=best.eval_metric,
  )


def _row_text(row: dict) -> str:
  """The row's figures for TensorBoard's Text tab (a markdown table of two columns)."""
  keys = (
    "steps",
    "real_tokens",
    "padding_fraction",
    "tokens_per_second",
    "wall_seconds",
    "compile_seconds",
    "eval_loss",
    "eval_metric",
    "test_metric",
    "selected_step",
  )
  shown = [(k, row[k]) for k in keys if row.get(k) is not None]
  lines = ["| | |", "|---|---|"] + [
    f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in shown
  ]
  return "\n".join(lines + [f"| compiles | {row['compiles']} |"])


MAX_SCORED_CLASSES = 100  # more classes than this: no confusion matrix (it would not be read)


def scores_by_class(
  state: train.TrainState, eval_ds: RaggedDataset, cfg: ml_collections.ConfigDict
) -> dict | None:
  """For classification with at most MAX_SCORED_CLASSES classes (one process): the final
  model's `baselines.class_scores` on the held-out split, each sequence computed whole
  (`evaluation.predict_batches`: batch by batch, keeping only the confusion matrix, so a store's
  split larger than memory is scored too), with that predict step's compiles and seconds;
  else None. Sequence-level labels are scored once per sequence, step-level ones at every real
  step (`level` says which)."""
  if (
    metric_of(eval_ds) != "accuracy"
    or (eval_ds.num_classes or 0) > MAX_SCORED_CLASSES
    or jax.process_count() > 1
  ):
    return None
  t0 = time.perf_counter()
  state = state.replace(params=jax.device_get(state.params))  # one device, whatever the mesh
  step_level = eval_ds.target_level == "step"
  n = int(eval_ds.num_classes or 0)
  confusion = np.zeros((n, n), np.int64)
  fn = compiles.CountedJit(evaluation.predict_step, name="predict_step")
  batches = evaluation.predict_batches(
    state,
    eval_ds,
    num_buckets=cfg.eval.num_buckets,
    predict_jit=fn,
    chunk_length=eval_chunk_length(cfg),
  )
  lengths = eval_ds.lengths
  for items in batches:
    for piece in items:
      if step_level:
        np.add.at(confusion, (piece.targets, piece.outputs.argmax(axis=-1)), 1)
      elif piece.start + len(piece.outputs) == lengths[piece.seq]:  # the label: its last step
        confusion[piece.targets[-1], piece.outputs[-1].argmax()] += 1
  out = baselines.scores_from_confusion(confusion)
  level = "step" if step_level else "sequence"
  return dict(out, level=level, predict_compiles=fn.compiles, seconds=time.perf_counter() - t0)


def _read_row(path: str, row: dict) -> report.Row:
  """A finished row read back, checked to be one this runner writes."""
  try:
    return report.Row.from_dict(row)
  except (TypeError, ValueError) as e:
    raise ConfigError(
      f"{path} does not hold a row this runner writes ({e}); delete it, or run with "
      f"--config.resume=False to start over."
    ) from e
