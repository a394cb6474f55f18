"""Reporting for the experiment runner: progress, files, the table and the plots.

Files written into the workdir:
  metrics.jsonl   one line per logged step (and per evaluation), with its strategy and seed
  runs.json       one row per (strategy, seed)
  summary.json    one row per strategy (mean over seeds, plus `<key>_std`: the sample standard
                  deviation over seeds, ddof 1)
  summary.csv     the same rows, flat
  meta.json       versions, data identity, config, bucket boundaries
  report.md       the table and the plots, readable on its own
  *.png           eval loss vs wall time and vs real tokens, tokens/s, padding and compiles,
                  the length histogram with the bucket boundaries
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os

import numpy as np

from lstm_jax.files import atomic_write
from lstm_jax.progress import Progress
from lstm_jax.runner.plots import PLOTS, draw_confusion, plots  # noqa: F401 (re-exported)
from lstm_jax.runner.reading import (  # noqa: F401 (re-exported: the report's reading)
  _fmt,
  baseline_lines,
  by_accuracy,
  class_baseline_lines,
  classic_baseline_lines,
  overfit_lines,
  quality_levels,
  quality_table,
  reading,
  time_to_target,
)


def _mean(order: int) -> dict:
  """A Row field's metadata: averaged over seeds in summary.json (with a `<key>_std`), in
  column `order`."""
  return dict(summary_order=order)


# Fields that default to None are set once every row of the seed has run (guards, the target).


@dataclasses.dataclass
class Row:
  """One strategy and seed's result: the record results/<row>.json, runs.json and (averaged over
  seeds, `aggregate`) summary.json hold, in this order. Built by `row.run_strategy`; the
  last four fields are set when every row of its seed has run (`guards.mark_comparable`, the
  target). `NUMERIC_KEYS`, the keys averaged over seeds, are the fields marked so here."""

  strategy: str
  seed: int
  compiles: dict  # {"train": shapes compiled, "eval": ...}
  compile_seconds: float = dataclasses.field(metadata=_mean(0))
  eval_compile_seconds: float = dataclasses.field(metadata=_mean(1))
  cache_loads: dict  # executables loaded from lstm_jax's executable cache, train and eval
  shapes: int  # the strategy's train shapes
  steps: int = dataclasses.field(metadata=_mean(16))
  batch_settings: dict  # what the strategy resolved (batch sizes, boundaries, ...)
  real_tokens: int = dataclasses.field(metadata=_mean(5))
  computed_tokens: int = dataclasses.field(metadata=_mean(6))
  padding_fraction: float = dataclasses.field(metadata=_mean(7))
  tokens_per_second: float = dataclasses.field(metadata=_mean(8))
  wall_seconds: float = dataclasses.field(metadata=_mean(9))  # the row's clock (row.RowClock)
  eval_loss: float = dataclasses.field(metadata=_mean(11))
  eval_metric: float = dataclasses.field(metadata=_mean(12))
  metric: str  # what eval_metric is (accuracy, bits_per_byte, ...)
  step_memory_bytes: int = dataclasses.field(metadata=_mean(13))
  step_peak_bytes: int = dataclasses.field(metadata=_mean(14))
  peak_rss_bytes: int = dataclasses.field(metadata=_mean(15))
  devices: int
  processes: int
  resumed_from_step: int | None
  background_compiles: int
  first_step_seconds: float | None = dataclasses.field(metadata=_mean(2))
  compiles_done_seconds: float = dataclasses.field(metadata=_mean(3))
  compile_wait_seconds: float = dataclasses.field(metadata=_mean(4))
  # Sequence-level classification: the final model's scores class by class on the held-out
  # split (`baselines.class_scores`, from `evaluation.predict`; its compiles in `classes`), or None.
  balanced_accuracy: float | None = dataclasses.field(default=None, metadata=_mean(18))
  classes: dict | None = None
  # config.data.test_path: the row's model selected on the eval (validation) split, scored once
  # on the test split at the row's end: the checkpoint of the best eval metric (accuracy for
  # classification, else the lowest eval loss), at step `selected_step`
  test_loss: float | None = dataclasses.field(default=None, metadata=_mean(19))
  test_metric: float | None = dataclasses.field(default=None, metadata=_mean(20))
  test_classes: dict | None = None
  selected_step: int | None = None
  selected_eval_metric: float | None = None
  # what the train and eval steps ran: {"train": "scan" | "cudnn" | "reference", "eval": ...}
  # (config.model.backend, backend.step_backend); None in results written before it was recorded
  backend: dict | None = None
  comparable: bool | None = None
  not_comparable: str | None = None
  target_eval_loss: float | None = dataclasses.field(default=None, metadata=_mean(17))
  # classification: the target is an eval accuracy (what improves), the worst final one of
  # the seed's comparable rows, and time_to_target_seconds is the time to reach it
  target_eval_metric: float | None = dataclasses.field(default=None, metadata=_mean(21))
  time_to_target_seconds: float | None = dataclasses.field(default=None, metadata=_mean(10))

  AFTER = (
    "comparable",
    "not_comparable",
    "target_eval_loss",
    "target_eval_metric",
    "time_to_target_seconds",
  )

  def to_dict(self, finished: bool = True) -> dict:
    """The row as JSON holds it; `finished=False` leaves out the fields set after the seed's
    rows have all run (results/<row>.json is written before they are)."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return d if finished else {k: v for k, v in d.items() if k not in self.AFTER}

  @classmethod
  def from_dict(cls, d: dict) -> Row:
    """A row read back (results/<row>.json); cache_loads is absent from results made before it
    existed. Unknown keys are an error: a file from another version of the runner."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"keys {unknown} are not fields of a row")
    return cls(**dict(dict(cache_loads={}), **d))


NUMERIC_KEYS = tuple(
  f.name
  for f in sorted(
    (f for f in dataclasses.fields(Row) if "summary_order" in f.metadata),
    key=lambda f: f.metadata["summary_order"],
  )
)


class ProgressLog:
  """A progress bar per row (`lstm_jax.progress.Progress`: rich's in a terminal, a plain line
  every `every_seconds` elsewhere) showing real tokens, tokens/s, loss and the last evaluation,
  and the metrics.jsonl file."""

  def __init__(self, path: str, quiet: bool = False, stream=None, every_seconds: float = 30.0):
    self.file = open(path, "a", encoding="utf-8")
    self.bar = Progress(stream=stream, quiet=quiet, every_seconds=every_seconds)
    self.name, self.seed, self.total = "", 0, 1
    self.tokens, self.seconds, self.loss, self.eval_loss = 0, 0.0, math.nan, math.nan
    self.metric, self.eval_metric = "", math.nan

  def start(self, name: str, seed: int, total_tokens: int, strategy, metric: str = "") -> None:
    self.name, self.seed, self.metric, self.eval_metric = name, seed, metric, math.nan
    self.total = total_tokens or int(strategy.plan(0).real_tokens.sum())
    self.tokens, self.seconds = 0, 0.0
    self.loss = self.eval_loss = math.nan  # not the previous row's
    self.bar.start(f"{name:>13} s{seed}", self.total)

  def _write(self, rec: dict) -> None:
    self.file.write(metrics_line(self.name, self.seed, rec))

  def step(self, rec: dict) -> None:
    self._write(dict(kind="train", **rec))
    self.tokens += rec["real_tokens"]
    self.seconds += rec["step_seconds"]
    self.loss = rec["loss"]
    self.bar.update(self.tokens, self.text())

  def eval(self, rec: dict) -> None:
    self._write(dict(kind="eval", **rec))
    self.eval_loss = rec["eval_loss"]
    self.eval_metric = rec.get("eval_metric", math.nan)
    self.bar.update(self.tokens, self.text())

  def text(self) -> str:
    """What the bar shows beside it: real tokens, tokens/s, loss, the last evaluation."""
    return (
      f"{self.tokens / 1e3:8.1f}k tok {self.tokens / max(self.seconds, 1e-9):9.0f} tok/s "
      f"loss {self.loss:7.4f} eval {self.eval_loss:7.4f}"
      + (f" acc {100 * self.eval_metric:5.1f}%" if self.metric == "accuracy" else "")
    )

  def resumed(self, real_tokens: int, seconds: float, last_eval: dict | None = None) -> None:
    """Training picked up from a checkpoint: the bar continues from there (and shows the last
    evaluation before it)."""
    self.tokens, self.seconds = real_tokens, seconds
    self.eval_loss = (last_eval or {}).get("eval_loss", math.nan)
    self.eval_metric = (last_eval or {}).get("eval_metric", math.nan)
    self._write(dict(kind="resume", real_tokens=real_tokens))
    self.note(
      f"{self.name} seed {self.seed}: resumed from a checkpoint at {real_tokens:,} real tokens"
    )
    self.bar.start(self.bar.description, self.total, done=real_tokens)
    self.bar.update(self.tokens, self.text())

  def note(self, text: str) -> None:
    self.bar.note(text)

  def end(self) -> None:
    self.bar.end()
    self.file.flush()


def metrics_line(strategy: str, seed: int, rec: dict) -> str:
  """One metrics.jsonl line: the record with its strategy and seed."""
  return json.dumps(dict(strategy=strategy, seed=seed, **rec)) + "\n"


def write_metrics(path: str, histories: dict, curves: dict) -> None:
  """Rewrites metrics.jsonl from whole histories: one line per step and per evaluation, exactly
  once each, also when a run was killed and resumed (the live file may repeat the steps between
  the last checkpoint and the kill)."""
  with atomic_write(path) as f:
    for (name, seed), hist in histories.items():
      for rec in hist:
        f.write(metrics_line(name, seed, dict(kind="train", **rec)))
      for rec in curves[(name, seed)]:
        f.write(metrics_line(name, seed, dict(kind="eval", **rec)))


def aggregate(runs: list[dict]) -> list[dict]:
  """One row per strategy: means over seeds, `<key>_std` sample standard deviations (ddof 1),
  compiles from the first seed, cache_loads (executables loaded from lstm_jax's executable
  cache) summed over the seeds."""
  rows = []
  for name in dict.fromkeys(r["strategy"] for r in runs):
    group = [r for r in runs if r["strategy"] == name]
    row = dict(
      strategy=name,
      seeds=len(group),
      metric=group[0]["metric"],
      compiles=group[0]["compiles"],
      shapes=group[0]["shapes"],
      devices=group[0]["devices"],
    )
    for k in NUMERIC_KEYS:
      vals = [r[k] for r in group if r.get(k) is not None]
      row[k] = float(np.mean(vals)) if vals else None
      # the sample standard deviation (ddof 1): what "±" means in the report
      row[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0 if vals else None
    row["time_to_target_reached"] = sum(r.get("time_to_target_seconds") is not None for r in group)
    # not comparable if any seed's row is not (lstm_jax.runner.guards), with each distinct reason
    reasons = dict.fromkeys(
      f"seed {r['seed']}: {r['not_comparable']}" if len(group) > 1 else r["not_comparable"]
      for r in group
      if r.get("not_comparable")
    )
    row["comparable"] = not reasons
    row["not_comparable"] = "; ".join(reasons) or None
    row["batch_settings"] = group[0].get("batch_settings")
    row["backend"] = group[0].get("backend")  # a config's: the same for every seed
    loads = [r.get("cache_loads") or {} for r in group]  # absent in results from before it existed
    row["cache_loads"] = {k: sum(d.get(k, 0) for d in loads) for k in ("train", "eval")}
    row["classes"] = _classes_over_seeds([r.get("classes") for r in group])
    tested = [r["test_classes"]["balanced_accuracy"] for r in group if r.get("test_classes")]
    row["test_balanced_accuracy"] = float(np.mean(tested)) if tested else None
    row["test_classes"] = _classes_over_seeds([r.get("test_classes") for r in group])
    row["selected_steps"] = [r.get("selected_step") for r in group]  # per seed
    rows.append(row)
  return rows


def backend_words(backend: dict | None) -> str:
  """A row's backends for its batch-settings line: nothing when both steps ran the scan (every
  CPU row), else "; train step cudnn, eval step cudnn"."""
  if not backend or set(backend.values()) == {"scan"}:
    return ""
  return f"; train step {backend['train']}, eval step {backend['eval']}"


def _classes_over_seeds(scores: list[dict | None]) -> dict | None:
  """The seeds' class scores together: confusion matrices summed, each class's recall the mean
  over the seeds whose held-out split has that class."""
  given = [c for c in scores if c]
  if not given:
    return None
  recall = []
  for per_class in zip(*(c["recall"] for c in given)):
    present = [r for r in per_class if r is not None]
    recall.append(float(np.mean(present)) if present else None)
  supports = [c["support"] for c in given]
  return dict(
    seeds=len(given),
    level=given[0].get("level", "sequence"),
    recall=recall,
    confusion=np.sum([c["confusion"] for c in given], axis=0).tolist(),
    # every seed scores the same held-out split (data.split_seed): its counts once
    support=supports[0] if all(s == supports[0] for s in supports) else None,
  )


def class_lines(summary: list[dict], plots: bool, data: dict | None = None) -> list[str]:
  """The report's section on classification, row by row: accuracy, balanced accuracy and each
  class's recall on the held-out split (per sequence, or per step for step-level labels), the
  classes by the data's names (and how a held-out file's names were matched), and the
  confusion matrices' plot."""
  rows = [r for r in summary if r.get("classes")]
  if not rows:
    return []
  data = data or {}
  # the data's class names in id order: a list (.ts, npz), or {name: count} (stdlib_packages)
  names = list(data.get("classes") or []) or None
  n = len(rows[0]["classes"]["recall"])
  shown = min(n, 12)
  unit = "steps" if rows[0]["classes"].get("level") == "step" else "sequences"
  out = [
    "## Classes (held-out split, the final model)",
    "",
    "Balanced accuracy is the mean of the recalls of the classes present (always answering one "
    f"class scores 1 / their number); recall per class is the share of its held-out {unit} "
    "classified as it"
    + (" (the first 12 classes)" if n > shown else "")
    + ". From `evaluation.predict` on each held-out sequence whole"
    + (", every real step scored" if unit == "steps" else "")
    + "; over seeds, the mean.",
    "",
    "| strategy | accuracy | balanced accuracy | "
    + " | ".join(f"recall {names[c] if names else c}" for c in range(shown))
    + " |",
    "|---|---|---|" + "---|" * shown,
  ]
  for r in rows:
    recall = r["classes"]["recall"][:shown]
    out.append(
      f"| {r['strategy']} | {_fmt(r['eval_metric'])} | {_fmt(r['balanced_accuracy'])} | "
      + " | ".join(_fmt(x) for x in recall)
      + " |"
    )
  support = rows[0]["classes"]["support"]
  if support is not None:
    out += ["", f"Held-out {unit} per class: {support[:shown]}."]
  if names:
    out += [
      "",
      "Classes by the training data's names: "
      + ", ".join(f"{i} = {c}" for i, c in enumerate(names))
      + ".",
    ]
  for key in ("eval_source", "test_source"):
    given = (data.get(key) or {}).get("class_ids")
    if given and list(given.values()) != list(range(len(given))):
      out.append(
        f"{os.path.basename(data[key].get('path', key))} lists its classes in another order"
        f" or a subset; its labels were matched by name: "
        + ", ".join(f"{c} -> {i}" for c, i in given.items())
        + "."
      )
  out += [""]
  if plots:
    out += ["![confusion matrices](confusion.png)", ""]
  return out


