"""Runs the throughput benchmark (lstm_jax.bench) and writes benchmark.json and BENCHMARKS.md."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from lstm_jax import batching, bench
from lstm_jax.experiment import versions


def _strategies(ds, cfg) -> dict[str, batching.Strategy]:
  b = cfg.batch_size
  return {
      "pad": batching.Pad(ds, batch_size=b, max_length=cfg.max_length),
      "bucket": batching.Bucket(ds, tokens_per_batch=b * int(cfg.median_length) * 2,
                                num_buckets=cfg.num_buckets),
      "bucket_fixed_batch": batching.Bucket(ds, batch_size=b, num_buckets=cfg.num_buckets),
      "tbptt": batching.TBPTT(ds, num_streams=b, chunk_length=cfg.tbptt_chunk),
      "pack": batching.Pack(ds, batch_size=max(1, b * int(cfg.median_length) // cfg.pack_row_length
                                               * 2), row_length=cfg.pack_row_length),
  }


def run(cfg, out_md: str) -> dict:
  ds = bench.workload(cfg)
  rate = bench.gemm_rate(cfg.features, cfg.hidden_size)
  roofline = rate / bench.flops_per_token(cfg.features, cfg.hidden_size)
  print(f"GEMM {rate / 1e9:.1f} GFLOP/s -> roofline {roofline:,.0f} real tokens/s", flush=True)
  strategies = _strategies(ds, cfg)
  rows: list[bench.Timing] = []

  def add(t: bench.Timing | None, kind: str):
    if t is None:
      print(f"  {kind}: skipped (not installed)", flush=True)
      return
    t.extra["kind"] = kind
    rows.append(t)
    print(f"  {t.name:<34} {t.tokens_per_second:>10,.0f} tok/s  padding "
          f"{100 * t.padding_fraction:5.1f}%  compiles {t.compiles:>2} ({t.compile_seconds:.1f}s)",
          flush=True)

  for name, strategy in strategies.items():
    for proj in cfg.input_projections if name == "bucket" else cfg.input_projections[:1]:
      add(bench.time_ours(f"lstm_jax {name} ({proj})", strategy, cfg, proj), "ours")
  pow2 = [2 ** k for k in range(3, 10) if 2 ** k <= cfg.max_length] or [cfg.max_length]
  if pow2[-1] < cfg.max_length:
    pow2.append(cfg.max_length)
  peer_strategies = {
      "flax_rnn_pad512": ("flax nn.RNN padded to max", batching.Pad(ds, cfg.batch_size,
                                                                    cfg.max_length)),
      "flax_rnn_pow2": ("flax nn.RNN pow2 buckets", batching.Bucket(ds, cfg.batch_size,
                                                                    boundaries=pow2)),
      "torch_packed": ("torch nn.LSTM packed", batching.PadBatchMax(ds, cfg.batch_size)),
      "torch_batch_max": ("torch nn.LSTM batch max", batching.PadBatchMax(ds, cfg.batch_size)),
  }
  for peer in cfg.peers:
    label, strategy = peer_strategies[peer]
    if peer.startswith("flax"):
      add(bench.time_flax_rnn(label, strategy, cfg), "peer")
    else:
      add(bench.time_torch(label, strategy, cfg, packed=peer == "torch_packed"), "peer")
  memory = bench.memory_table(cfg, ds, [t for t in (64, 128, 256, 512) if t <= cfg.max_length])
  lengths = ds.lengths
  result = dict(
      date=time.strftime("%Y-%m-%d %H:%M"), versions=versions(), config=cfg.to_dict(),
      workload=dict(sequences=len(ds), real_tokens=int(lengths.sum()), fingerprint=ds.fingerprint(),
                    lengths_min_median_max=[int(lengths.min()), float(np.median(lengths)),
                                            int(lengths.max())]),
      gemm_flops_per_second=rate, roofline_tokens_per_second=roofline,
      rows=[dict(dataclasses.asdict(t), padding_fraction=t.padding_fraction,
                 roofline_fraction=t.tokens_per_second / roofline) for t in rows],
      memory=memory,
      bucket_boundaries=strategies["bucket"].boundaries)
  json_path = os.path.join(os.path.dirname(os.path.abspath(out_md)), "benchmark.json")
  with open(json_path, "w") as f:
    json.dump(result, f, indent=1)
  with open(out_md, "w") as f:
    f.write(markdown(result))
  print(markdown(result))
  return result


def markdown(r: dict) -> str:
  v, w = r["versions"], r["workload"]
  lines = [
      f"# Benchmarks ({r['date']})", "",
      f"Workload W: {w['sequences']} sequences, lengths {w['lengths_min_median_max']} "
      f"(min / median / max), {w['real_tokens']:,} real tokens, F={r['config']['features']}, "
      f"H={r['config']['hidden_size']}, batch {r['config']['batch_size']}, Adam, per-step MSE. "
      f"Machine: {v['cpu_count']} CPU cores, backend {v['backend']}; Python {v['python']}, "
      f"jax {v['jax']}, flax {v['flax']}, optax {v['optax']}.", "",
      f"GEMM rate {r['gemm_flops_per_second'] / 1e9:.1f} GFLOP/s (float32 "
      f"[4096, F+H] x [F+H, 4H]), so the roofline is "
      f"{r['roofline_tokens_per_second']:,.0f} real tokens/s.", "",
      "| run | real tok/s (median) | % roofline | padding | compiles | compile s | passes (s) |",
      "|---|---|---|---|---|---|---|"]
  for row in sorted(r["rows"], key=lambda x: -x["tokens_per_second"]):
    lines.append(f"| {row['name']} | {row['tokens_per_second']:,.0f} | "
                 f"{100 * row['roofline_fraction']:.1f}% | {100 * row['padding_fraction']:.1f}% | "
                 f"{row['compiles'] or '-'} | {row['compile_seconds']:.1f} | "
                 f"{', '.join(f'{s:.2f}' for s in row['pass_seconds'])} |")
  lines += ["", f"Bucket boundaries (exact dynamic program, {len(r['bucket_boundaries'])} "
            f"buckets): {r['bucket_boundaries']}.", "",
            "Train-step XLA temp memory against the padded length T (batch "
            f"{r['config']['batch_size']}); truncated BPTT's step is the T = chunk row whatever "
            "the data's length:", "", "| T | temp MiB |", "|---|---|"]
  lines += [f"| {m['length']} | {m['temp_bytes'] / 2**20:.1f} |" for m in r["memory"]]
  return "\n".join(lines) + "\n"
