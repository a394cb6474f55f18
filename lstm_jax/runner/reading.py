"""The report's reading: time to quality (the target, the levels, the table) and the lines that
say what the numbers mean (the baselines, the classic baselines, the class priors, overfitting
rows, the reading's bullets). Each takes the summary rows (`report.aggregate`) and returns
markdown lines; `report.markdown_report` puts them together.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _fmt(v: Any, nd: int = 3) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    if math.isnan(v):
      return "nan"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{nd}f}"
  return str(v)


def time_to_target(curve: list[dict], target: float, key: str = "eval_loss") -> float | None:
  """Train seconds (compiles included) when the eval loss first falls to `target` (key
  "eval_loss"), or the eval accuracy first rises to it (key "eval_metric" of a classification
  row), interpolated linearly between the two evaluations around the crossing; None if it never
  does."""
  sign = -1.0 if key == "eval_metric" else 1.0  # accuracy: higher is better
  for i, point in enumerate(curve):
    if sign * point[key] <= sign * target:
      if i == 0:
        return point["train_seconds"]
      prev = curve[i - 1]
      frac = (prev[key] - target) / (prev[key] - point[key])
      return prev["train_seconds"] + frac * (point["train_seconds"] - prev["train_seconds"])
  return None


def by_accuracy(summary: list[dict]) -> bool:
  """Whether the rows' quality is timed by eval accuracy (classification) rather than loss."""
  return bool(summary) and summary[0].get("target_eval_metric") is not None


def quality_levels(
  summary: list[dict], curves: dict, baselines: dict | None = None
) -> list[tuple[str, float]]:
  """The eval losses the report times every row to: four levels spaced geometrically from the
  rows' median first evaluation after the start down to the target (the worst comparable final
  loss), and, for a byte-level LM, each compressor baseline's bits per byte in nats. For
  classification, eval accuracies: four levels spaced evenly from the median first evaluation
  after the start up to the target (the worst comparable final accuracy)."""
  if by_accuracy(summary):
    target = summary[0]["target_eval_metric"]
    firsts = [pts[1]["eval_metric"] for pts in curves.values() if len(pts) > 1]
    if not firsts:
      return []
    start = float(np.median(firsts))
    if start >= target:
      return [("target", target)]
    levels = [(f"{k}/4 of the way", start + (target - start) * k / 4) for k in (1, 2, 3)]
    return levels + [("target", target)]
  target = summary[0].get("target_eval_loss") if summary else None
  firsts = [pts[1]["eval_loss"] for pts in curves.values() if len(pts) > 1]
  if not target or not firsts or target <= 0:
    return []
  start = float(np.median(firsts))
  levels = [(f"{k}/4 of the way", target * (start / target) ** (1 - k / 4)) for k in (1, 2, 3)]
  levels.append(("target", target))
  if baselines and summary[0].get("metric") == "bits_per_byte":
    levels += [
      (f"{BASELINE_NAMES[k]} ({baselines[k]:.3f} bits/byte)", baselines[k] * math.log(2))
      for k in ("zlib", "lzma", "bz2", "lzma_primed")
    ]
  return sorted(levels, key=lambda kv: -kv[1])


def quality_table(summary: list[dict], curves: dict, baselines: dict | None = None) -> list[str]:
  """Markdown: for each quality level (`quality_levels`), each comparable row's train seconds
  (compiles included) to first reach it, median over seeds with the range, and how many seeds
  did; "-" where none did."""
  rows = [r for r in summary if r.get("comparable", True)]
  levels = quality_levels(rows, curves, baselines)
  if not levels or not rows:
    return []
  key, what = ("eval_metric", "eval accuracy") if by_accuracy(rows) else ("eval_loss", "eval loss")
  lines = [
    f"| {what} level | " + " | ".join(r["strategy"] for r in rows) + " |",
    "|---|" + "---|" * len(rows),
  ]
  for label, level in levels:
    cells = []
    for r in rows:
      runs = [pts for (name, _), pts in curves.items() if name == r["strategy"]]
      times = [t for t in (time_to_target(pts, level, key) for pts in runs) if t is not None]
      if not times:
        cells.append("-")
        continue
      cell = f"{np.median(times):,.0f} s"
      if len(runs) > 1:
        cell += f" ({min(times):,.0f}-{max(times):,.0f}, {len(times)}/{len(runs)} seeds)"
      cells.append(cell)
    lines.append(f"| {level:.4f}: {label} | " + " | ".join(cells) + " |")
  return [
    "## Time to quality",
    "",
    f"Train seconds (compiles included, evaluation excluded) until the {what} first reached "
    "each level, interpolated between evaluations; median over seeds (range, seeds that reached "
    "it). Every seed is timed to the same levels; the target here is the mean of the per-seed "
    f"targets, so a row whose final {what.split()[-1]} set one seed's target may reach it in fewer "
    "seeds.",
    "",
    *lines,
    "",
  ]


