"""The candidates for a faster train step, each against the default step side by side.

Each candidate is the float32 tbptt step on the benchmark's workload W with one setting changed (the
input projection hoisted over the chunk, the scan unrolled, JAX's autodiff instead of the
hand-written backward pass, the weight gradient after the reverse scan), or one XLA CPU option added
(`run_xla_options`: a fresh process per variant, since XLA reads its flags when the backend starts).
Every variant is compiled once, then the variants' timed passes alternate round by round
(`measure.time_ours`'s passes), so each round's ratio to the default is taken under the same machine
load. The medians of the per-round ratios are the figures.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from lstm_jax import batching, host
from lstm_jax.benchmark import measure as bench
from lstm_jax.benchmark.profile import malloc_words

# (name, time_ours settings) against the default: in-step projection, no unroll, manual VJP
CANDIDATES = (
  ("input projection hoisted over the chunk", dict(input_projection="hoisted")),
  ("scan unrolled x2", dict(unroll=2)),
  ("scan unrolled x4", dict(unroll=4)),
  ("JAX's autodiff backward", dict(backward="autodiff")),
  ('weight gradient after the reverse scan (backward="deferred")', dict(backward="deferred")),
)
BASELINE = dict(input_projection="in_step")
# XLA CPU options (XLA_FLAGS, read when the backend starts: each variant in a fresh process)
XLA_OPTIONS = (
  ("oneDNN for XLA's dots", "--xla_cpu_use_onednn=true"),
  ("oneDNN custom calls", "--xla_cpu_experimental_onednn_custom_call=true"),
  ("XNNPACK off (Eigen's dots)", "--xla_cpu_use_xnnpack=false"),
  ("Eigen single-threaded", "--xla_cpu_multi_thread_eigen=false"),
  ("no concurrency-optimized scheduler", "--xla_cpu_enable_concurrency_optimized_scheduler=false"),
)


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
    malloc=host.malloc_state(),
  )


def xla_option_child(cfg_dict: dict, flags: str, passes: int) -> dict:
  """In a fresh process (`measure.in_subprocess`): the default step under `flags` (XLA_FLAGS,
  set before the backend starts), compiled once, then `passes` timed passes."""
  import os
  import types

  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
  cfg = types.SimpleNamespace(**cfg_dict)
  ds = bench.workload(cfg)
  strategy = batching.TBPTT(ds, num_streams=cfg.batch_size, chunk_length=cfg.tbptt_chunk)
  t = bench.time_ours("xla option", strategy, cfg, **BASELINE)
  assert t.run_pass is not None
  rates = []
  for _ in range(passes):
    t0 = time.perf_counter()
    t.run_pass()
    rates.append(t.real_tokens / (time.perf_counter() - t0))
  return dict(flags=os.environ["XLA_FLAGS"], rates=rates, malloc=host.malloc_state())


def run_xla_options(cfg, rounds: int = 2, options=XLA_OPTIONS, passes: int = 3) -> dict:
  """The default step under each XLA option, each in a fresh process, the options alternating
  round by round with the default's own process; ratios per round (medians of the passes).
  Each child's allocator is this process's: tuned if `host.tune_malloc` ran here."""
  tuned = host.malloc_state()["tuned"]
  variants = [("default (no extra XLA flags)", "")] + list(options)
  rates: list[list[float]] = [[] for _ in variants]
  for _ in range(rounds):
    for i, (_, flags) in enumerate(variants):
      child = bench.in_subprocess(
        "lstm_jax.benchmark.candidates",
        "xla_option_child",
        dict(cfg_dict=cfg.to_dict(), flags=flags, passes=passes),
        tune_malloc=tuned,
      )
      rates[i].append(statistics.median(child["rates"]))
  rows = []
  for (name, flags), r in zip(variants, rates):
    ratios = [a / b for a, b in zip(r, rates[0])]
    rows.append(
      dict(
        name=name,
        settings=dict(xla_flags=flags),
        tokens_per_second=statistics.median(r),
        samples=r,
        ratio_to_default=statistics.median(ratios),
        ratios=ratios,
      )
    )
  return dict(rounds=rounds, passes=passes, rows=rows)


def markdown(r: dict, cpu: str) -> str:
  w = r["workload"]
  lines = [
    f"Float32 tbptt step on W (B={w['batch']} streams x K={w['chunk']}, F={w['features']},"
    f" H={w['hidden']}), {r['rounds']} rounds alternating every variant, "
    f"{r['real_tokens_per_pass']:,} real tokens a pass; {cpu};"
    f" {malloc_words(r.get('malloc'))}. Ratio: the median of the"
    " per-round ratios to the default's pass in the same round.",
    "",
    "| variant | real tok/s (median) | ratio to the default |",
    "| --- | --- | --- |",
  ]
  for row in r["rows"]:
    lines.append(
      f"| {row['name']} | {row['tokens_per_second']:,.0f} | {row['ratio_to_default']:.3f} |"
    )
  x = r.get("xla_options")
  if x:
    lines += [
      "",
      f"XLA CPU options, the same default step with one XLA flag added, each variant in a fresh "
      f"process (the flags are read when the backend starts), {x['rounds']} rounds alternating "
      f"every variant, each the median of {x['passes']} passes; ratio: the median of the "
      f"per-round ratios to the default's process of the same round.",
      "",
      "| XLA option | flag | real tok/s (median) | ratio to the default |",
      "| --- | --- | --- | --- |",
    ]
    for row in x["rows"]:
      flag = row["settings"]["xla_flags"]
      lines.append(
        f"| {row['name']} | {f'`{flag}`' if flag else '-'} | {row['tokens_per_second']:,.0f} | "
        f"{row['ratio_to_default']:.3f} |"
      )
  return "\n".join(lines) + "\n"