def held_apart_lines(summary: list[dict], meta: dict) -> list[str]:
  """The test split's section (config.data.test_path): each row's final model scored once on
  the sequences kept apart from training and from the eval split it watched."""
  rows = [r for r in summary if r.get("test_loss") is not None]
  if not rows:
    return []
  metric = rows[0]["metric"]
  bal = any(r.get("test_balanced_accuracy") is not None for r in rows)
  selected = any(s is not None for r in rows for s in r.get("selected_steps") or [])
  how = (
    "with each row's model selected on the eval (validation) split: the checkpoint of its best "
    f"eval {'accuracy' if metric == 'accuracy' else 'loss'}, at the step named (per seed)"
    if selected
    else "with each row's final model"
  )
  out = [
    "## Test split (kept apart)",
    "",
    f"{(meta.get('data') or {}).get('test_sequences', '?')} sequences from "
    f"`{((meta.get('config') or {}).get('data') or {}).get('test_path', '')}` "
    f"(config.data.test_path), scored once, {how}; training and the eval curve never saw "
    "them. Over seeds, the mean ± the sample standard deviation (ddof 1).",
    "",
    f"| strategy | test loss | test {metric} |"
    + (" test balanced accuracy |" if bal else "")
    + (" selected at step |" if selected else ""),
    "|---|---|---|" + ("---|" if bal else "") + ("---|" if selected else ""),
  ]
  for r in rows:
    spread = f" ± {r['test_loss_std']:.3f}" if r.get("test_loss_std") else ""
    steps = r.get("selected_steps") or []
    out.append(
      f"| {r['strategy']} | {r['test_loss']:.4f}{spread} | {_fmt(r['test_metric'])} |"
      + (f" {_fmt(r.get('test_balanced_accuracy'))} |" if bal else "")
      + (f" {', '.join(str(s) for s in steps if s is not None) or '-'} |" if selected else "")
    )
  return out + [""]


