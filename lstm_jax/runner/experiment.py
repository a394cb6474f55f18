"""The experiment runner: one model, one data split, one optimizer and seed, trained under each
batching strategy on the same number of real tokens, evaluated the same exact way.

`train_and_evaluate(config, workdir)` is the whole job (experiments/compare_strategies.py is only
argument parsing around it). Per strategy and seed it records compiles and compile seconds,
real and computed tokens, padding, steady-state real tokens/s, wall seconds, the eval curve
against wall time and tokens, the final eval loss and metric, XLA's memory for the train step and
the process's peak RSS; `lstm_jax.runner.report` writes the files, table and plots.

Every strategy is evaluated on the held-out split with one fixed evaluator: buckets chosen on the
eval lengths, whole sequences, masked: exact, so what truncated BPTT's truncation costs in quality
shows up in the eval loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import time

import jax
import ml_collections
import numpy as np
from flax import serialization

from lstm_jax import baselines, batching, compiles, host, sharding, train
from lstm_jax.backend import step_backend
from lstm_jax.checkpoint import Checkpointer, quiet_orbax
from lstm_jax.data import RaggedDataset
from lstm_jax.environment import versions
from lstm_jax.errors import CheckpointError, ConfigError
from lstm_jax.files import atomic_write
from lstm_jax.preemption import Preempted, Preemption
from lstm_jax.runner import config, costs, guards, report
from lstm_jax.runner.build import (
  eval_chunk_length,
  eval_strategy,
  make_model,
  metric_of,
  metric_value,
  new_train_state,
  planned_steps_from_config,
  row_backends,
  strategy_from_config,
)
from lstm_jax.runner.data import split_data
from lstm_jax.runner.recommend import (
  auto_batches_note,
  calibration,
  fit_notes,
  resolve_auto_batches,
  resolve_auto_buckets,
)
from lstm_jax.runner.writers import row_writers
from lstm_jax.store import StoredDataset
from lstm_jax.workdir import (
  Invocations,
  WorkdirLock,
  check_writable,
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
    self.score, self.step, self.eval_metric, self.params = None, None, None, None

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


def run_strategy(
  name: str,
  train_ds: RaggedDataset,
  eval_ds: RaggedDataset,
  cfg: ml_collections.ConfigDict,
  seed: int,
  log,
  *,
  mesh: jax.sharding.Mesh | None = None,
  workdir: str | None = None,
  strategy: batching.Strategy | None = None,
  data_identity: dict | None = None,
  prepared: tuple[train.TrainState, train.StepFunctions] | None = None,
  done: dict | None = None,
  preemption: Preemption | None = None,
  test_ds: RaggedDataset | None = None,
) -> tuple[dict, list, list]:
  """Trains and evaluates one strategy. Returns (row, step records, eval curve).

  With a workdir, training checkpoints into workdir/checkpoints/<name>-seed<seed> and resumes
  from there (config.resume); a finished run's result goes to workdir/results/<name>-seed<seed>
  .json, and a rerun with resume on reads it back instead of training again. Both carry the
  run's settings (`config.run_settings`) and are read back only under the same settings.
  strategy: the strategy if already built (for this name and seed), else built here.
  data_identity: the data's identity (`split_data`), whose fingerprints enter the settings.
  prepared: the row's initial train state and step functions, if made already (`preflight`;
    the steps are compiled for that state's optimizer and model objects), else made here.
  done: the run's finished result, if the caller read it already (`check_workdir_settings`).
  preemption: an entered `Preemption`: at a SIGTERM or SIGINT the row stops after the step in
    flight with a checkpoint and `Preempted` is raised, naming the row; nothing else is written.
  test_ds: the test split (`config.data.test_path`), if any: the final model is scored on it
    once (the row's test_loss, test_metric and test_classes), never during training.
  Before the first step the largest train step is compiled and checked by the memory guard (by
  preflight, for the first seed), its compile seconds charged to the row's clock at its start.
  With `cfg.background_compiles` (the default) fit then compiles the row's other shapes in the
  background from its first step on, in the order training meets them, on the row's clock;
  otherwise they compile when training first meets them.
  """
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
  if done is not None:
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
    r = train.evaluate(st, evaluator, steps=steps)
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
    train.resume(checkpointer, state, strategy, steps, settings)
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
  try:
    result = train.fit(
      state,
      strategy,
      epochs=cfg.train.epochs or None,
      real_tokens=cfg.train.real_tokens or None,
      steps=steps,
      callback=on_step,
      compile_shapes="background" if background else "lazily",
      compile_workers=cfg.background_compiles,
      eval_every_tokens=cfg.train.eval_every_tokens,
      on_eval=on_eval,
      checkpointer=checkpointer,
      settings=settings,
      resumed=resumed,
      preemption=preemption,
      writer=tb,
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
  compile_timing = dict(
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
  tested = {}
  if test_ds is not None:  # read now, once: the model selected on validation
    chosen = result.state.replace(params=best.params) if best.params is not None else result.state
    scored = train.evaluate(chosen, eval_strategy(test_ds, cfg, devices), steps=steps)
    tested = dict(
      test_loss=scored["loss"],
      test_metric=metric_value(metric, scored),
      test_classes=scores_by_class(chosen, test_ds, cfg),
      selected_step=best.step,
      selected_eval_metric=best.eval_metric,
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
  row = row.to_dict(finished=False)  # the rest is set once every row of the seed has run
  if tb is not None:  # the row's figures as text, and its final evaluation, flushed
    tb.write_texts(int(result.state.step), {"row": _row_text(row)})
    tb.close()
  if result_path and jax.process_index() == 0:
    write_json_atomically(
      result_path, dict(row=row, history=hist, curve=curve.points, settings=settings)
    )
  return row, hist, curve.points


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
  (`train.predict_batches`: batch by batch, keeping only the confusion matrix, so a store's
  split larger than memory is scored too), with that predict step's compiles and seconds;
  else None. Sequence-level labels are scored once per sequence, step-level ones at every real
  step (`level` says which)."""
  if (
    metric_of(eval_ds) != "accuracy"
    or eval_ds.num_classes > MAX_SCORED_CLASSES
    or jax.process_count() > 1
  ):
    return None
  t0 = time.perf_counter()
  state = state.replace(params=jax.device_get(state.params))  # one device, whatever the mesh
  step_level = eval_ds.target_level == "step"
  n = eval_ds.num_classes
  confusion = np.zeros((n, n), np.int64)
  fn = compiles.CountedJit(train.predict_step, name="predict_step")
  batches = train.predict_batches(
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


def check_plans(built: dict[str, batching.Strategy], cfg: ml_collections.ConfigDict) -> dict:
  """The guards that read only the plans (enough optimizer steps within the budget), for each
  strategy: they run before anything compiles, calibration included. Returns the planned steps
  by strategy."""
  return {
    name: guards.check_steps(
      name, strategy, cfg.train.real_tokens or None, cfg.train.epochs or None, cfg.guards.min_steps
    )
    for name, strategy in built.items()
  }


def preflight(
  built: dict[str, batching.Strategy],
  train_ds: RaggedDataset,
  cfg: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh | None,
  finished: set[str],
  log,
  planned: dict[str, int] | None = None,
) -> dict[str, tuple]:
  """The row guards, for every strategy, before any of them trains: enough optimizer steps
  within the budget (from the plans: `check_plans`, which the caller ran before anything
  compiled), and a largest train step that fits in memory (from XLA's analysis of its compile,
  which the first seed's row then reuses). The strategies in `finished` (their first seed's run
  finished earlier) are not compiled again. `planned`: the steps `check_plans` found already,
  by strategy (the others are checked here). Returns the first seed's (initial state, step
  functions) by strategy."""
  planned = dict(planned or {})
  planned.update(check_plans({n: s for n, s in built.items() if n not in planned}, cfg))
  median = float(np.median(list(planned.values())))
  for name, strategy in built.items():
    model = make_model(cfg, train_ds, strategy.right_padded)
    fused = step_backend(model, right_padded=strategy.right_padded, training=True)
    log.note(
      f"{name}: {planned[name]} optimizer steps planned, "
      + ", ".join(f"{k} {v}" for k, v in strategy.batch_settings().items())
      + (f"; train step {fused}" if fused != "scan" else "")
    )
    if abs(planned[name] / median - 1) > cfg.guards.step_tolerance:
      log.note(
        f"  {name} plans {planned[name]} steps against the median {median:g}: its row "
        f"will be marked not comparable. {guards.equal_steps_hint(name, strategy, cfg)}"
      )
  prepared = {}
  for name, strategy in built.items():
    if name in finished:
      continue
    state = new_train_state(cfg, train_ds, cfg.seed, planned[name], strategy.right_padded)
    steps = train.StepFunctions.create(mesh)
    compile_largest_step(name, steps, state, strategy, cfg)
    # The row reuses this compile (its clock starts with its seconds); with background compiles
    # the others follow from its first step on, this shape already done, so none compiles twice.
    prepared[name] = (state, steps)
  return prepared


def earlier_rows(
  cfg: ml_collections.ConfigDict, workdir: str, data_identity: dict, devices: int
) -> dict[tuple[str, int], tuple[dict, list, list]]:
  """The finished results in `workdir` of the strategies and seeds this config does not run
  (an earlier run with more strategies or seeds) whose settings are what this config gives
  them: (row, history, curve) by (strategy, seed). Results of other settings are left out."""
  ran = {(name, cfg.seed + s) for s in range(cfg.seeds) for name in cfg.strategies}
  found = {}
  directory = os.path.join(workdir, "results")
  names = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
  versions_now = versions()
  for file in names:
    name, _, seed = file.removesuffix(".json").rpartition("-seed")
    if not file.endswith(".json") or not seed.isdigit() or (name, int(seed)) in ran:
      continue
    if name not in batching.STRATEGIES or name not in cfg.strategy:
      continue
    settings = config.run_settings(cfg, name, int(seed), data_identity, versions_now, devices)
    try:
      done = read_result(os.path.join(directory, file), settings)
    except ConfigError:  # another configuration's row: not this comparison's
      continue
    row = _read_row(os.path.join(directory, file), done["row"]).to_dict(finished=False)
    found[(name, int(seed))] = (row, done["history"], done["curve"])
  return found


def check_stores_unchanged(datasets, since: float) -> None:
  """Before a rerun resumes: each on-disk store among `datasets` whose files were modified
  after the run first started is checked whole against its checksums (`StoredDataset.
  check_unchanged_since`), so data changed in place between a preemption and the resume is
  refused, naming the file, before any step: never a run trained on a mix of old and new."""
  seen = set()
  for ds in datasets:
    if isinstance(ds, StoredDataset) and ds.store_path not in seen:
      seen.add(ds.store_path)
      ds.check_unchanged_since(since)


def check_workdir_settings(
  cfg: ml_collections.ConfigDict, workdir: str, data_identity: dict, devices: int
) -> dict[tuple[str, int], dict]:
  """Before anything trains: every finished result and newest checkpoint this config would
  read back was made with this config's settings (ConfigError / CheckpointError otherwise).
  Returns the finished results, by (strategy, seed)."""
  versions_now = versions()
  finished = {}
  for s in range(cfg.seeds):
    for name in cfg.strategies:
      settings = config.run_settings(cfg, name, cfg.seed + s, data_identity, versions_now, devices)
      done = read_result(run_dir(workdir, "results", name, cfg.seed + s) + ".json", settings)
      if done is not None:
        finished[(name, cfg.seed + s)] = done
        continue
      directory = run_dir(workdir, "checkpoints", name, cfg.seed + s)
      if cfg.checkpoint.enabled and os.path.isdir(directory):
        Checkpointer.check_settings(directory, settings)
  return finished


def train_and_evaluate(
  cfg: ml_collections.ConfigDict, workdir: str, quiet: bool = False
) -> list[dict]:
  """Runs every strategy in cfg.strategies for each seed; writes the report into `workdir`."""
  config.validate_config(cfg)
  host.tune_malloc(cfg.tune_malloc)  # first: it applies to what is allocated after it
  if cfg.compile_cache_dir:
    compiles.enable_persistent_cache(cfg.compile_cache_dir)
  d = cfg.distributed
  if d.enabled:  # before anything touches the JAX backend
    sharding.initialize(d.coordinator, d.num_processes, d.process_id)
  mesh = sharding.make_mesh(cfg.mesh.num_devices)
  writer = jax.process_index() == 0  # one process writes the files, and holds the workdir
  # at_once: a signal where nothing is unsaved (loading, calibration, compiles, between rows,
  # the report) ends the run at once; inside a row's steps it waits for the step's checkpoint
  stop = Preemption(at_once=True)
  # quiet_orbax: a damaged or unwritable checkpoint is one message, not orbax's tracebacks
  lock = WorkdirLock(workdir) if writer else contextlib.nullcontext()
  with quiet_orbax(), lock, stop as preemption:
    if writer:  # before anything loads or compiles
      check_writable(
        workdir, ("results", "checkpoints") if cfg.checkpoint.enabled else ("results",)
      )
    return _train_and_evaluate(cfg, workdir, mesh, writer, quiet or not writer, preemption)


def _train_and_evaluate(
  cfg: ml_collections.ConfigDict,
  workdir: str,
  mesh: jax.sharding.Mesh | None,
  writer: bool,
  quiet: bool,
  preemption: Preemption | None = None,
) -> list[dict]:
  if writer:
    if not cfg.resume:  # start over: what an earlier run left would be mixed in otherwise
      for kind in ("checkpoints", "results", "selected"):
        shutil.rmtree(os.path.join(workdir, kind), ignore_errors=True)
      if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        os.remove(os.path.join(workdir, "metrics.jsonl"))
    invocations = Invocations(workdir, fresh=not cfg.resume)
  try:
    return _run_all(cfg, workdir, mesh, writer, quiet, preemption, invocations if writer else None)
  except BaseException as e:
    if writer:
      invocations.update("preempted" if isinstance(e, Preempted) else "failed")
    raise
  finally:
    if writer:
      invocations.close()


def _run_all(
  cfg: ml_collections.ConfigDict,
  workdir: str,
  mesh: jax.sharding.Mesh | None,
  writer: bool,
  quiet: bool,
  preemption: Preemption | None,
  invocations: Invocations | None,
) -> list[dict]:
  train_ds, eval_ds, test_ds, identity = split_data(cfg, with_test=True)
  devices = 1 if mesh is None else int(mesh.devices.size)
  cfg, auto_batches = resolve_auto_batches(cfg, train_ds, devices)
  # Every strategy built (so the data's own checks run) and through the plans' guards before
  # anything compiles (the calibration too), except a bucket whose count waits for the
  # calibration (num_buckets="auto"), guarded once it is chosen; the first seed's runs use them.
  waits = cfg.strategy.bucket.num_buckets == "auto"
  built = {
    name: strategy_from_config(name, train_ds, cfg, cfg.seed, batch_multiple=devices)
    for name in cfg.strategies
    if not (waits and name == "bucket")
  }
  planned = check_plans(built, cfg)
  cfg, auto_buckets = resolve_auto_buckets(cfg, train_ds, workdir, devices, quiet, save=False)
  finished = check_workdir_settings(cfg, workdir, identity, devices) if cfg.resume else {}
  if invocations is not None and len(invocations.entries) > 1:  # a rerun: its data unchanged?
    check_stores_unchanged((train_ds, eval_ds, test_ds), invocations.first_started_at)
  if auto_buckets and writer:  # measured before the settings check, kept only once it passed
    costs.Calibration(**auto_buckets["calibration"]).save(os.path.join(workdir, "calibration.json"))
  built = {
    name: built.get(name)
    or strategy_from_config(name, train_ds, cfg, cfg.seed, batch_multiple=devices)
    for name in cfg.strategies
  }
  log = report.ProgressLog(
    os.path.join(workdir, "metrics.jsonl") if writer else os.devnull, quiet=quiet
  )
  for key, n in (identity.get("inferred") or {}).items():  # also in meta.json's data record
    log.note(f"data: {key} {n}, inferred from the data (its largest id + 1; store {key} to set it)")
  for line in filter(None, [auto_batches_note(auto_batches, cfg)]):
    log.note(line)
  for line in fit_notes(cfg, train_ds, built, planned):
    log.note(line)
  for source in (identity, identity.get("eval_source"), identity.get("test_source")):
    if (source or {}).get("nan_padding_stripped"):
      log.note(
        f"data: trailing NaN padding stripped from {source['nan_padding_stripped']} case(s) of "
        f"{source['path']}"
      )
  predictions = None
  if cfg.predict_costs and writer:  # lstm_jax.runner.costs, before anything trains (report.md)
    cal = calibration(cfg, train_ds, os.path.join(workdir, "calibration.json"), quiet)
    budget = (cfg.train.real_tokens or None, cfg.train.epochs or None)
    predictions = {name: costs.predict(s, cal, *budget) for name, s in built.items()}
  first_done = {name for name, seed in finished if seed == cfg.seed}
  prepared = preflight(built, train_ds, cfg, mesh, first_done, log, planned)
  runs, curves, histories = [], {}, {}
  for s in range(cfg.seeds):
    seed = cfg.seed + s
    for name in cfg.strategies:
      first = seed == cfg.seed
      row, hist, curve = run_strategy(
        name,
        train_ds,
        eval_ds,
        cfg,
        seed,
        log,
        mesh=mesh,
        workdir=workdir,
        strategy=built[name] if first else None,
        data_identity=identity,
        prepared=prepared.get(name) if first else None,
        done=finished.get((name, seed)),
        preemption=preemption,
        test_ds=test_ds,
      )
      runs.append(row)
      curves[(name, seed)], histories[(name, seed)] = curve, hist
      if invocations is not None:
        invocations.update()
  if writer:  # the table grows, never shrinks: earlier rows of this configuration join it
    for (name, seed), (row, hist, curve) in earlier_rows(cfg, workdir, identity, devices).items():
      log.note(f"{name} seed {seed}: finished by an earlier run of this workdir, in the table")
      runs.append(row)
      curves[(name, seed)], histories[(name, seed)] = curve, hist
  # Per seed: rows flagged by the guards are left out of the target, which unless set is the
  # worst final eval loss among the comparable rows, and are not timed to it (never ranked).
  for s in range(cfg.seeds):
    seed = cfg.seed + s
    seed_rows = [r for r in runs if r["seed"] == seed]
    guards.mark_comparable(seed_rows, cfg.guards.step_tolerance, cfg.guards.min_steps)
    ranked = [r for r in seed_rows if r["comparable"]] or seed_rows
    target = cfg.target_eval_loss or max(r["eval_loss"] for r in ranked)
    # classification is timed by accuracy, what improves (its loss may rise while it does):
    # the worst final eval accuracy of the comparable rows
    accuracy = ranked[0]["metric"] == "accuracy" and not cfg.target_eval_loss
    key = "eval_metric" if accuracy else "eval_loss"
    target_metric = min(r["eval_metric"] for r in ranked) if accuracy else None
    for r in seed_rows:
      r["target_eval_loss"] = target
      r["target_eval_metric"] = target_metric
      r["time_to_target_seconds"] = (
        report.time_to_target(
          curves[(r["strategy"], seed)], target_metric if accuracy else target, key
        )
        if r["comparable"]
        else None
      )
  meta = dict(
    versions=versions(),
    data=identity,
    config=json.loads(cfg.to_json_best_effort()),
    started=invocations.started if invocations else time.strftime("%Y-%m-%d %H:%M:%S"),
    total_seconds=invocations.total_seconds if invocations else None,
    invocations=len(invocations.entries) if invocations else None,
    length_histogram=dict(
      zip(
        ("lengths", "counts"), (a.tolist() for a in np.unique(train_ds.lengths, return_counts=True))
      )
    ),
    bucket_boundaries=(
      built["bucket"]
      if "bucket" in built
      else strategy_from_config("bucket", train_ds, cfg, cfg.seed)
    ).boundaries
    if "bucket" in cfg.strategy and cfg.strategy.bucket.num_buckets != "auto"
    else [],
    plots=bool(cfg.plots),
  )
  if auto_buckets:
    meta["auto_buckets"] = auto_buckets
  if auto_batches:
    meta["auto_batches"] = auto_batches
  if predictions:
    meta["predictions"] = predictions
  if metric_of(train_ds) == "bits_per_byte":
    meta["baselines"] = baselines.byte_lm(train_ds, eval_ds)
  elif metric_of(train_ds) == "accuracy":
    meta["class_baselines"] = baselines.classification(train_ds, eval_ds)
    if cfg.classic_baselines.enabled and writer:  # once a run, on the split the rows are scored on
      scored_on = "test" if test_ds is not None else "eval"
      meta["classic_baselines"] = dict(
        baselines.classic(
          train_ds,
          test_ds if test_ds is not None else eval_ds,
          dtw_window=cfg.classic_baselines.dtw_window,
          rocket_kernels=cfg.classic_baselines.rocket_kernels,
          seed=cfg.seed,
        ),
        split=scored_on,
      )
  if not writer:
    return report.aggregate(runs)
  log.file.close()
  report.write_metrics(os.path.join(workdir, "metrics.jsonl"), histories, curves)
  invocations.update("finished")
  meta["total_seconds"] = invocations.total_seconds
  summary = report.write_all(workdir, runs, curves, meta)
  if not quiet:
    print(report.table(summary))
  return summary
