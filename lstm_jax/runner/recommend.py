"""What the runner chooses from the data before anything trains: batch settings that follow the
data (train.tokens_per_step=0, train.evals), num_buckets="auto" from this machine's calibrated
costs, the lines saying which settings do not fit the data, and the recommender
(experiments/recommend.py)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from typing import Any

import ml_collections
import numpy as np

from lstm_jax import batching, host
from lstm_jax.data import RaggedDataset
from lstm_jax.environment import versions
from lstm_jax.runner import config, costs, guards
from lstm_jax.runner.build import new_train_state, strategy_from_config
from lstm_jax.runner.data import split_data
from lstm_jax.runner.precision import precision_note, resolve_auto_precision
from lstm_jax.workdir import WorkdirLock


def calibration(
  cfg: ml_collections.ConfigDict,
  train_ds: RaggedDataset,
  path: str | None,
  quiet: bool = True,
  save: bool = True,
) -> costs.Calibration:
  """This machine's compile and step costs for cfg's model (`costs.calibrate`), read from
  `path` if it was measured there for the same model, CPU and versions, else measured (a few
  seconds) and saved there (unless `save` is False: the runner saves it only once the
  workdir's settings check has passed)."""
  key = costs.calibration_key(cfg, train_ds)
  cal = costs.Calibration.load(path, key) if path else None
  if cal is None:
    state = new_train_state(cfg, train_ds, cfg.seed, 1, right_padded=False)  # the scan's costs
    shapes = costs.calibration_shapes(train_ds, cfg.train.tokens_per_step)
    if not quiet:
      print(f"calibrating compile and step costs on {shapes} ...", flush=True)
    cal = costs.calibrate(state, train_ds, shapes, key)
    if path and save:
      cal.save(path)
  return cal


def resolve_auto_buckets(
  cfg: ml_collections.ConfigDict,
  train_ds: RaggedDataset,
  workdir: str | None,
  devices: int = 1,
  quiet: bool = True,
  save: bool = True,
) -> tuple[ml_collections.ConfigDict, dict | None]:
  """cfg with strategy.bucket.num_buckets="auto" replaced by the count `costs` predicts trains
  the budget first (and the choice's record for meta.json), or cfg as it is."""
  if cfg.strategy.bucket.num_buckets != "auto" or "bucket" not in cfg.strategies:
    return cfg, None
  path = os.path.join(workdir, "calibration.json") if workdir else None
  cal = calibration(cfg, train_ds, path, quiet, save)
  n, table = costs.choose_num_buckets(train_ds, cfg, cal, cfg.seed, batch_multiple=devices)
  if not quiet:
    print(
      f"num_buckets=auto: {n} buckets, predicted "
      f"{next(r for r in table if r['num_buckets'] == n)['total_seconds']:.1f} s "
      f"(compile {cal.compile_seconds:.2f} s per shape)",
      flush=True,
    )
  cfg = copy.deepcopy(cfg)
  with cfg.unlocked():
    cfg.strategy.bucket.num_buckets = n
  return cfg, dict(chosen=n, predictions=table, calibration=dataclasses.asdict(cal))


MOST_STEPS_PER_EPOCH = 32  # train.tokens_per_step=0 tries 32, 31, ... steps an epoch


def resolve_auto_batches(
  cfg: ml_collections.ConfigDict, train_ds: RaggedDataset, devices: int = 1
) -> tuple[ml_collections.ConfigDict, dict | None]:
  """cfg with its batch-size settings that follow the data resolved (and their record for
  meta.json and the log), or cfg as it is:

  - train.tokens_per_step=0: the real tokens a step for the most steps an epoch (at most
    MOST_STEPS_PER_EPOCH, at least 2) at which every row's planned steps an epoch agree within
    half of guards.step_tolerance, so the rows stay comparable however small the training
    split (a 50-sequence benchmark gets about 4 large steps an epoch; a larger one, 32);
  - train.evals > 0: train.eval_every_tokens set so the run evaluates about that many times.
  """
  if cfg.train.tokens_per_step and not cfg.train.evals:
    return cfg, None
  cfg, record = copy.deepcopy(cfg), dict[str, Any]()
  total = int(train_ds.num_steps)
  if not cfg.train.tokens_per_step:
    tolerance, closest = cfg.guards.step_tolerance / 2, None
    for k in range(MOST_STEPS_PER_EPOCH, 1, -1):
      with cfg.unlocked():
        cfg.train.tokens_per_step = -(-total // k)
      per_epoch = {
        name: len(
          guards.planned_steps(
            strategy_from_config(name, train_ds, cfg, cfg.seed, batch_multiple=devices), None, 1
          )
        )
        for name in cfg.strategies
      }
      median = float(np.median(list(per_epoch.values())))
      spread = max(abs(n / median - 1) for n in per_epoch.values())
      if closest is None or spread < closest[0]:
        closest = (spread, k, cfg.train.tokens_per_step, per_epoch)
      if spread <= tolerance:
        break
    assert closest is not None  # the loop ran at least once
    _, k, tokens, per_epoch = closest  # the first that agrees, else the closest to agreeing
    with cfg.unlocked():
      cfg.train.tokens_per_step = tokens
    record.update(
      tokens_per_step=tokens,
      steps_per_epoch=k,
      planned_per_epoch=per_epoch,
      agreed=bool(closest[0] <= tolerance),
    )
  if cfg.train.evals:
    budget = cfg.train.real_tokens or cfg.train.epochs * total
    with cfg.unlocked():
      cfg.train.eval_every_tokens = max(1, -(-budget // cfg.train.evals))
    record["eval_every_tokens"] = cfg.train.eval_every_tokens
  return cfg, record


def auto_batches_note(record: dict | None, cfg: ml_collections.ConfigDict) -> str | None:
  """The log's line for what `resolve_auto_batches` chose."""
  if not record:
    return None
  said = []
  if "tokens_per_step" in record:
    per = record["planned_per_epoch"]
    said.append(
      f"train.tokens_per_step=0 (auto): {record['tokens_per_step']:,} real tokens a step, "
      f"about {record['steps_per_epoch']} steps an epoch (planned: "
      + ", ".join(f"{k} {v}" for k, v in per.items())
      + (
        f"; the most steps an epoch at which the rows agree within "
        f"{50 * cfg.guards.step_tolerance:g}%)"
        if record["agreed"]
        else f"; no step size makes them agree within {50 * cfg.guards.step_tolerance:g}%: "
        f"the closest)"
      )
    )
  if "eval_every_tokens" in record:
    said.append(
      f"train.evals={cfg.train.evals}: an evaluation every {record['eval_every_tokens']:,} "
      f"real tokens"
    )
  return "; ".join(said)


def fit_notes(
  cfg: ml_collections.ConfigDict,
  train_ds: RaggedDataset,
  built: dict[str, batching.Strategy],
  planned: dict[str, int],
) -> list[str]:
  """Before training, one line for each setting that does not fit the data, with what to set:
  a step larger than the training split, truncated gradients on sequence-level labels, and
  rows whose planned steps differ by more than guards.step_tolerance (not comparable)."""
  notes, total = [], int(train_ds.num_steps)
  if cfg.train.tokens_per_step > total:
    notes.append(
      f"train.tokens_per_step={cfg.train.tokens_per_step:,} is more than the training split's "
      f"{total:,} real tokens: every step holds the whole split. Set train.tokens_per_step=0 "
      f"to choose it from the data (configs/compare.py:classify does)."
    )
  longest = int(np.max(train_ds.lengths))
  chunks = {  # tbptt's chunk length, vbptt's base length
    name: getattr(s, "chunk_length", None) or getattr(s, "base_length", 0)
    for name, s in built.items()
    if s is not None and s.carries_state
  }
  cut = [f"{name} ({k}-step chunks)" for name, k in chunks.items() if longest > (k or 0)]
  if train_ds.target_level == "sequence" and cut and not cfg.truncation_ok:
    notes.append(
      f"{', '.join(cut)} truncate the gradient on sequence-level labels (sequences up to "
      f"{longest:,} steps): a label's gradient reaches only its last chunk. For exact gradients "
      f"use pad, bucket or pack (configs/compare.py:classify); config.truncation_ok=True "
      f"keeps them without this note."
    )
  if len(planned) > 1:
    median = float(np.median(list(planned.values())))
    off = {n: k for n, k in planned.items() if abs(k / median - 1) > cfg.guards.step_tolerance}
    if off:
      notes.append(
        "not comparable as set: "
        + ", ".join(f"{n} plans {k:,} steps" for n, k in off.items())
        + f" against the median {median:,.0f} (±{100 * cfg.guards.step_tolerance:.0f}% allowed). "
        f"Set train.tokens_per_step=0 to choose the steps so the rows agree, or see each row's "
        f"hint below."
      )
  return notes


def run_recommender(cfg: ml_collections.ConfigDict, workdir: str | None = None) -> dict:
  """The recommender (experiments/recommend.py): for each of cfg's strategies, `costs.predict`
  on this machine's calibration for cfg's data and budget, and the strategy `costs.recommend`
  picks, with its reason."""
  config.validate_config(cfg)
  host.tune_malloc(cfg.tune_malloc)
  with WorkdirLock(workdir) if workdir else contextlib.nullcontext():
    return _recommend(cfg, workdir)


def _recommend(cfg: ml_collections.ConfigDict, workdir: str | None) -> dict:
  train_ds, _, identity = split_data(cfg)
  cfg, _ = resolve_auto_batches(cfg, train_ds)
  cfg, precision = resolve_auto_precision(cfg, train_ds, workdir, quiet=False)
  if precision:
    print(precision_note(precision), flush=True)
  cfg, auto = resolve_auto_buckets(cfg, train_ds, workdir, quiet=False)
  cal = calibration(
    cfg, train_ds, os.path.join(workdir, "calibration.json") if workdir else None, quiet=False
  )
  built = {name: strategy_from_config(name, train_ds, cfg, cfg.seed) for name in cfg.strategies}
  predictions = [
    costs.predict(built[name], cal, cfg.train.real_tokens or None, cfg.train.epochs or None)
    for name in cfg.strategies
  ]
  # what the runner would say before training: rows whose steps differ are not comparable, ...
  notes = fit_notes(cfg, train_ds, built, {p["strategy"]: p["steps"] for p in predictions})
  exact = train_ds.target_level == "sequence" and not cfg.truncation_ok
  best, why = costs.recommend(predictions, exact_gradients=exact)
  by_budget = []  # how num_buckets="auto" moves with the budget: 0.1x, 1x and 10x cfg's
  if "bucket" in cfg.strategies and cfg.train.real_tokens:
    for factor in (0.1, 1, 10):
      scaled = copy.deepcopy(cfg)
      with scaled.unlocked():
        scaled.train.real_tokens = int(cfg.train.real_tokens * factor)
        scaled.train.epochs = 0
      n, rows = costs.choose_num_buckets(train_ds, scaled, cal, cfg.seed)
      by_budget.append(
        dict(
          real_tokens=scaled.train.real_tokens,
          num_buckets=n,
          total_seconds={r["num_buckets"]: r["total_seconds"] for r in rows},
        )
      )
  return dict(
    recommended=best,
    reason=why,
    notes=notes,
    predictions=predictions,
    auto_buckets_by_budget=by_budget,
    calibration=dataclasses.asdict(cal),
    auto_buckets=auto,
    auto_precision=precision,
    data=identity,
    budget=dict(real_tokens=cfg.train.real_tokens, epochs=cfg.train.epochs),
    versions=versions(),
  )


def recommendation_text(result: dict) -> str:
  """The recommender's table and its recommendation, for the terminal."""
  heads = ["strategy", "steps", "shapes", "padding", "step MiB", "compile s", "train s", "total s"]
  heads.append("gradients")
  rows = [
    [
      p["strategy"],
      str(p["steps"]),
      str(p["shapes"]),
      f"{100 * p['padding_fraction']:.1f}%",
      f"{p['step_memory_bytes'] / 2**20:,.0f}",
      f"{p['compile_seconds']:.1f}",
      f"{p['train_seconds']:.1f}",
      f"{p['total_seconds']:.1f}",
      "truncated" if p["truncates_gradients"] else "exact",
    ]
    for p in result["predictions"]
  ]
  widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]

  def line(cells):
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

  cal = result["calibration"]
  budget = result["budget"]
  return "\n".join(
    [
      f"Predicted for {budget['real_tokens'] or 'all'} real tokens "
      f"({budget['epochs'] or '-'} epochs max) on this machine (compile "
      f"{cal['compile_seconds']:.2f} s per shape; a step of [B, T] takes "
      f"T x ({1e6 * cal['alpha']:.0f} + {1e6 * cal['beta']:.1f} x B) us):",
      "",
      line(heads),
      line(["-" * w for w in widths]),
      *(line(r) for r in rows),
      "",
      *(
        [
          'num_buckets="auto" by budget: '
          + "; ".join(
            f"{b['real_tokens']:,} real tokens: {b['num_buckets']} buckets "
            f"({b['total_seconds'][b['num_buckets']]:.1f} s predicted; 8 buckets "
            f"{b['total_seconds'].get(8, float('nan')):.1f} s)"
            for b in result["auto_buckets_by_budget"]
          )
          + ".",
          "",
        ]
        if result.get("auto_buckets_by_budget")
        else []
      ),
      f"Recommended: {result['recommended']}. {result['reason']}",
      *(f"Note: {n}" for n in result.get("notes", [])),
    ]
  )
