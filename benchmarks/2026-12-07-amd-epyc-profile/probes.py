"""Probes behind docs/speed.md's "why the candidates lose" (AMD EPYC, 2026-12-07): code variants of
the float32 tbptt train step on W that are not lstm_jax options, timed against the default.

    python benchmarks/2026-12-07-amd-epyc-profile/probes.py [--rounds 8]
    python benchmarks/2026-12-07-amd-epyc-profile/probes.py --rows 8 --chunk 128 \
      --variants "dW after the scan" --steps 6 --rounds 6     # probes-B8-T128.json

- "dW after the scan": the weight and bias gradients as one GEMM and one sum over all T x B rows
  after the reverse scan, instead of accumulated per step (different summation order): since
  2026-12-07 an option, `backward="deferred"`, which this probe runs;
- "hoisted": input_projection="hoisted" (an lstm_jax option); "hoisted, slices prefetched": the
  same, with each step's projected-input slice read into the scan's carry one step ahead, so no
  fused loop reads a dynamic slice;
- "gate activations per gate": the forward's four activations as four slices (sigmoid on three,
  tanh on one) instead of one pass over all 4H columns with a select (the same numbers);
- the compiled step's slowest ops (XLA's trace) for the default and the hoisted step.

The allocator is tuned as in the benchmark's rows. Writes probes.json beside this file (W's
B=64 streams x K=64 steps), or probes-B{rows}-T{chunk}.json for other shapes.
"""

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
from configs import benchmark as benchmark_config  # noqa: E402
from lstm_jax import batching, host, train  # noqa: E402
from lstm_jax import recurrence as R  # noqa: E402
from lstm_jax.benchmark import measure as bench  # noqa: E402
from lstm_jax.benchmark.profile import hlo_ops, trace_op_seconds  # noqa: E402
from lstm_jax.environment import versions  # noqa: E402
from lstm_jax.files import write_json_atomically  # noqa: E402
from lstm_jax.model import SequenceModel  # noqa: E402

VARIANT = {"name": "default"}  # read when a step is traced


def _fwd_prefetched(weights, bias, seq, carry, in_step, unroll, matmul_dtype):
  """R._fwd for the hoisted projection with each step's slice carried in one step ahead."""
  need_d_xs = seq[0].perturbed
  weights, bias, (xs, mask, resets), carry = R.custom_vjp_primal_tree_values(
    (weights, bias, tuple(seq), carry)
  )
  last = xs.shape[0] - 1

  def body(state, step_xs):
    carry, x_t = state
    t, m, r = step_xs
    nxt = jax.lax.dynamic_index_in_dim(xs, jnp.minimum(t + 1, last), keepdims=False)
    carry, y, res = R.step(weights, bias, in_step, carry, (x_t, m, r), matmul_dtype)
    return (carry, nxt), (y, res)

  (final, _), (ys, res) = jax.lax.scan(body, (carry, xs[0]), (jnp.arange(last + 1), mask, resets))
  return (ys, final), (weights, bias, mask, resets, res, jnp.zeros(0) if need_d_xs else None)


def _step_per_gate(weights, bias, in_step, carry, xs, matmul_dtype="float32"):
  """R.step with the activations computed per gate: sigmoid(i, f, o), tanh(g)."""
  x_t, mask_t, reset_t = xs
  keep = 1.0 - reset_t[:, None]
  c, h = carry[0] * keep, carry[1] * keep
  z, lhs = R._gates(weights, bias, x_t, h, in_step, matmul_dtype)
  zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
  sig = jax.nn.sigmoid
  acts = jnp.concatenate([sig(zi), sig(zf), jnp.tanh(zg), sig(zo)], axis=-1)
  i, f, g, o = jnp.split(acts, 4, axis=-1)
  new_c = f * c + i * g
  tc = jnp.tanh(new_c)
  new_h = o * tc
  m = mask_t[:, None]
  out = (new_c * m + c * (1.0 - m), new_h * m + h * (1.0 - m))
  return out, new_h * m, (lhs, acts, c, tc)


_orig_fwd, _orig_bwd, _orig_step = R._fwd, R._bwd, R.step  # only recurrence is re-pointed


def _step(*args, **kwargs):
  per_gate = VARIANT["name"] == "gate activations per gate"
  return (_step_per_gate if per_gate else _orig_step)(*args, **kwargs)


