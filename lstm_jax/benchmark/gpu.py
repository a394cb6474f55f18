"""The accelerator check: lstm_jax's scan against the fused cuDNN LSTM on workload W, with the
exactness checks repeated on the device, written as BENCHMARKS-style markdown.

    python -m lstm_jax.benchmark.gpu --out benchmarks/gpu/RESULTS.md           # on a CUDA GPU
    python -m lstm_jax.benchmark.gpu --impl reference --smoke --out /tmp/g.md  # anywhere

benchmarks/gpu/run.sh installs the CUDA jaxlib and runs the first line. Rows (W as
configs/benchmark.py defines it; each a train step, Adam, timed passes after a warm-up, the
median pass reported): the scan under pad, bucket, tbptt and pack (`time_ours`); the fused
LSTM (`lstm_jax.cudnn`) under pad and bucket (right-padded rows, one sequence each), bare and
as lstm_jax's own train step with `SequenceModel(backend=...)` (what the runner runs under
config.model.backend); Flax's nn.RNN in power-of-two buckets. Exactness: the fused LSTM
against the scan on ragged rows with an empty one (outputs, carry, gradients), stack and
bidirectional, and SequenceModel(backend=...) against backend="scan", at precision HIGHEST.
`--impl reference` runs the fused rows through jax.experimental.rnn's reference (any backend):
the script's own check on a machine without a GPU, not a speed figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import batching, cudnn
from lstm_jax.benchmark import measure
from lstm_jax.environment import versions
from lstm_jax.files import write_text_atomically
from lstm_jax.model import LSTM, BidirectionalLSTM, SequenceModel, layer_params


def exactness(impl: str) -> dict:
  """Max relative errors of the fused LSTM against the scan, on the device in use."""
  b, t, f, h = 5, 33, 7, 16
  lengths = np.array([33, 1, 0, 20, 9], np.int32)
  x = jax.random.normal(jax.random.key(0), (b, t, f))
  mask = jnp.arange(t)[None, :] < lengths[:, None]
  x = jnp.where(mask[..., None], x, 0.0)
  out = {}
  for bidirectional in (False, True):
    module = (BidirectionalLSTM if bidirectional else LSTM)(h, num_layers=2)
    params = module.init(jax.random.key(1), x, mask=mask)["params"]

    def stack(p, bidirectional=bidirectional):
      if bidirectional:
        return [(p[f"forward_{k}"], p[f"backward_{k}"]) for k in range(2)]
      return layer_params(p)

    def loss(p, fused, module=module, stack=stack, bidirectional=bidirectional):
      if fused:
        y, c = cudnn.lstm(stack(p), x, lengths, bidirectional=bidirectional, impl=impl)
      else:
        y, c = module.apply({"params": p}, x, mask=mask)
      return jnp.sum(jnp.sin(y)) + sum(jnp.sum(v**2) for v in jax.tree.leaves(c)), (y, c)

    with jax.default_matmul_precision("highest"):
      (_, (y_s, c_s)), g_s = jax.value_and_grad(loss, has_aux=True)(params, False)
      (_, (y_f, c_f)), g_f = jax.value_and_grad(loss, has_aux=True)(params, True)
    name = "bidirectional" if bidirectional else "stack"
    out[name] = dict(
      outputs=measure_err(y_f, y_s), carry=measure_err(c_f, c_s), gradients=measure_err(g_f, g_s)
    )
  for bidirectional in (False, True):  # the model's backend setting: the train step's path
    got = {}
    for backend in ("scan", impl):
      model = SequenceModel(h, 3, num_layers=2, bidirectional=bidirectional, backend=backend)
      params = model.init(jax.random.key(1), x, seq_lengths=lengths)["params"]

      def model_loss(p, model=model):
        preds, carry = model.apply({"params": p}, x, seq_lengths=lengths)
        value = jnp.sum(jnp.sin(preds)) + sum(jnp.sum(v**2) for v in jax.tree.leaves(carry))
        return value, (preds, carry)

      with jax.default_matmul_precision("highest"):
        got[backend] = jax.value_and_grad(model_loss, has_aux=True)(params)
    (_, (y_s, c_s)), g_s = got["scan"]
    (_, (y_f, c_f)), g_f = got[impl]
    name = f"SequenceModel{' bidirectional' if bidirectional else ''} (backend={impl})"
    out[name] = dict(
      outputs=measure_err(y_f, y_s), carry=measure_err(c_f, c_s), gradients=measure_err(g_f, g_s)
    )
  return out


def measure_err(a, b) -> float:
  """max |a - b| / max |b| per leaf, the largest over the tree (tests/helpers.max_rel_err's
  measure: relative to each array's scale, robust to entries near zero)."""
  errs = [
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y))))
    / max(float(np.max(np.abs(np.asarray(y)))), 1e-30)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  ]
  return max(errs)


def time_fused(name: str, strategy: batching.Strategy, cfg, impl: str) -> measure.Timing:
  """The fused LSTM's train step on `strategy`'s right-padded batches (seq_lengths from the
  mask), the same head, loss and optimizer as the peers' rows (`measure.time_right_padded`)."""
  model = SequenceModel(hidden_size=cfg.hidden_size, num_outputs=1)
  init = model.init(jax.random.key(0), jnp.zeros((1, 1, strategy.dataset.num_features)))
  params = {"lstm": init["params"]["lstm"], "head": init["params"]["head"]}

  def predict(p, inputs, mask):
    y, _ = cudnn.lstm(layer_params(p["lstm"]), inputs, mask.sum(axis=1), impl=impl)
    return y @ p["head"]["kernel"] + p["head"]["bias"][None, None, :]

  return measure.time_right_padded(name, strategy, cfg, predict, params, dict(impl=impl))


