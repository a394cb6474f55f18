"""The forward GEMM of the train step on W, chained as a scan chains it, in XLA and in PyTorch
(docs/speed.md, "Where the step's time goes"; AMD EPYC, 2026-12-07).

    python benchmarks/2026-12-07-amd-epyc-profile/gemm_chain.py [--rounds 7]

h <- fold(h @ W) for 64 steps, h [B, K], W [K, N], N=1024, for K=288 at B in (8, 16, 32, 64,
128) and for K=256 at B=64, where
fold sums four K-wide column blocks of the [B, N] product (so every column is used: a compiler
may not drop any of the GEMM's work) and scales by 0.05:
XLA in one jitted lax.scan, PyTorch (if installed) in a Python loop of `torch.mm` on two
threads. Alternated round by round, medians; GFLOP/s of the GEMMs. Writes gemm_chain.json
beside this file.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
from lstm_jax.environment import versions  # noqa: E402
from lstm_jax.files import write_json_atomically  # noqa: E402

STEPS, N = 64, 1024
SHAPES = [(b, 288) for b in (8, 16, 32, 64, 128)] + [(64, 256)]


def _fold(g, k):
  """[B, N] -> [B, k]: four column blocks summed (the last one overlapping), times 0.05."""
  return (g[:, :k] + g[:, k : 2 * k] + g[:, 2 * k : 3 * k] + g[:, N - k :]) * 0.05


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args()
  try:
    import torch

    torch.set_num_threads(2)
  except ImportError:
    torch = None
  rows = []
  for B, k in SHAPES:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, N), dtype=np.float32) * 0.03
    h0 = rng.standard_normal((B, k), dtype=np.float32)

    @jax.jit
    def chain(w, h0, k=k):
      def body(h, _):
        return _fold(h @ w, k), None

      return jax.lax.scan(body, h0, None, length=STEPS)[0]

    wj, hj = jnp.asarray(w), jnp.asarray(h0)
    runs = {"xla": lambda wj=wj, hj=hj: jax.block_until_ready(chain(wj, hj))}
    if torch is not None:
      wt, ht = torch.from_numpy(w), torch.from_numpy(h0)

      def torch_chain(wt=wt, ht=ht, k=k):
        h = ht
        for _ in range(STEPS):
          h = _fold(torch.mm(h, wt), k)
        return h

      runs["torch.mm"] = torch_chain
    for f in runs.values():
      f()
    seconds = {name: [] for name in runs}
    for r in range(args.rounds):
      for name in list(runs)[:: 1 if r % 2 == 0 else -1]:
        t0 = time.perf_counter()
        runs[name]()
        seconds[name].append(time.perf_counter() - t0)
    flops = 2 * B * k * N * STEPS
    for name, s in seconds.items():
      rate = flops / statistics.median(s)
      rows.append(dict(shape=[B, k, N], impl=name, gflops=rate / 1e9, seconds=s))
      print(f"[{B}, {k}] x [{k}, {N}] x {STEPS} steps  {name:9s} {rate / 1e9:6.1f} GFLOP/s")
  result = dict(rows=rows, rounds=args.rounds, versions=versions())
  if torch is not None:
    result["torch"] = torch.__version__
  write_json_atomically(os.path.join(HERE, "gemm_chain.json"), result, indent=1)


if __name__ == "__main__":
  main()
