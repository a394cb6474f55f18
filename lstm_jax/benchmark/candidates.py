"""The candidates for a faster train step, each against the default step side by side.

Each candidate is the float32 tbptt step on the benchmark's workload W with one setting changed
(the input projection hoisted over the chunk, the scan unrolled, JAX's autodiff instead of the
hand-written backward pass); every variant is compiled once, then the variants' timed passes
alternate round by round (`measure.time_ours`'s passes), so each round's ratio to the default
is taken under the same machine load. The medians of the per-round ratios are the figures.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from lstm_jax import batching
from lstm_jax.benchmark import measure as bench

# (name, time_ours settings) against the default: in-step projection, no unroll, manual VJP
CANDIDATES = (
  ("input projection hoisted over the chunk", dict(input_projection="hoisted")),
  ("scan unrolled x2", dict(unroll=2)),
  ("scan unrolled x4", dict(unroll=4)),
  ("JAX's autodiff backward", dict(backward="autodiff")),
)
BASELINE = dict(input_projection="in_step")


def run(cfg, rounds: int = 5, candidates=CANDIDATES) -> dict:
  """Real tokens/s per variant and round, and each candidate's median ratio to the default."""
  ds = bench.workload(cfg)
  strategy = batching.TBPTT(ds, num_streams=cfg.batch_size, chunk_length=cfg.tbptt_chunk)
  variants: list[tuple[str, dict[str, Any]]] = [
    ("default (in-step projection, no unroll, manual backward)", BASELINE)
  ]
  variants += [(name, dict(BASELINE, **change)) for name, change in candidates]
  timings = [bench.time_ours(name, strategy, cfg, **kw) for name, kw in variants]
  real = timings[0].real_tokens
  rates: list[list[float]] = [[] for _ in variants]
  for _ in range(rounds):
    for i, t in enumerate(timings):
      assert t.run_pass is not None
      t0 = time.perf_counter()
      t.run_pass()
      rates[i].append(real / (time.perf_counter() - t0))
  base = rates[0]
  rows = []
  for (name, kw), r in zip(variants, rates):
    ratios = [a / b for a, b in zip(r, base)]
    rows.append(
      dict(
        name=name,
        settings=kw,
        tokens_per_second=statistics.median(r),
        samples=r,
        ratio_to_default=statistics.median(ratios),
        ratios=ratios,
      )
    )
  return dict(
    workload=dict(
      batch=cfg.batch_size, chunk=cfg.tbptt_chunk, features=cfg.features, hidden=cfg.hidden_size
    ),
    rounds=rounds,
    real_tokens_per_pass=real,
    rows=rows,
  )


def markdown(r: dict, cpu: str) -> str:
  w = r["workload"]
  lines = [
    f"Float32 tbptt step on W (B={w['batch']} streams x K={w['chunk']}, F={w['features']},"
    f" H={w['hidden']}), {r['rounds']} rounds alternating every variant, "
    f"{r['real_tokens_per_pass']:,} real tokens a pass; {cpu}. Ratio: the median of the"
    " per-round ratios to the default's pass in the same round.",
    "",
    "| variant | real tok/s (median) | ratio to the default |",
    "| --- | --- | --- |",
  ]
  for row in r["rows"]:
    lines.append(
      f"| {row['name']} | {row['tokens_per_second']:,.0f} | {row['ratio_to_default']:.3f} |"
    )
  return "\n".join(lines) + "\n"
