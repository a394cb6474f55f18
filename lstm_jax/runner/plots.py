"""The report's plots: eval loss against wall time and against real tokens, tokens/s, padding
and compiles, the length histogram with the bucket boundaries, and the confusion matrices
(matplotlib, drawn in memory; `report.write_all` writes them with the other files).
"""

from __future__ import annotations

import io

import numpy as np

from lstm_jax.runner.reading import _fmt

PLOTS = (
  "eval_loss_vs_time.png",
  "eval_loss_vs_tokens.png",
  "tokens_per_second.png",
  "padding_and_compiles.png",
  "length_histogram.png",
)


CONFUSION_COUNTS_UP_TO = 12  # classes: more, and the confusion plot's cells hold no counts


def draw_confusion(ax, confusion) -> None:
  """A confusion matrix (rows: the true class) on matplotlib axes `ax`: each cell shaded by its
  share of the true class and, up to CONFUSION_COUNTS_UP_TO classes, labelled with its count
  (the mean over seeds)."""
  counts = np.asarray(confusion, np.float64)
  share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
  if len(counts) <= CONFUSION_COUNTS_UP_TO:
    size = 8 if len(counts) <= 6 else 6
    for (t, q), n in np.ndenumerate(counts):
      if n:
        text = f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"
        color = "white" if share[t, q] > 0.5 else "black"
        ax.text(q, t, text, ha="center", va="center", fontsize=size, color=color)


def plots(
  summary: list[dict], curves: dict, histogram: dict, boundaries: list[int]
) -> dict[str, bytes]:
  """The report's plots, PNG bytes by file name."""
  import logging

  import matplotlib

  matplotlib.use("Agg")
  logging.getLogger("matplotlib").setLevel(logging.WARNING)
  import matplotlib.pyplot as plt

  names = [r["strategy"] for r in summary]
  colors = {n: plt.cm.tab10(i) for i, n in enumerate(names)}
  out = {}

  def save(fig, name):
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=110, format="png")
    plt.close(fig)
    out[name] = png.getvalue()

  for key, fname, xlabel in (
    ("train_seconds", PLOTS[0], "train wall seconds (compiles included)"),
    ("real_tokens", PLOTS[1], "real tokens trained on"),
  ):
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for (name, seed), pts in curves.items():
      ax.plot(
        [p[key] for p in pts],
        [p["eval_loss"] for p in pts],
        marker="o",
        ms=3,
        color=colors[name],
        alpha=1.0 if seed == min(s for _, s in curves) else 0.4,
        label=name if seed == min(s for _, s in curves) else None,
      )
    if summary and summary[0].get("target_eval_loss"):
      ax.axhline(summary[0]["target_eval_loss"], color="grey", ls=":", lw=1, label="target")
    later = [p["eval_loss"] for pts in curves.values() for p in pts[1:]]
    if later:  # the untrained first point would squash the curves: leave it above the frame
      ax.set_ylim(
        min(later) - 0.02 * (max(later) - min(later)),
        max(later) + 0.05 * (max(later) - min(later) + 1e-9),
      )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("eval loss")
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, fname)
  fig, ax = plt.subplots(figsize=(6.4, 3.6))
  tps = [r["tokens_per_second"] or 0 for r in summary]
  ax.bar(
    names,
    tps,
    yerr=[r.get("tokens_per_second_std") or 0 for r in summary],
    color=[colors[n] for n in names],
  )
  ax.set_ylabel("real tokens / s (steady state)")
  save(fig, PLOTS[2])
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
  a1.bar(names, [100 * r["padding_fraction"] for r in summary], color=[colors[n] for n in names])
  a1.set_ylabel("padding (% of computed steps)")
  a2.bar(names, [r["compiles"]["train"] for r in summary], color=[colors[n] for n in names])
  a2.set_ylabel("train-step compiles")
  for a in (a1, a2):
    a.tick_params(axis="x", rotation=30)
  save(fig, PLOTS[3])
  fig, ax = plt.subplots(figsize=(6.4, 3.6))
  lengths, counts = histogram["lengths"], histogram["counts"]
  ax.hist(
    lengths,
    weights=counts,
    bins=np.geomspace(max(1, min(lengths)), max(lengths) + 1, 60).tolist(),
    color="0.6",
  )
  ax.set_xscale("log")
  for b in boundaries:
    ax.axvline(b, color="tab:red", lw=1)
  ax.set_xlabel("sequence length (steps); red: bucket boundaries")
  ax.set_ylabel("sequences")
  save(fig, PLOTS[4])
  scored = [r for r in summary if r.get("classes")]
  if scored:  # classification: each row's confusion matrix, rows = true class
    fig, axes = plt.subplots(1, len(scored), figsize=(3.2 * len(scored) + 0.6, 3.4), squeeze=False)
    for ax, r in zip(axes[0], scored):
      draw_confusion(ax, r["classes"]["confusion"])
      ax.set_title(f"{r['strategy']}: bal. acc {_fmt(r['balanced_accuracy'])}", fontsize=9)
      ax.set_xlabel("predicted class")
      ax.set_ylabel("true class")
    save(fig, "confusion.png")
  return out
