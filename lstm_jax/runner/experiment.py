"""The experiment runner: one model, one data split, one optimizer and seed, trained under each
batching strategy on the same number of real tokens, evaluated the same exact way.

`train_and_evaluate(config, workdir)` is the whole job (experiments/compare_strategies.py is only
argument parsing around it). Per strategy and seed it records compiles and compile seconds,
real and computed tokens, padding, steady-state real tokens/s, wall seconds, the eval curve
against wall time and tokens, the final eval loss and metric, XLA's memory for the train step and
the process's peak RSS; `lstm_jax.runner.report` writes the files, table and plots.

One row (a strategy and a seed) is `lstm_jax.runner.row.run_strategy`; this module builds what
the rows share, runs them seed by seed, and compares them.

Every strategy is evaluated on the held-out split with one fixed evaluator: buckets chosen on the
eval lengths, whole sequences, masked: exact, so what truncated BPTT's truncation costs in quality
shows up in the eval loss.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

import jax
import ml_collections
import numpy as np

from lstm_jax import baselines, batching, compiles, host, sharding, train
from lstm_jax.backend import step_backend
from lstm_jax.checkpoint import Checkpointer, quiet_orbax
from lstm_jax.data import RaggedDataset
from lstm_jax.environment import versions
from lstm_jax.errors import ConfigError
from lstm_jax.preemption import Preempted, Preemption
from lstm_jax.runner import config, costs, guards, report
from lstm_jax.runner.build import (
  make_model,
  metric_of,
  new_train_state,
  strategy_from_config,
)
from lstm_jax.runner.data import split_data
from lstm_jax.runner.precision import precision_note, resolve_auto_precision, save_choice
from lstm_jax.runner.recommend import (
  auto_batches_note,
  calibration,
  fit_notes,
  resolve_auto_batches,
  resolve_auto_buckets,
)
from lstm_jax.runner.row import RowInputs, _read_row, compile_largest_step, run_strategy
from lstm_jax.store import StoredDataset
from lstm_jax.workdir import (
  Invocations,
  WorkdirLock,
  check_writable,
  read_result,
  run_dir,
)


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
    if done is None:  # gone since the listing
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
  # anything compiles (matmul_dtype="auto"'s timing and the calibration too), except a bucket
  # whose count waits for the calibration (num_buckets="auto"), guarded once it is chosen; the
  # first seed's runs use them.
  waits = cfg.strategy.bucket.num_buckets == "auto"
  built = {
    name: strategy_from_config(name, train_ds, cfg, cfg.seed, batch_multiple=devices)
    for name in cfg.strategies
    if not (waits and name == "bucket")
  }
  planned = check_plans(built, cfg)
  cfg, auto_precision = resolve_auto_precision(cfg, train_ds, workdir, quiet)
  cfg, auto_buckets = resolve_auto_buckets(cfg, train_ds, workdir, devices, quiet, save=False)
  finished = check_workdir_settings(cfg, workdir, identity, devices) if cfg.resume else {}
  if invocations is not None and len(invocations.entries) > 1:  # a rerun: its data unchanged?
    check_stores_unchanged((train_ds, eval_ds, test_ds), invocations.first_started_at)
  if auto_buckets and writer:  # measured before the settings check, kept only once it passed
    costs.Calibration(**auto_buckets["calibration"]).save(os.path.join(workdir, "calibration.json"))
  if writer:
    save_choice(auto_precision, workdir)
  built = {
    name: built.get(name)
    or strategy_from_config(name, train_ds, cfg, cfg.seed, batch_multiple=devices)
    for name in cfg.strategies
  }
  log = report.ProgressLog(
    os.path.join(workdir, "metrics.jsonl") if writer else os.devnull, quiet=quiet
  )
  _log_notes(
    log, cfg, identity, notes=[auto_batches_note(auto_batches, cfg), precision_note(auto_precision)]
  )
  for line in fit_notes(cfg, train_ds, built, planned):
    log.note(line)
  predictions = None
  if cfg.predict_costs and writer:  # lstm_jax.runner.costs, before anything trains (report.md)
    cal = calibration(cfg, train_ds, os.path.join(workdir, "calibration.json"), quiet)
    budget = (cfg.train.real_tokens or None, cfg.train.epochs or None)
    predictions = {name: costs.predict(s, cal, *budget) for name, s in built.items()}
  first_done = {name for name, seed in finished if seed == cfg.seed}
  prepared = preflight(built, train_ds, cfg, mesh, first_done, log, planned)
  shared = RowInputs(
    cfg,
    train_ds,
    eval_ds,
    test_ds,
    data_identity=identity,
    workdir=workdir,
    mesh=mesh,
    preemption=preemption,
  )
  runs, curves, histories = [], {}, {}
  for s in range(cfg.seeds):
    seed = cfg.seed + s
    for name in cfg.strategies:
      first = seed == cfg.seed
      row, hist, curve = run_strategy(
        name,
        seed,
        shared,
        log,
        strategy=built[name] if first else None,
        prepared=prepared.get(name) if first else None,
        done=finished.get((name, seed)),
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
  _time_to_targets(runs, curves, cfg)
  meta = _meta(cfg, identity, train_ds, built, invocations)
  meta.update(
    (k, v)
    for k, v in (
      ("auto_buckets", auto_buckets),
      ("auto_batches", auto_batches),
      ("auto_precision", auto_precision),
      ("predictions", predictions),
    )
    if v
  )
  meta.update(_baselines(cfg, train_ds, eval_ds, test_ds, classic=writer))
  if not writer:
    return report.aggregate(runs)
  log.file.close()
  report.write_metrics(os.path.join(workdir, "metrics.jsonl"), histories, curves)
  assert invocations is not None  # the writer keeps the invocation log
  invocations.update("finished")
  meta["total_seconds"] = invocations.total_seconds
  summary = report.write_all(workdir, runs, curves, meta)
  if not quiet:
    print(report.table(summary))
  return summary


def _log_notes(log: report.ProgressLog, cfg, identity: dict, notes: list) -> None:
  """The run's notes about its data, before anything trains (metrics.jsonl and the screen)."""
  for key, n in (identity.get("inferred") or {}).items():  # also in meta.json's data record
    log.note(f"data: {key} {n}, inferred from the data (its largest id + 1; store {key} to set it)")
  for line in filter(None, notes):
    log.note(line)
  for source in (identity, identity.get("eval_source"), identity.get("test_source")):
    if source and source.get("nan_padding_stripped"):
      log.note(
        f"data: trailing NaN padding stripped from {source['nan_padding_stripped']} case(s) of "
        f"{source['path']}"
      )