BASELINE_NAMES = dict(
  unigram="byte unigram (training frequencies)",
  zlib="zlib -9",
  bz2="bz2 -9",
  lzma="lzma -9e",
  lzma_primed="lzma primed with the training text",
)


def baseline_lines(baselines: dict | None) -> list[str]:
  """The byte-level baselines (lstm_jax.baselines) under the table, if the run has them."""
  if not baselines:
    return []
  said = ", ".join(f"{BASELINE_NAMES[k]} {baselines[k]:.3f}" for k in BASELINE_NAMES)
  sample = baselines.get("sampled")
  held = f"the same {baselines['held_out_bytes']:,} held-out bytes"
  if sample:  # a large corpus: fixed-size samples, so their time does not grow with it
    held = (
      f"a sample of {baselines['held_out_bytes']:,} of the {sample['held_out_of']:,} held-out "
      f"bytes (the first held-out sequences; unigram counts and lzma's priming from "
      f"{sample['train_bytes']:,} of the {sample['train_of']:,} training bytes)"
    )
  return [
    f"*Baselines* on {held}, in bits per byte (`lstm_jax/baselines.py`, recomputable from "
    f"the data alone): {said}.",
    "",
  ]


def classic_baseline_lines(summary: list[dict], classic: dict | None) -> list[str]:
  """1-NN DTW and ROCKET beside the rows (config.classic_baselines), on the split the rows are
  scored on, and which rows beat them; or why they were skipped."""
  if not classic:
    return []
  if "skipped" in classic:
    return [f"*Classic baselines* (1-NN DTW, ROCKET): skipped ({classic['skipped']}).", ""]
  split = classic.get("split", "eval")
  key = "test_metric" if split == "test" else "eval_metric"
  dtw, rocket = classic["dtw"], classic["rocket"]
  window = "full window" if dtw["window"] is None else f"window {dtw['window']:g}"
  out = [
    f"*Classic baselines* on the same split (trained on the rows' {classic['train_sequences']:,}"
    f" training sequences, scored on the {classic['test_sequences']:,} {split} sequences; "
    f"`baselines.classic`, aeon): 1-NN DTW ({window}) accuracy **{dtw['accuracy']:.3f}** in "
    f"{dtw['seconds']:.1f} s; ROCKET ({rocket['kernels']:,} kernels, {rocket['input']}) "
    f"**{rocket['accuracy']:.3f}** in {rocket['seconds']:.1f} s.",
  ]
  scored = [r for r in summary if r.get(key) is not None]
  if scored:
    out.append(
      "Rows above DTW: "
      + (", ".join(r["strategy"] for r in scored if r[key] > dtw["accuracy"]) or "none")
      + "; above ROCKET: "
      + (", ".join(r["strategy"] for r in scored if r[key] > rocket["accuracy"]) or "none")
      + f" ({split} accuracy, mean over seeds)."
    )
  return out + [""]


def class_baseline_lines(summary: list[dict], base: dict | None) -> list[str]:
  """The classification baselines under the table, and a warning for each row whose accuracy
  is no better than always answering the majority class (it learnt only the class counts)."""
  if not base:
    return []
  sampled = base.get("sampled")
  said = (
    f"the first {base['held_out_targets']:,} of {sampled['held_out_of']:,} held-out targets, "
    f"priors from {sampled['train_targets']:,} of {sampled['train_of']:,} training targets"
    if sampled
    else f"the same {base['held_out_targets']:,} held-out targets"
  )
  out = [
    f"*Baselines* on {said} "
    f"(`lstm_jax/baselines.py`, from the training split's class counts): always the majority "
    f"class ({base['majority_class']}) has accuracy {base['majority_accuracy']:.3f}; the class "
    f"priors have cross-entropy {base['prior_loss']:.4f} (the eval loss to beat).",
    "",
  ]
  stuck = [
    r["strategy"]
    for r in summary
    if r.get("metric") == "accuracy" and r["eval_metric"] <= base["majority_accuracy"] + 0.005
  ]
  if stuck:
    out += [
      f"**Warning**: {', '.join(stuck)} ended at the majority-class baseline: "
      f"{'it' if len(stuck) == 1 else 'they'} learnt nothing beyond the class counts. Train "
      f"longer, lower or raise the learning rate, or normalise the inputs "
      f"(`config.data.normalize`: per_sequence for time series).",
      "",
    ]
  return out


def _against_baselines(best: dict, baselines: dict) -> str:
  bpb = best["eval_metric"]
  beaten = [BASELINE_NAMES[k] for k in BASELINE_NAMES if bpb < baselines[k]]
  above = [
    f"{BASELINE_NAMES[k]} ({baselines[k]:.3f})" for k in BASELINE_NAMES if bpb >= baselines[k]
  ]
  return (
    f"- Against the baselines: the best row, {best['strategy']}, ends at {bpb:.3f} bits per "
    f"byte: "
    + (f"better than {', '.join(beaten)}" if beaten else "better than none")
    + (f"; not yet as good as {', '.join(above)}." if above else "; better than all.")
  )


OVERFIT_RISE = 0.10  # a held-out loss this far above its minimum by the end: the row overfits


