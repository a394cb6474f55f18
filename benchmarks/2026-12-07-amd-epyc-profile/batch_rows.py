"""lstm_jax's float32 train step against PyTorch's padded nn.LSTM (oneDNN) at the same shapes, by
the number of rows B per step (docs/speed.md; AMD EPYC, 2026-12-07): where oneDNN's lead is.

    python benchmarks/2026-12-07-amd-epyc-profile/batch_rows.py [--rounds 5]

Both train W's model (F=32 features, H=256, a linear head, per-step MSE, Adam) on [T=128, B]
batches: lstm_jax's tbptt train step on W's own chunks, torch an nn.LSTM, Linear, MSE and Adam
step on random data of the same shape (two threads). Alternated round by round, 3 steps per
round, medians; processed tokens/s (B x T per step). The allocator is tuned as in the
benchmark's rows. Writes batch_rows.json beside this file. Needs torch.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
from configs import benchmark as benchmark_config  # noqa: E402
from lstm_jax import batching, host, train  # noqa: E402
from lstm_jax.benchmark import measure as bench  # noqa: E402
from lstm_jax.environment import versions  # noqa: E402
from lstm_jax.files import write_json_atomically  # noqa: E402
from lstm_jax.model import SequenceModel  # noqa: E402

T, ROWS = 128, (8, 16, 32, 64, 128)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  import torch

  torch.set_num_threads(2)
  cfg = benchmark_config.get_config("default")
  malloc = host.tune_malloc(cfg.tune_malloc)
  ds = bench.workload(cfg)
  model = SequenceModel(hidden_size=cfg.hidden_size, num_outputs=1)
  state = train.create_train_state(model, optax.adam(cfg.learning_rate), ds, seed=0)
  one = np.float32(1.0)
  rows = []
  for b in ROWS:
    strategy = batching.TBPTT(ds, num_streams=b, chunk_length=T)
    batches = [batching.assemble(ds, p, strategy.right_padded) for p in strategy.plan(0)[:4]]
    carry = model.zero_carry(b)
    step = jax.jit(train.train_step).lower(state, batches[0], carry, one).compile()
    lstm = torch.nn.LSTM(cfg.features, cfg.hidden_size)
    head = torch.nn.Linear(cfg.hidden_size, 1)
    opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=cfg.learning_rate)
    x, y = torch.randn(T, b, cfg.features), torch.randn(T, b, 1)

    def ours(step=step, batches=batches, carry=carry):
      out = None
      for batch in batches[1:]:
        out = step(state, batch, carry, one)
      jax.block_until_ready(out)

    def theirs(lstm=lstm, head=head, opt=opt, x=x, y=y):
      for _ in range(3):
        opt.zero_grad()
        loss = ((head(lstm(x)[0]) - y) ** 2).mean()
        loss.backward()
        opt.step()

    ours()
    theirs()
    seconds = {"lstm_jax": [], "torch": []}
    for r in range(args.rounds):
      for name, f in (("lstm_jax", ours), ("torch", theirs))[:: 1 if r % 2 == 0 else -1]:
        t0 = time.perf_counter()
        f()
        seconds[name].append((time.perf_counter() - t0) / 3)
    rate = {k: b * T / statistics.median(v) for k, v in seconds.items()}
    rows.append(dict(rows=b, steps=T, tokens_per_second=rate, seconds=seconds))
    print(
      f"B={b:4d} T={T}: lstm_jax {rate['lstm_jax']:8,.0f} tok/s  torch {rate['torch']:8,.0f}"
      f" tok/s  torch / lstm_jax {rate['torch'] / rate['lstm_jax']:.2f}",
      flush=True,
    )
  result = dict(rows=rows, rounds=args.rounds, malloc=malloc, versions=versions())
  result["torch"] = torch.__version__
  write_json_atomically(os.path.join(HERE, "batch_rows.json"), result, indent=1)


if __name__ == "__main__":
  main()