COLUMNS = (
  ("strategy", "strategy"),
  ("steps", "steps"),
  ("compiles", "compiles (train/eval)"),
  ("compile_seconds", "compile s"),
  ("first_step_seconds", "1st step s"),
  ("compiles_done_seconds", "compiled by s"),
  ("padding_fraction", "padding"),
  ("tokens_per_second", "real tok/s"),
  ("wall_seconds", "wall s"),
  ("time_to_target_seconds", "s to target"),
  ("eval_loss", "eval loss"),
  ("eval_metric", "metric"),
  ("step_memory_bytes", "step MiB"),
)


def _cells(row: dict) -> list[str]:
  out = []
  for key, _ in COLUMNS:
    v = row.get(key)
    if key == "strategy":
      out.append(str(v) + ("" if row.get("comparable", True) else " *"))
    elif key == "steps":
      out.append(f"{v:.0f}" if v is not None else "-")
    elif key == "compiles":
      out.append(f"{v['train']}/{v['eval']}" if isinstance(v, dict) else str(v))
    elif key == "step_memory_bytes":
      v = row.get("step_peak_bytes") or v  # the guard's figure; results from before it: scratch
      out.append(_fmt(v / 2**20, 1) if v else "-")
    elif key == "padding_fraction":
      out.append(f"{100 * v:.1f}%" if v is not None else "-")
    elif key == "eval_metric":
      std = row.get("eval_metric_std")
      out.append(f"{v:.3f} {row['metric']}" + (f" ±{std:.3f}" if std else ""))
    elif key in ("eval_loss", "tokens_per_second", "wall_seconds") and row.get(f"{key}_std"):
      nd = {"eval_loss": 3, "tokens_per_second": 0, "wall_seconds": 1}[key]
      out.append(f"{v:,.{nd}f} ±{row[key + '_std']:,.{nd}f}")
    else:
      out.append(_fmt(v, 2 if key.endswith("seconds") else 3))
  return out