def _fwd(*args):
  return (_fwd_prefetched if VARIANT["name"] == "hoisted, slices prefetched" else _orig_fwd)(*args)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--rounds", type=int, default=8)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--rows", type=int, default=0, help="streams B (0: W's)")
  parser.add_argument("--chunk", type=int, default=0, help="steps K (0: W's)")
  parser.add_argument("--variants", default="", help="comma-separated (''): all")
  parser.add_argument("--profile", type=int, default=1, help="0: no op tables")
  args = parser.parse_args()
  cfg = benchmark_config.get_config("default")
  cfg.batch_size = args.rows or cfg.batch_size
  cfg.tbptt_chunk = args.chunk or cfg.tbptt_chunk
  chosen = [v for v in args.variants.split(",") if v]
  malloc = host.tune_malloc(cfg.tune_malloc)
  R.recurrence.defvjp(_fwd, _orig_bwd, symbolic_zeros=True)
  R.step = _step
  ds = bench.workload(cfg)
  strategy = batching.TBPTT(ds, num_streams=cfg.batch_size, chunk_length=cfg.tbptt_chunk)
  batches = [
    batching.assemble(ds, p, strategy.right_padded) for p in strategy.plan(0)[: args.steps + 1]
  ]
  carry = SequenceModel(hidden_size=cfg.hidden_size, num_outputs=1).zero_carry(cfg.batch_size)
  one = np.float32(1.0)
  variants = {}
  for name, projection in (
    ("default", "in_step"),
    ("dW after the scan", "in_step"),
    ("gate activations per gate", "in_step"),
    ("hoisted", "hoisted"),
    ("hoisted, slices prefetched", "hoisted"),
  ):
    if chosen and name != "default" and name not in chosen:
      continue
    backward = "deferred" if name == "dW after the scan" else "manual"
    model = SequenceModel(
      hidden_size=cfg.hidden_size,
      num_outputs=1,
      input_projection=projection,
      backward=backward,
    )
    state = train.create_train_state(model, optax.adam(cfg.learning_rate), ds, seed=0)
    VARIANT["name"] = name
    step = jax.jit(lambda s, b, c, w: train.train_step(s, b, c, w))  # a fresh trace per variant
    variants[name] = (state, step.lower(state, batches[0], carry, one).compile())

  def run(name, n=args.steps):
    st, c = variants[name][0], carry
    for b in batches[1 : n + 1]:
      st, _, c = variants[name][1](st, b, c, one)
    jax.block_until_ready(st)

  after = {k: variants[k][1](variants[k][0], batches[1], carry, one)[0].params for k in variants}

  def max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))

  pairs = {
    "dW after the scan vs default": ("default", "dW after the scan"),
    "per gate vs default": ("default", "gate activations per gate"),
    "prefetched vs hoisted": ("hoisted", "hoisted, slices prefetched"),
  }
  differences = {
    k: max_diff(after[a], after[b]) for k, (a, b) in pairs.items() if a in after and b in after
  }
  for name in variants:
    run(name, 3)
  ms = {k: [] for k in variants}
  for r in range(args.rounds):
    for name in list(variants)[:: 1 if r % 2 == 0 else -1]:
      t0 = time.perf_counter()
      run(name)
      ms[name].append((time.perf_counter() - t0) / args.steps * 1e3)
  ratios = {k: statistics.median(a / b for a, b in zip(ms["default"], v)) for k, v in ms.items()}
  top = {}
  for name in ("default", "hoisted") if args.profile else ():
    if name not in variants:
      continue
    compiled = variants[name][1]
    text = compiled.as_text()
    ops = hlo_ops(text)
    module = re.search(r"HloModule ([\w.\-]+)", text).group(1)
    with tempfile.TemporaryDirectory() as d:
      with jax.profiler.trace(d, create_perfetto_trace=True):
        run(name)
      seconds = trace_op_seconds(d, module)
    top[name] = [
      dict(
        op=op,
        ms_per_step=s / args.steps * 1e3,
        category=ops.get(op, {}).get("category"),
        shape=(re.search(rf"%{re.escape(op)} = (\S+)", text) or [None, None])[1],
      )
      for op, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:8]
    ]
  result = dict(
    ms_per_step={k: statistics.median(v) for k, v in ms.items()},
    samples=ms,
    speed_ratio_to_default=ratios,
    max_param_difference_after_one_step=differences,
    top_ops=top,
    rounds=args.rounds,
    steps=args.steps,
    shape=dict(streams=cfg.batch_size, chunk=cfg.tbptt_chunk),
    malloc=malloc,
    versions=versions(),
  )
  for k in variants:
    print(f"{k:28s} {result['ms_per_step'][k]:7.2f} ms/step  {ratios[k]:.3f}x the default")
  print(json.dumps(differences))
  for name, rows in top.items():
    print(name, [(r["op"], round(r["ms_per_step"], 2), r["shape"]) for r in rows])
  default_shape = (args.rows, args.chunk) == (0, 0)
  name = "probes.json" if default_shape else f"probes-B{cfg.batch_size}-T{cfg.tbptt_chunk}.json"
  write_json_atomically(os.path.join(HERE, name), result, indent=1)


if __name__ == "__main__":
  main()