def run(cfg, out: str, impl: str = "cudnn") -> dict:
  ds = measure.workload(cfg)
  b = cfg.batch_size
  pow2 = [2**k for k in range(3, 10) if 2**k <= cfg.max_length] or [cfg.max_length]
  if pow2[-1] < cfg.max_length:
    pow2.append(cfg.max_length)
  pad = batching.Pad(ds, batch_size=b, max_length=cfg.max_length)
  bucket = batching.Bucket(ds, batch_size=b, boundaries=pow2)
  rows = [
    measure.time_ours("scan pad", pad, cfg),
    measure.time_ours("scan bucket (pow2)", bucket, cfg),
    measure.time_ours(
      "scan tbptt", batching.TBPTT(ds, num_streams=b, chunk_length=cfg.tbptt_chunk), cfg
    ),
    measure.time_ours(
      "scan pack",
      batching.Pack(ds, batch_size=max(1, b // 4), row_length=cfg.pack_row_length),
      cfg,
    ),
    time_fused(f"fused ({impl}) pad", pad, cfg, impl),
    time_fused(f"fused ({impl}) bucket (pow2)", bucket, cfg, impl),
    # the library's own train step with the model's backend set: what the runner runs
    measure.time_ours(f"train_step backend={impl} pad", pad, cfg, backend=impl),
    measure.time_ours(f"train_step backend={impl} bucket (pow2)", bucket, cfg, backend=impl),
    measure.time_flax_rnn("flax nn.RNN pow2 buckets", bucket, cfg),
  ]
  checks = exactness(impl)
  env = versions()
  lines = [
    f"# lstm_jax on {jax.devices()[0].device_kind} ({time.strftime('%Y-%m-%d')})",
    "",
    f"Workload W: {cfg.num_sequences} sequences, lengths {cfg.min_length} to {cfg.max_length} "
    f"(log-normal, median {cfg.median_length}), F={cfg.features}, H={cfg.hidden_size}, batch "
    f"{b}; a train step with Adam, {cfg.repeats} timed passes of about {cfg.tokens_per_pass:,} "
    f"real tokens after a warm-up, the median pass. Fused: `lstm_jax.cudnn` (impl={impl}). "
    f"Command: `python -m lstm_jax.benchmark.gpu --out OUT`. Versions: {json.dumps(env)}.",
    "",
    "| row | real tok/s | padding | compiles | compile s | pass s (each) |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    passes = ", ".join(f"{s:.3f}" for s in r.pass_seconds)
    lines.append(
      f"| {r.name} | {r.tokens_per_second:,.0f} | {r.padding_fraction:.1%} | {r.compiles} | "
      f"{r.compile_seconds:.2f} | {passes} |"
    )
  by = {r.name: r for r in rows}
  lines.append("")
  for layout in ("pad", "bucket (pow2)"):
    scan = by[f"scan {layout}"].tokens_per_second
    bare = by[f"fused ({impl}) {layout}"].tokens_per_second / scan
    step = by[f"train_step backend={impl} {layout}"].tokens_per_second / scan
    lines.append(
      f"- {layout}: the fused LSTM **{bare:.2f}x** the scan bare, **{step:.2f}x** as "
      f"lstm_jax's train step (backend={impl})."
    )
  lines += ["", "## Exactness on this device (max relative error, fused against the scan)", ""]
  lines += ["| stack | outputs | carry | gradients | within 1e-5 |", "|---|---|---|---|---|"]
  for name, e in checks.items():
    ok = max(e.values()) <= 1e-5
    lines.append(
      f"| {name} | {e['outputs']:.1e} | {e['carry']:.1e} | {e['gradients']:.1e} | "
      f"{'yes' if ok else '**no**'} |"
    )
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  write_text_atomically(out, "\n".join(lines) + "\n")
  result = dict(rows=[r.record() for r in rows], exactness=checks, versions=env, impl=impl)
  write_text_atomically(os.path.splitext(out)[0] + ".json", json.dumps(result, indent=1) + "\n")
  print("\n".join(lines))
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="the markdown file (and .json beside it)")
  parser.add_argument("--impl", default="cudnn", choices=cudnn.IMPLS)
  parser.add_argument("--smoke", action="store_true", help="tiny shapes: a check, not figures")
  args = parser.parse_args(argv)
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
  from configs import benchmark as bench_config

  cfg = bench_config.get_config("default")
  if args.smoke:
    cfg.update(num_sequences=48, max_length=40, median_length=10.0, hidden_size=8, features=4)
    cfg.update(batch_size=8, repeats=1, tokens_per_pass=400, tbptt_chunk=8, pack_row_length=40)
  if args.impl == "cudnn" and jax.default_backend() != "gpu":
    print(
      f"error: --impl cudnn needs a CUDA GPU; this machine runs {jax.default_backend()}. "
      "Use --impl reference to check the script.",
      file=sys.stderr,
    )
    return 2
  run(cfg, args.out, args.impl)
  return 0


if __name__ == "__main__":
  sys.exit(main())