def not_comparable_notes(rows: list[dict]) -> list[str]:
  """One line per row the guards flagged: why it is not comparable (the table marks it *)."""
  return [
    f"* {r['strategy']}: not comparable, {r['not_comparable']}; left out of the target "
    f"and never ranked."
    for r in rows
    if not r.get("comparable", True)
  ]


def table(rows: list[dict], markdown: bool = False) -> str:
  """The summary table, for the terminal or (markdown=True) for report.md, with a line under it
  for each row that is not comparable."""
  heads = [h for _, h in COLUMNS]
  cells = [_cells(r) for r in rows]
  notes = not_comparable_notes(rows)
  if markdown:
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
    return "\n".join(
      lines + ["| " + " | ".join(c) + " |" for c in cells] + ([""] + notes if notes else [])
    )
  widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]

  def fmt(cs):
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cs, widths)))

  return "\n".join([fmt(heads), fmt(["-" * w for w in widths])] + [fmt(c) for c in cells] + notes)


def predictions_table(summary: list[dict], predictions: dict | None) -> list[str]:
  """Markdown: what lstm_jax.runner.costs predicted before anything trained
  (experiments/recommend.py's figures) against each row's measured steps, compiles, padding
  and wall seconds (mean over seeds)."""
  if not predictions:
    return []
  lines = [
    "## Predicted before training, against the run",
    "",
    "`lstm_jax.runner.costs` (experiments/recommend.py) from this machine's calibration, made "
    "before any row trained: steps, shapes and padding are counted from each strategy's plans; "
    "compile and train seconds are modelled (compile seconds per shape; a step of [B, T] takes "
    "T x (alpha + beta x B)). *wall s* is the row's measured train clock, compiles included "
    "(mean over seeds).",
    "",
    "| strategy | steps (pred / run) | compiles (pred / run) | padding (pred / run) "
    "| total s predicted | wall s | predicted / wall |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in summary:
    p = predictions.get(r["strategy"])
    if p is None:
      continue
    compiles = r["compiles"]["train"] if isinstance(r["compiles"], dict) else r["compiles"]
    lines.append(
      f"| {r['strategy']} | {p['steps']} / {r['steps']:.0f} | {p['shapes']} / {compiles} | "
      f"{100 * p['padding_fraction']:.1f}% / {100 * r['padding_fraction']:.1f}% | "
      f"{p['total_seconds']:.1f} | {r['wall_seconds']:.1f} | "
      f"{p['total_seconds'] / r['wall_seconds']:.2f} |"
    )
  return lines + [""]


def write_all(workdir: str, runs: list[dict], curves: dict, meta: dict) -> list[dict]:
  """Writes runs.json, summary.json/.csv, meta.json, the plots and report.md; returns summary.
  Every file is made in memory first, then each written whole (`atomic_write`): a render that
  fails leaves the files as they were, and a kill mid-way leaves each old or new, never half."""
  summary = aggregate(runs)
  files = {
    "runs.json": runs,
    "summary.json": summary,
    "curves.json": [dict(strategy=k[0], seed=k[1], points=v) for k, v in curves.items()],
    "meta.json": meta,
  }
  files = {name: json.dumps(obj, indent=1) for name, obj in files.items()}
  table = io.StringIO(newline="")
  flat = [
    dict(
      r,
      compiles=r["compiles"]["train"],
      eval_compiles=r["compiles"]["eval"],
      cache_loads=r["cache_loads"]["train"],
      eval_cache_loads=r["cache_loads"]["eval"],
      batch_settings=json.dumps(r.get("batch_settings")),
      classes=json.dumps(r.get("classes")),
      test_classes=json.dumps(r.get("test_classes")),
      selected_steps=json.dumps(r.get("selected_steps")),
    )
    for r in summary
  ]
  writer = csv.DictWriter(table, fieldnames=list(flat[0]))
  writer.writeheader()
  writer.writerows(flat)
  files["summary.csv"] = table.getvalue()
  if meta.get("plots", True):  # config.plots
    files.update(
      plots(summary, curves, meta["length_histogram"], meta.get("bucket_boundaries", []))
    )
  notes_path = os.path.join(workdir, "notes.md")  # a hand-written reading, kept on re-rendering
  notes = open(notes_path).read() if os.path.exists(notes_path) else ""
  files["report.md"] = markdown_report(summary, meta, notes, curves)
  for name, content in files.items():
    binary = isinstance(content, bytes)
    with atomic_write(os.path.join(workdir, name), "wb" if binary else "w", newline="") as f:
      f.write(content)
  return summary


def markdown_report(
  summary: list[dict], meta: dict, notes: str = "", curves: dict | None = None
) -> str:
  v, d, cfg = meta["versions"], meta["data"], meta["config"]
  target = summary[0].get("target_eval_loss")
  quality = "eval loss"
  if by_accuracy(summary):
    target, quality = summary[0]["target_eval_metric"], "eval accuracy"
  lines = [
    f"# Strategy comparison: {d.get('source')} ({meta['started']})",
    "",
    f"Same model ({cfg['model'].get('cell', 'lstm').upper()} H={cfg['model']['hidden_size']}, "
    f"{cfg['model']['num_layers']} layer(s)), "
    f"optimizer (Adam {cfg['optimizer']['learning_rate']}"
    + (
      f", cosine decay to {cfg['optimizer']['final_fraction']:g}x over each row's steps"
      if cfg["optimizer"].get("schedule") == "cosine"
      else ""
    )
    + f"), data split and seed for every row; "
    f"each trained on {cfg['train']['real_tokens'] or 'all'} real tokens "
    f"({cfg['train']['epochs'] or '-'} epochs max), {cfg['seeds']} seed(s); evaluated on the "
    f"held-out split with the same exact masked forward"
    + (f" (split: {d['split']})." if d.get("split") else "."),
    "",
    table(summary, markdown=True),
    "",
    f"*steps*: optimizer steps (rows take about train.tokens_per_step="
    f"{cfg['train'].get('tokens_per_step', '-')} real tokens each, so equal budgets mean "
    f"equal steps; a row more than ±{100 * cfg.get('guards', {}).get('step_tolerance', 0):.0f}%"
    f" from the median row is marked * and not ranked). "
    f"*padding*: share of computed steps that are padding. *real tok/s*: steady state, "
    f"compile steps excluded. *compile s*: seconds spent compiling train steps (several at "
    f"once count each). *1st step s* and *compiled by s*: the row's clock when its first step "
    f"ended and when its last train shape finished compiling (config.background_compiles="
    f"{cfg.get('background_compiles', 0)}: "
    + (
      "shapes compile in the background in the order training meets them, the first batch's first"
      if cfg.get("background_compiles")
      else "each shape compiles when training first meets it"
    )
    + "). *wall s*: train steps including compiles (evaluation excluded). "
    f"*s to target*: wall seconds until the {quality} first reached the target, interpolated "
    f"between evaluations: per seed, the worst final {quality} of that seed's comparable rows"
    + (" unless configured" if quality == "eval loss" else "")
    + (f" (mean over seeds {target:.4f})" if cfg["seeds"] > 1 else f" ({target:.4f})")
    + ". *step MiB*: XLA's memory for the largest train step (scratch, arguments "
    "and outputs: what the memory guard checks)."
    + (" *±*: the sample standard deviation over the seeds (ddof 1)." if cfg["seeds"] > 1 else "")
    + f" Peak RSS of the process: "
    f"{max(r['peak_rss_bytes'] for r in summary) / 2**20:,.0f} MiB.",
    "",
    *baseline_lines(meta.get("baselines")),
    *class_baseline_lines(summary, meta.get("class_baselines")),
    *classic_baseline_lines(summary, meta.get("classic_baselines")),
    *class_lines(summary, meta.get("plots", True), d),
    *held_apart_lines(summary, meta),
    *quality_table(summary, curves or {}, meta.get("baselines")),
    *predictions_table(summary, meta.get("predictions")),
    "## Reading",
    "",
    *reading(summary, meta.get("baselines")),
    *overfit_lines(summary, curves or {}),
    "",
    *([notes.strip(), ""] if notes else []),
    "## Batch settings",
    "",
    *(
      f"- {r['strategy']}: "
      + ", ".join(f"{k} {v}" for k, v in (r.get("batch_settings") or {}).items())
      + backend_words(r.get("backend"))
      for r in summary
    ),
    "",
    *(
      [
        "![eval loss vs wall time](eval_loss_vs_time.png)",
        "![eval loss vs real tokens](eval_loss_vs_tokens.png)",
        "",
        "![tokens per second](tokens_per_second.png)",
        "![padding and compiles](padding_and_compiles.png)",
        "",
        "![length histogram](length_histogram.png)",
      ]
      if meta.get("plots", True)
      else ["No plots: this run set `--config.plots=False`."]
    ),
    "",
    "## Data",
    "",
    "```",
    json.dumps(d, indent=1),
    "```",
    "",
    "## Versions",
    "",
    "```",
    json.dumps(v, indent=1),
    "```",
    "",
    f"Run time: {meta['total_seconds']:.0f} s"
    + (
      f", over {meta['invocations']} invocations of the runner (preempted and resumed, or "
      f"rendered again)."
      if (meta.get("invocations") or 1) > 1
      else "."
    ),
    "",
  ]
  return "\n".join(lines)