def overfit_lines(summary: list[dict], curves: dict) -> list[str]:
  """A line for each row whose held-out loss ended more than OVERFIT_RISE above its own
  minimum (every seed's curve; the first seed's numbers named): it fit its training data past
  what generalises, so a later checkpoint is not a better one."""
  out = []
  for r in summary:
    rose = []
    for (name, seed), points in sorted(curves.items()):
      losses = [p["eval_loss"] for p in points]
      if name != r["strategy"] or len(losses) < 3:
        continue
      low = int(np.argmin(losses))
      if low < len(losses) - 1 and losses[-1] > (1 + OVERFIT_RISE) * losses[low] > 0:
        rose.append((seed, losses[low], points[low]["real_tokens"], losses[-1]))
    if rose:
      seed, low, tokens, last = rose[0]
      out.append(
        f"- **{r['strategy']} overfits** ({len(rose)} seed(s)): its held-out loss fell to "
        f"{low:.4f} at {tokens:,} real tokens, then rose to {last:.4f} by the end (seed "
        f"{seed}). Select on validation (a test split keeps each row's best checkpoint), or "
        f"set optimizer.weight_decay, a smaller model or fewer epochs."
      )
  return out


def reading(summary: list[dict], baselines: dict | None = None) -> list[str]:
  """What the numbers say, as bullet points generated from the comparable summary rows (the
  rows the guards flagged are named, with their reasons, and left out)."""
  flagged = [r for r in summary if not r.get("comparable", True)]
  summary = [r for r in summary if r.get("comparable", True)]
  out = (
    [
      "- Not comparable, left out of this reading: "
      + "; ".join(f"{r['strategy']} ({r['not_comparable']})" for r in flagged)
      + "."
    ]
    if flagged
    else []
  )
  if not summary:
    return out
  by = {r["strategy"]: r for r in summary}
  reached = sorted(
    (r for r in summary if r.get("time_to_target_seconds") is not None),
    key=lambda r: r["time_to_target_seconds"],
  )
  quality, target = "eval loss", reached[0]["target_eval_loss"] if reached else None
  if reached and by_accuracy(summary):
    quality, target = "eval accuracy", reached[0]["target_eval_metric"]
  if reached and reached[0]["time_to_target_seconds"] <= 0:
    worse = "no lower" if quality == "eval loss" else "no higher"
    out.append(
      f"- Time to quality: the target {quality} {target:.4f} was met "
      f"at the first evaluation, before training (the rows' {quality}es ended {worse} than "
      f"they began), so there is no time to quality to compare.".replace("accuracyes", "accuracies")
    )
  elif reached:
    best = reached[0]
    others = ", ".join(
      f"{r['strategy']} {r['time_to_target_seconds']:.1f} s "
      f"({r['time_to_target_seconds'] / best['time_to_target_seconds']:.1f}x)"
      for r in reached[1:]
    )
    out.append(
      f"- Time to quality: **{best['strategy']}** reached the target {quality} "
      f"{target:.4f} first, in {best['time_to_target_seconds']:.1f} s "
      f"of training (compiles included); then {others or 'no other'}."
    )
  fast = max(summary, key=lambda r: r["tokens_per_second"] or 0)
  out.append(
    f"- Throughput: {fast['strategy']} trained fastest at "
    f"{fast['tokens_per_second']:,.0f} real tokens/s; "
    + ", ".join(f"{r['strategy']} {r['tokens_per_second']:,.0f}" for r in summary if r is not fast)
    + ". Padding explains most of the gap: "
    + ", ".join(f"{r['strategy']} {100 * r['padding_fraction']:.1f}%" for r in summary)
    + "."
  )
  if "pad_batch_max" in by:
    r = by["pad_batch_max"]
    share = r["compile_seconds"] / max(r["wall_seconds"], 1e-9)
    out.append(
      f"- The trap: pad_batch_max compiled its train step {r['compiles']['train']} "
      f"times, {r['compile_seconds']:.0f} s of compiling against its {r['wall_seconds']:.0f} s "
      f"of wall time"
      + (
        f" ({100 * share:.0f}%)."
        if share <= 1
        else " (more than the wall time: its shapes compiled in the background, beside its "
        "steps, which the compiles slowed)."
      )
    )
  lo = min(summary, key=lambda r: r["eval_loss"])
  if baselines and lo.get("metric") == "bits_per_byte":
    out.append(_against_baselines(lo, baselines))
  hi = max(summary, key=lambda r: r["eval_loss"])
  spread = max((r.get("eval_loss_std") or 0) for r in summary)
  out.append(
    f"- Quality at equal real tokens: eval losses range from {lo['eval_loss']:.4f} "
    f"({lo['strategy']}) to {hi['eval_loss']:.4f} ({hi['strategy']})"
    + (
      f"; the largest sample standard deviation across seeds is ±{spread:.4f}, so "
      f"differences smaller than that are noise."
      if spread
      else "; with one seed, small differences may be noise (run with --config.seeds=3)."
    )
  )
  return out
