"""Runs the throughput benchmark (lstm_jax.benchmark.measure); writes benchmark.json and
BENCHMARKS.md."""

from __future__ import annotations

import os
import statistics
import time
import types
from typing import Callable

import numpy as np

from lstm_jax import batching, host
from lstm_jax.benchmark import measure as bench
from lstm_jax.benchmark import sections
from lstm_jax.environment import versions
from lstm_jax.files import write_json_atomically, write_text_atomically


def _strategies(ds, cfg) -> dict[str, batching.Strategy]:
  b = cfg.batch_size
  return {
    "pad": batching.Pad(ds, batch_size=b, max_length=cfg.max_length),
    "bucket": batching.Bucket(
      ds, tokens_per_batch=b * int(cfg.median_length) * 2, num_buckets=cfg.num_buckets
    ),
    "bucket_fixed_batch": batching.Bucket(ds, batch_size=b, num_buckets=cfg.num_buckets),
    "bucket_packed_rows": batching.Bucket(
      ds, batch_size=b, num_buckets=cfg.num_buckets, pack_rows=True
    ),
    "tbptt": batching.TBPTT(ds, num_streams=b, chunk_length=cfg.tbptt_chunk),
    "pack": batching.Pack(
      ds,
      batch_size=max(1, b * int(cfg.median_length) // cfg.pack_row_length * 2),
      row_length=cfg.pack_row_length,
    ),
  }


def _peer_strategies(ds, cfg) -> dict[str, tuple[str, batching.Strategy]]:
  pow2 = [2**k for k in range(3, 10) if 2**k <= cfg.max_length] or [cfg.max_length]
  if pow2[-1] < cfg.max_length:
    pow2.append(cfg.max_length)
  return {
    "flax_rnn_pad512": (
      "flax nn.RNN padded to max",
      batching.Pad(ds, batch_size=cfg.batch_size, max_length=cfg.max_length),
    ),
    "flax_rnn_pow2": (
      "flax nn.RNN pow2 buckets",
      batching.Bucket(ds, batch_size=cfg.batch_size, boundaries=pow2),
    ),
    "flax_rnn_pow2_bf16": (
      "flax nn.RNN pow2 buckets, bfloat16",
      batching.Bucket(ds, batch_size=cfg.batch_size, boundaries=pow2),
    ),
    "flax_rnn_pow2_gru": (
      "flax nn.RNN(GRUCell) pow2 buckets",
      batching.Bucket(ds, batch_size=cfg.batch_size, boundaries=pow2),
    ),
    "torch_packed": ("torch nn.LSTM packed", batching.PadBatchMax(ds, batch_size=cfg.batch_size)),
    "torch_batch_max": (
      "torch nn.LSTM batch max",
      batching.PadBatchMax(ds, batch_size=cfg.batch_size),
    ),
    # PyTorch's padded nn.LSTM (oneDNN's LSTM primitive where it has one) in the same buckets
    # as lstm_jax's bucket row (the exact DP boundaries, the same batches) and in pow-2 buckets,
    # each batch padded to its bucket's boundary
    "torch_bucket": ("torch nn.LSTM padded, lstm_jax's buckets", _strategies(ds, cfg)["bucket"]),
    "torch_bucket_bf16": (
      "torch nn.LSTM padded, lstm_jax's buckets, bfloat16",
      _strategies(ds, cfg)["bucket"],
    ),
    "torch_pow2": (
      "torch nn.LSTM padded, pow2 buckets",
      batching.Bucket(ds, batch_size=cfg.batch_size, boundaries=pow2),
    ),
    "keras_pow2": (
      "keras LSTM (jax backend) pow2 buckets",
      batching.Bucket(ds, batch_size=cfg.batch_size, boundaries=pow2),
    ),
    "torch_pow2_bf16": (
      "torch nn.LSTM padded, pow2 buckets, bfloat16",
      batching.Bucket(ds, batch_size=cfg.batch_size, boundaries=pow2),
    ),
  }


def _time_peer(key: str, ds, cfg) -> bench.Timing | None:
  label, strategy = _peer_strategies(ds, cfg)[key]
  if key.startswith("keras"):
    return bench.time_keras(label, strategy, cfg)
  if key.startswith("flax"):
    return bench.time_flax_rnn(
      label,
      strategy,
      cfg,
      "bfloat16" if key.endswith("_bf16") else "float32",
      "gru" if key.endswith("_gru") else "lstm",
    )
  return bench.time_torch(
    label,
    strategy,
    cfg,
    packed=key == "torch_packed",
    dtype="bfloat16" if key.endswith("_bf16") else "float32",
    pad_to_batch=key.startswith(("torch_bucket", "torch_pow2")),
  )


def malloc_probe_child(cfg_dict: dict, ours: str, projection: str, peer: str) -> dict:
  """In a fresh process (`bench.in_subprocess`): one of our strategies and one peer, timed under
  whatever allocator the process was started with."""
  cfg = types.SimpleNamespace(**cfg_dict)
  ds = bench.workload(cfg)
  a = bench.time_ours(ours, _strategies(ds, cfg)[ours], cfg, projection)
  b = _time_peer(peer, ds, cfg)
  if b is None:
    raise bench.PeerSkipped(f"{peer} is not installed")
  return dict(
    malloc=host.malloc_state(),
    ours=a.tokens_per_second,
    peer=b.tokens_per_second,
    ours_faults_per_step=a.page_faults_per_step,
    peer_faults_per_step=b.page_faults_per_step,
  )


def malloc_probe(cfg, ours: str, projection: str, peer: str) -> dict:
  """`ours` and `peer` in fresh processes with glibc's default allocator and with
  `host.tune_malloc()`, alternating, `cfg.malloc_probe_rounds` of each; medians per arm."""
  arms: dict[str, list[dict]] = {"default": [], "tuned": []}
  for _ in range(cfg.malloc_probe_rounds):
    for arm, runs in arms.items():
      runs.append(
        bench.in_subprocess(
          "lstm_jax.benchmark.suite",
          "malloc_probe_child",
          dict(cfg_dict=cfg.to_dict(), ours=ours, projection=projection, peer=peer),
          tune_malloc=arm == "tuned",
        )
      )

  def med(runs, k):
    return statistics.median(r[k] for r in runs)

  return dict(
    ours=ours,
    projection=projection,
    peer=peer,
    rounds=cfg.malloc_probe_rounds,
    runs=arms,
    **{
      arm: dict(
        ours=med(runs, "ours"),
        peer=med(runs, "peer"),
        speedup=statistics.median(r["ours"] / r["peer"] for r in runs),
        ours_faults_per_step=med(runs, "ours_faults_per_step"),
        peer_faults_per_step=med(runs, "peer_faults_per_step"),
      )
      for arm, runs in arms.items()
    },
  )


def _extra(t) -> dict:
  return t["extra"] if isinstance(t, dict) else t.extra


def _precision(t) -> str:
  return _extra(t).get("matmul_dtype", "float32")


def _cell(t) -> str:
  return _extra(t).get("cell", "lstm")  # results from before GRU rows were LSTM rows


def _best(rows, precision: str | None = None, cell: str = "lstm"):
  """The fastest row (a Timing or a record) of `cell`, of one matmul precision, or of any when
  None."""
  rows = [t for t in rows if _cell(t) == cell and (precision is None or _precision(t) == precision)]

  def speed(t):
    return t["tokens_per_second"] if isinstance(t, dict) else t.tokens_per_second

  return max(rows, key=speed) if rows else None


def _paired(ours: bench.Timing, peer: bench.Timing, cfg) -> dict:
  p = bench.paired_comparison(ours, peer, cfg, cfg.paired_rounds)
  print(
    f"  paired: {p['ours']} {p['speedup']:.2f}x {p['peer']}, "
    f"{100 * p['roofline_fraction']:.1f}% of the roofline (medians of {p['rounds']} rounds)",
    flush=True,
  )
  return p


def _time_our_rows(cfg, strategies: dict, add: Callable) -> None:
  """lstm_jax's rows: each strategy per input projection (bucket) or the first, then the
  autodiff-backward, bfloat16 and GRU variants the config names."""
  first = cfg.input_projections[0]
  for name, strategy in strategies.items():
    if name not in cfg.rows:
      continue
    for proj in cfg.input_projections if name == "bucket" else cfg.input_projections[:1]:
      add(bench.time_ours(f"lstm_jax {name} ({proj})", strategy, cfg, proj), "ours", name)
    if name in cfg.autodiff_rows:  # the same step with JAX's autodiff instead of the manual VJP
      label = f"lstm_jax {name} ({first}, autodiff backward)"
      add(bench.time_ours(label, strategy, cfg, first, backward="autodiff"), "ours", name)
    if name in cfg.bfloat16_rows:  # bfloat16 matmul operands, float32 accumulation
      label = f"lstm_jax {name} ({first}, bfloat16 matmuls)"
      add(bench.time_ours(label, strategy, cfg, first, matmul_dtype="bfloat16"), "ours", name)
  for name in cfg.gru_rows:  # the GRU (model.CellLayer over Flax's GRUCell)
    label = f"lstm_jax {name} (GRU)"
    add(bench.time_ours(label, strategies[name], cfg, first, cell="gru"), "ours", name)


def _time_peers(cfg, ds, add: Callable) -> dict:
  """The peers' rows; returns {peer: why} for those skipped (not installed, no bf16 kernel)."""
  skipped = {}
  for peer in cfg.peers:
    try:
      add(_time_peer(peer, ds, cfg), "peer", peer)
    except bench.PeerSkipped as e:
      skipped[peer] = str(e)
      print(f"  {peer}: skipped ({e})", flush=True)
  return skipped


def _paired_rows(cfg, ours: list, peers: list) -> tuple:
  """float32 against float32 (the targets), then our best bfloat16 row against the best peer
  in any precision; the GRU against Flax's GRU. None where a side is missing or no rounds."""
  if not cfg.paired_rounds:
    return None, None, None
  pairs = (
    (_best(ours, "float32"), _best(peers, "float32")),
    (_best(ours, "bfloat16"), _best(peers)),
    (_best(ours, cell="gru"), _best(peers, cell="gru")),
  )
  return tuple(_paired(a, b, cfg) if a and b else None for a, b in pairs)


def _allocator_probe(cfg, ours: list, peers: list) -> dict | None:
  """Our best float32 manual-backward LSTM row against the best peer, with glibc's allocator
  at its defaults and tuned."""
  lstm_ours, best_peer = [t for t in ours if _cell(t) == "lstm"], _best(peers)
  if not (lstm_ours and best_peer and cfg.malloc_probe_rounds):
    return None
  best_ours = max(
    (
      t
      for t in lstm_ours
      if t.extra["backward"] == "manual" and t.extra["matmul_dtype"] == "float32"
    ),
    key=lambda t: t.tokens_per_second,
  )
  allocator = malloc_probe(
    cfg, best_ours.extra["key"], best_ours.extra["input_projection"], best_peer.extra["key"]
  )
  print(
    "  allocator: "
    + "; ".join(
      f"{arm} {allocator[arm]['ours']:,.0f} vs {allocator[arm]['peer']:,.0f} tok/s "
      f"({allocator[arm]['speedup']:.2f}x)"
      for arm in ("default", "tuned")
    ),
    flush=True,
  )
  return allocator


def _fit_overheads(cfg, strategies: dict) -> list[dict]:
  """loop.fit against the pre-assembled passes, per row named; none without paired rounds
  (the figure is a median over them)."""
  overhead = []
  for name in cfg.fit_overhead_rows if cfg.paired_rounds else ():
    o = bench.fit_overhead(name, strategies[name], cfg, cfg.paired_rounds)
    overhead.append(o)
    print(
      f"  fit overhead, {name}: fit runs at {100 * o['ratio']:.1f}% of the pre-assembled "
      f"passes' speed (median of {o['rounds']} rounds)",
      flush=True,
    )
  return overhead


def run(cfg, out_md: str) -> dict:
  malloc = host.tune_malloc(cfg.tune_malloc)  # before anything is allocated; peers share it
  print(f"malloc: {'tuned (lstm_jax.host)' if malloc['tuned'] else malloc['reason']}", flush=True)
  ds = bench.workload(cfg)
  rates = [bench.gemm_rate(cfg.features, cfg.hidden_size)]  # again at the end: the machine is
  print(f"GEMM {rates[0] / 1e9:.1f} GFLOP/s", flush=True)  # shared, its speed drifts
  floor = bench.scan_gemm_floor(cfg)
  print(f"three GEMMs per step in a scan at B={cfg.batch_size}: {floor:,.0f} tokens/s", flush=True)
  strategies = _strategies(ds, cfg)
  rows: list[bench.Timing] = []

  def add(t: bench.Timing | None, kind: str, key: str):
    if t is None:
      print(f"  {key}: skipped (not installed)", flush=True)
      return
    t.extra.update(kind=kind, key=key)
    rows.append(t)
    print(
      f"  {t.name:<34} {t.tokens_per_second:>10,.0f} tok/s  padding "
      f"{100 * t.padding_fraction:5.1f}%  compiles {t.compiles:>2} ({t.compile_seconds:.1f}s)",
      flush=True,
    )

  _time_our_rows(cfg, strategies, add)
  skipped_peers = _time_peers(cfg, ds, add)
  onednn = bench.onednn_info() if any(p.startswith("torch") for p in cfg.peers) else None
  if onednn:
    print(f"  torch's oneDNN: {onednn}", flush=True)
  ours = [t for t in rows if t.extra["kind"] == "ours"]
  peers = [t for t in rows if t.extra["kind"] == "peer"]
  paired, paired_bf16, paired_gru = _paired_rows(cfg, ours, peers)
  allocator = _allocator_probe(cfg, ours, peers)
  overhead = _fit_overheads(cfg, strategies)
  cost_check = bench.cost_model_check(cfg, strategies, rows) if cfg.cost_model_check else None
  cache = bench.compile_cache_probe(cfg) if cfg.compile_cache_probe else None
  if cache:
    print(
      f"  persistent cache: {cache['first']['seconds']:.2f}s then "
      f"{cache['second']['seconds']:.2f}s ({100 * cache['ratio']:.0f}%)",
      flush=True,
    )
  rates.append(bench.gemm_rate(cfg.features, cfg.hidden_size))
  rate = max(rates)  # the machine's best: a % of roofline is never flattered by a slow moment
  roofline = rate / bench.flops_per_token(cfg.features, cfg.hidden_size)

  def roofline_fraction(t):  # against its own cell's FLOPs (the GRU has 3 gate blocks, not 4)
    return (
      t.tokens_per_second * bench.flops_per_token(cfg.features, cfg.hidden_size, _cell(t)) / rate
    )

  print(
    f"GEMM {rates[1] / 1e9:.1f} GFLOP/s at the end; roofline {roofline:,.0f} real tokens/s",
    flush=True,
  )
  widths = sorted({t for t in (64, 128, 256, 512) if t <= cfg.max_length} | {cfg.max_length})
  memory = bench.memory_table(cfg, ds, widths)
  lengths = ds.lengths
  result = dict(
    date=time.strftime("%Y-%m-%d %H:%M"),
    versions=versions(),
    config=cfg.to_dict(),
    workload=dict(
      sequences=len(ds),
      real_tokens=int(lengths.sum()),
      fingerprint=ds.fingerprint(),
      lengths_min_median_max=[int(lengths.min()), float(np.median(lengths)), int(lengths.max())],
    ),
    gemm_flops_per_second=rate,
    gemm_samples=rates,
    roofline_tokens_per_second=roofline,
    scan_gemm_floor_tokens_per_second=floor,
    compile_cache=cache,
    paired=paired,
    paired_bfloat16=paired_bf16,
    paired_gru=paired_gru,
    allocator=allocator,
    fit_overhead=overhead,
    cost_model=cost_check,
    rows=[dict(t.record(), roofline_fraction=roofline_fraction(t)) for t in rows],
    memory=memory,
    bucket_boundaries=getattr(strategies["bucket"], "boundaries"),  # a Bucket
    skipped_peers=skipped_peers,
    torch_onednn=onednn,
  )
  json_path = os.path.join(os.path.dirname(os.path.abspath(out_md)), "benchmark.json")
  write_json_atomically(json_path, result, indent=1)
  others = sections.kept(out_md)  # other benchmarks' sections of the file, kept
  write_text_atomically(out_md, markdown(result) + ("\n" + others if others else ""))
  print(markdown(result))
  return result


def _onednn_words(impls) -> str:
  """oneDNN's primitive implementations as ONEDNN_VERBOSE named them, or why none ran."""
  if isinstance(impls, str):
    return impls
  return ", ".join(f"`{i}`" for i in impls)


def _malloc_words(v: dict) -> str:
  m = v.get("malloc")
  tuned = bool(m and m.get("tuned"))
  return bench.malloc_words(m) + (" for every row, peers included" if tuned else "")


def markdown(r: dict) -> str:
  v, w = r["versions"], r["workload"]
  floor_share = 100 * r["scan_gemm_floor_tokens_per_second"] / r["roofline_tokens_per_second"]
  lines = [
    f"# Benchmarks ({r['date']})",
    "",
    f"Workload W: {w['sequences']} sequences, lengths {w['lengths_min_median_max']} "
    f"(min / median / max), {w['real_tokens']:,} real tokens, F={r['config']['features']}, "
    f"H={r['config']['hidden_size']}, batch {r['config']['batch_size']}, Adam, per-step MSE. "
    f"Machine: {sections.cpu_words(v)}, backend {v['backend']}; Python {v['python']}, "
    f"jax {v['jax']}, flax {v['flax']}, optax {v['optax']}; {_malloc_words(v)}.",
    "",
    f"GEMM rate {r['gemm_flops_per_second'] / 1e9:.1f} GFLOP/s (float32 "
    f"[4096, F+H] x [F+H, 4H]; the better of "
    f"{', '.join(f'{x / 1e9:.0f}' for x in r.get('gemm_samples', [r['gemm_flops_per_second']]))}"
    f" GFLOP/s measured before and after the runs), so the roofline is "
    f"{r['roofline_tokens_per_second']:,.0f} real tokens/s"
    + (
      " (GRU rows: their own, 4/3 of that, for 3 gate blocks instead of 4)."
      if any(_cell(x) == "gru" for x in r["rows"])
      else "."
    ),
    "",
    f"A scan doing only the three GEMMs of each time step ([{r['config']['batch_size']}, F+H] "
    f"operands, forward and backward) runs at {r['scan_gemm_floor_tokens_per_second']:,.0f} "
    f"tokens/s ({floor_share:.0f}% of the roofline): the ceiling for a scanned LSTM at this "
    f"batch size here.",
    "",
    "| run | real tok/s (median) | processed tok/s | % roofline | padding | compiles | compile s "
    "| passes (s) | page faults / step |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in sorted(r["rows"], key=lambda x: -x["tokens_per_second"]):
    processed = row["tokens_per_second"] * row["computed_tokens"] / max(row["real_tokens"], 1)
    lines.append(
      f"| {row['name']} | {row['tokens_per_second']:,.0f} | {processed:,.0f} | "
      f"{100 * row['roofline_fraction']:.1f}% | {100 * row['padding_fraction']:.1f}% | "
      f"{row['compiles'] or '-'} | {row['compile_seconds']:.1f} | "
      f"{', '.join(f'{s:.2f}' for s in row['pass_seconds'])} | "
      f"{row.get('page_faults_per_step', 0):,.0f} |"
    )
  lines += [
    "",
    "*processed tok/s*: every step a row computes, padding included (real tok/s / (1 -"
    " padding)): the rate per token of the computation itself.",
  ]
  for key, why in (r.get("skipped_peers") or {}).items():
    lines.append(f"Skipped peer `{key}`: {why}.")
  o = r.get("torch_onednn")
  if o:
    lines.append(
      f"PyTorch {o['torch']}: oneDNN {o['onednn_version']} (available: "
      f"{o['mkldnn_available']}); the padded nn.LSTM's training step ran oneDNN's RNN "
      f"primitive as {_onednn_words(o['lstm_float32'])} in float32 and "
      f"{_onednn_words(o['lstm_bfloat16'])} under bfloat16 autocast (ONEDNN_VERBOSE)."
    )
  lines += [
    "",
    f"Bucket boundaries (exact dynamic program, {len(r['bucket_boundaries'])} "
    f"buckets): {r['bucket_boundaries']}.",
    "",
    "Train-step XLA temp memory against the padded length T (batch "
    f"{r['config']['batch_size']}); truncated BPTT's step is the T = chunk row whatever "
    "the data's length:",
    "",
    "| T | temp MiB |",
    "|---|---|",
  ]
  lines += [f"| {m['length']} | {m['temp_bytes'] / 2**20:.1f} |" for m in r["memory"]]
  c = r.get("compile_cache")
  if c:
    f, j, sec = c["first"], c["jax_cache_only"], c["second"]
    lines += [
      "",
      f"Persistent compilation cache (`--config.compile_cache_dir`, "
      f"`compiles.enable_persistent_cache`): the bucket strategy's {f['compiles']} "
      f"train-step shapes compiled in a fresh process took {f['seconds']:.2f} s "
      f"({f['xla_seconds']:.2f} s in XLA, {f['trace_lower_seconds']:.2f} s tracing and "
      f"lowering). A second fresh process reading JAX's compilation cache "
      f"(`jax_compilation_cache_dir`) alone took {j['seconds']:.2f} s "
      f"({100 * c['jax_cache_only_ratio']:.0f}%: {j['xla_seconds']:.2f} s loading, "
      f"{j['trace_lower_seconds']:.2f} s tracing and lowering, which that cache cannot "
      f"skip); with lstm_jax's executable cache as well (keyed by the traced program, "
      f"so lowering is skipped too) it took {sec['seconds']:.2f} s "
      f"({100 * c['ratio']:.0f}%: {sec['cache_loads']} of {sec['compiles']} executables "
      f"loaded in {sec['xla_seconds']:.2f} s, {sec['trace_lower_seconds']:.2f} s tracing).",
    ]
  for key, what in (
    ("paired", "float32 against float32"),
    (
      "paired_bfloat16",
      "bfloat16 matmuls against the best peer in any precision; "
      "the roofline stays the float32 GEMM rate",
    ),
    ("paired_gru", "the GRU against Flax's nn.RNN(GRUCell)"),
  ):
    p = r.get(key)
    if p:
      lines += [
        "",
        f"Side by side, {what} (the machine's speed drifts between rows): "
        f"{p['rounds']} rounds, each one pass of {p['ours']}, one of {p['peer']}, then the "
        f"GEMM rate. Per round, {p['ours']} ran "
        f"{', '.join(f'{x:.2f}x' for x in p['speedups'])} the peer and "
        f"{', '.join(f'{100 * x:.0f}%' for x in p['roofline_fractions'])} of that "
        f"round's roofline: medians **{p['speedup']:.2f}x** and "
        f"**{100 * p['roofline_fraction']:.1f}%**." + _cold_epoch_words(r, p),
      ]
  a = r.get("allocator")
  if a:
    lines += [
      "",
      f"Allocator (`lstm_jax.host.tune_malloc`, on in this run: "
      f"{v.get('malloc', {}).get('tuned', False)}): {a['ours']} ({a['projection']}) and "
      f"{a['peer']} timed in fresh processes, {a['rounds']} of each arm, alternating; "
      "glibc's defaults against the tuned allocator (medians):",
      "",
      "| allocator | ours tok/s | peer tok/s | ours / peer | page faults / step (ours, peer) |",
      "|---|---|---|---|---|",
    ]
    lines += [
      f"| {arm} | {a[arm]['ours']:,.0f} | {a[arm]['peer']:,.0f} | "
      f"{a[arm]['speedup']:.2f}x | {a[arm]['ours_faults_per_step']:,.0f}, "
      f"{a[arm]['peer_faults_per_step']:,.0f} |"
      for arm in ("default", "tuned")
    ]
  for o in r.get("fit_overhead") or []:
    lines += [
      "",
      f"`loop.fit` against the pre-assembled passes ({o['strategy']}, the same "
      f"{o['steps']} batches and {o['real_tokens']:,} real tokens, all shapes compiled before; "
      f"each of {o['rounds']} rounds one pre-assembled pass then one `fit` call, timed whole: "
      "its checks, the plans, batch assembly and transfer, the steps, the last metrics): fit "
      f"took {', '.join(f'{x:.2f}' for x in o['fit_seconds'])} s against "
      f"{', '.join(f'{x:.2f}' for x in o['assembled_seconds'])} s, so it runs at "
      f"**{100 * o['ratio']:.1f}%** of their speed (median of the per-round ratios; it "
      f"loses {100 * (1 - o['ratio']):.1f}%).",
    ]
  cm = r.get("cost_model")
  if cm and cm["rows"]:
    cal = cm["calibration"]
    lines += [
      "",
      "Cost model (`lstm_jax.runner.costs`, the recommender's and `num_buckets=\"auto\"`'s): "
      f"calibrated here on {cal['measured']['shapes']} (compile {cal['compile_seconds']:.2f} s "
      f"per shape; a step of [B, T] takes T x ({1e6 * cal['alpha']:.0f} + "
      f"{1e6 * cal['beta']:.1f} x B) us), then each float32 LSTM row's timed pass and compiles "
      "predicted from its batches' shapes:",
      "",
      "| row | pass s predicted | measured | ratio | compile s predicted | measured | ratio |",
      "|---|---|---|---|---|---|---|",
    ]
    for x in cm["rows"]:
      lines.append(
        f"| {x['name']} | {x['predicted_pass_seconds']:.2f} | {x['measured_pass_seconds']:.2f} "
        f"| {x['predicted_pass_seconds'] / x['measured_pass_seconds']:.2f} | "
        f"{x['predicted_compile_seconds']:.1f} | {x['measured_compile_seconds']:.1f} | "
        f"{x['predicted_compile_seconds'] / max(x['measured_compile_seconds'], 1e-9):.2f} |"
      )
  lines += ["", "## Targets, checked against this run", ""] + targets(r)
  return "\n".join(lines) + "\n"


def cold_epoch_seconds(r: dict, name: str) -> float:
  """One epoch of W from a cold start for the row `name`: its compile seconds plus W's real
  tokens at its median rate (computed from the row's two measured figures)."""
  row = next(x for x in r["rows"] if x["name"] == name)
  return row["compile_seconds"] + r["workload"]["real_tokens"] / row["tokens_per_second"]


def _cold_epoch_words(r: dict, p: dict) -> str:
  ours, peer = cold_epoch_seconds(r, p["ours"]), cold_epoch_seconds(r, p["peer"])
  return (
    f" From a cold start, one epoch of W (compile seconds plus {r['workload']['real_tokens']:,} "
    f"real tokens at the row's median rate) takes {ours:.1f} s against {peer:.1f} s: "
    f"**{peer / ours:.2f}x**."
  )


def _judged_ratio(mine: dict, theirs: dict, paired: dict | None) -> tuple[float, str]:
  """The speed ratio a target is judged by: the side-by-side median when the pair was timed so,
  else the table's rows; and the words saying which (with the rows' ratio beside it)."""
  table_ratio = mine["tokens_per_second"] / theirs["tokens_per_second"]
  if paired is None:
    return table_ratio, ""
  return paired["speedup"], f" side by side (rows of the table: {table_ratio:.2f}x)"


def targets(r: dict) -> list[str]:
  """Each target with the figures from this run and whether they meet it."""
  rows = r["rows"]
  ours = [x for x in rows if x["extra"].get("kind") == "ours"]
  peers = [x for x in rows if x["extra"].get("kind") == "peer"]
  best = _best(ours, "float32")  # the targets compare float32 with float32
  out = ["| target | this run | met |", "|---|---|---|"]

  def mark(ok):
    return "yes" if ok else "**no**"

  gru, gru_peer = _best(ours, cell="gru"), _best(peers, cell="gru")
  if gru and gru_peer:
    ratio, how = _judged_ratio(gru, gru_peer, r.get("paired_gru"))
    out.append(
      f"| GRU >= 1.5x Flax's nn.RNN(GRUCell) in pow2 buckets | {gru['name']} "
      f"{ratio:.2f}x{how} | {mark(ratio >= 1.5)} |"
    )
    quickest = min(
      (x for x in ours if _cell(x) == "gru"), key=lambda x: cold_epoch_seconds(r, x["name"])
    )
    cold = cold_epoch_seconds(r, gru_peer["name"]) / cold_epoch_seconds(r, quickest["name"])
    out.append(
      f"| the same, one epoch of W from a cold start (compile seconds + real tokens / median "
      f"rate) | {quickest['name']} {cold:.2f}x | {mark(cold >= 1.5)} |"
    )
  if cm_rows := (r.get("cost_model") or {}).get("rows"):
    worst = max(
      cm_rows, key=lambda x: abs(x["predicted_pass_seconds"] / x["measured_pass_seconds"] - 1)
    )
    err = worst["predicted_pass_seconds"] / worst["measured_pass_seconds"] - 1
    out.append(
      f"| cost model: predicted step time within 20% of measured | worst "
      f"{worst['name']}: {100 * err:+.0f}% | {mark(abs(err) <= 0.2)} |"
    )
  for o in r.get("fit_overhead") or []:
    out.append(
      f"| loop.fit loses <= 3% against the pre-assembled passes | {o['strategy']}: "
      f"{100 * (1 - o['ratio']):.1f}% | {mark(o['ratio'] >= 0.97)} |"
    )
  if best is None:
    return out
  p = r.get("paired")  # side-by-side medians judge the ratios; the table's rows are minutes apart
  if _best(peers, "float32"):
    for label, mine, theirs, q in (
      ("", best, _best(peers, "float32"), p),
      (
        " (bfloat16 matmuls; the peers' best in any precision)",
        _best(ours, "bfloat16"),
        _best(peers),
        r.get("paired_bfloat16"),
      ),
    ):
      if mine is None:
        continue
      ratio, how = _judged_ratio(mine, theirs, q)
      out.append(
        f"| best strategy >= 2x the best peer{label} | {mine['name']} {ratio:.2f}x "
        f"{theirs['name']}{how} | {mark(ratio >= 2)} |"
      )
  packed = [x for x in peers if x["name"] == "torch nn.LSTM packed"]
  if packed:
    ratio = best["tokens_per_second"] / packed[0]["tokens_per_second"]
    out.append(f"| >= 10x PyTorch packed | {ratio:.1f}x | {mark(ratio >= 10)} |")
  frac = p["roofline_fraction"] if p else best["roofline_fraction"]
  how = f"side by side (table row: {100 * best['roofline_fraction']:.1f}%)" if p else ""
  out.append(
    f"| best strategy >= 50% of the GEMM roofline | {100 * frac:.1f}% {how} (the "
    f"scan-GEMM ceiling is "
    f"{100 * r['scan_gemm_floor_tokens_per_second'] / r['roofline_tokens_per_second']:.0f}%)"
    f" | {mark(frac >= 0.5)} |"
  )
  buckets = [x for x in ours if "bucket" in x["name"]]
  ok = [x for x in buckets if x["padding_fraction"] <= 0.03 and x["compiles"] <= 8]
  shown = min(buckets, key=lambda x: x["padding_fraction"]) if buckets else None
  if shown:
    out.append(
      f"| bucketing <= 3% padding with <= 8 compiles | {shown['name']}: "
      f"{100 * shown['padding_fraction']:.1f}%, {shown['compiles']} compiles | "
      f"{mark(bool(ok))} |"
    )
  c = r.get("compile_cache")
  if c:
    out.append(
      f"| second run with the persistent cache <= 10% of the first's compile seconds | "
      f"{100 * c['ratio']:.0f}% (JAX's compilation cache alone: "
      f"{100 * c['jax_cache_only_ratio']:.0f}%) | {mark(c['ratio'] <= 0.10)} |"
    )
  return out