def _time_to_targets(runs: list[dict], curves: dict, cfg) -> None:
  """Per seed: rows flagged by the guards are left out of the target, which unless set is the
  worst final eval loss among the comparable rows, and are not timed to it (never ranked).
  Classification is timed by accuracy, what improves (its loss may rise while it does): the
  worst final eval accuracy of the comparable rows."""
  for s in range(cfg.seeds):
    seed = cfg.seed + s
    seed_rows = [r for r in runs if r["seed"] == seed]
    guards.mark_comparable(seed_rows, cfg.guards.step_tolerance, cfg.guards.min_steps)
    ranked = [r for r in seed_rows if r["comparable"]] or seed_rows
    target = cfg.target_eval_loss or max(r["eval_loss"] for r in ranked)
    accuracy = ranked[0]["metric"] == "accuracy" and not cfg.target_eval_loss
    key = "eval_metric" if accuracy else "eval_loss"
    target_metric = min(r["eval_metric"] for r in ranked) if accuracy else None
    for r in seed_rows:
      r["target_eval_loss"] = target
      r["target_eval_metric"] = target_metric
      r["time_to_target_seconds"] = (
        report.time_to_target(
          curves[(r["strategy"], seed)], target if target_metric is None else target_metric, key
        )
        if r["comparable"]
        else None
      )


def _meta(cfg, identity: dict, train_ds, built: dict, invocations: Invocations | None) -> dict:
  """meta.json's record of the run: versions, data, config, the length histogram."""
  if "bucket" in cfg.strategy and cfg.strategy.bucket.num_buckets != "auto":
    if "bucket" in built:
      boundaries = built["bucket"].boundaries
    else:
      bucket = strategy_from_config("bucket", train_ds, cfg, cfg.seed)
      boundaries = getattr(bucket, "boundaries")  # a Bucket
  else:
    boundaries = []
  lengths, counts = np.unique(train_ds.lengths, return_counts=True)
  return dict(
    versions=versions(),
    data=identity,
    config=json.loads(cfg.to_json_best_effort()),
    started=invocations.started if invocations else time.strftime("%Y-%m-%d %H:%M:%S"),
    total_seconds=invocations.total_seconds if invocations else None,
    invocations=len(invocations.entries) if invocations else None,
    length_histogram=dict(lengths=lengths.tolist(), counts=counts.tolist()),
    bucket_boundaries=boundaries,
    plots=bool(cfg.plots),
  )


def _baselines(cfg, train_ds, eval_ds, test_ds, *, classic: bool) -> dict:
  """The task's reference figures: a byte model's, or the class baselines (and, once a run,
  the classic ones on the split the rows are scored on)."""
  if metric_of(train_ds) == "bits_per_byte":
    return dict(baselines=baselines.byte_lm(train_ds, eval_ds))
  if metric_of(train_ds) != "accuracy":
    return {}
  out = dict(class_baselines=baselines.classification(train_ds, eval_ds))
  if cfg.classic_baselines.enabled and classic:
    scored_on = "test" if test_ds is not None else "eval"
    out["classic_baselines"] = dict(
      baselines.classic(
        train_ds,
        test_ds if test_ds is not None else eval_ds,
        dtw_window=cfg.classic_baselines.dtw_window,
        rocket_kernels=cfg.classic_baselines.rocket_kernels,
        seed=cfg.seed,
      ),
      split=scored_on,
    )
  return out
