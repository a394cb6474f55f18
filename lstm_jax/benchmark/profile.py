"""Where a train step's time goes: XLA's own trace of the compiled step, op by op.

The float32 train step (the benchmark's workload W, tbptt rows: B streams x K steps) is compiled
once; its HLO says which computation each instruction belongs to (the scan's while bodies, or
the rest) and what it is. The step then runs under `jax.profiler.trace`, whose CPU events name
the HLO instruction each thunk ran, and their durations are summed per category:

- GEMMs in the loop: dots, and fusions around one (XLA CPU's YNNPACK `ynn_fusion`, output
  fusions), inside a while body: the recurrent GEMMs (with the in-step projection, the input's
  share of each step's GEMM too);
- GEMMs outside the loop: the input projection hoisted over the chunk, the head, the weight
  gradients taken after the scan;
- elementwise: the other fusions and elementwise ops (gates, cell update, loss), in and out of
  the loop;
- data movement: copies, slices, dynamic (update) slices, transposes, broadcasts, concatenations,
  and fusions of nothing else (XLA's zero-filled buffers for the scan's stacked outputs);
- other: anything else (reductions outside fusions, custom calls that are not GEMMs).

Ops can overlap (XLA CPU runs independent thunks on several threads), so the categories are
shares of the summed op time; the step's wall time (measured without the tracer, median of
rounds) less that sum is the loop and dispatch overhead when positive. Set against it: the same
recurrent GEMMs alone, three per time step in a scan at the same shapes (`scan_gemm_floor`), and
the step's FLOPs at the machine's best big-GEMM rate (`gemm_rate`).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import statistics
import tempfile
import time

import jax
import numpy as np
import optax

from lstm_jax import batching, host, train
from lstm_jax.benchmark import measure as bench
from lstm_jax.model import SequenceModel

CATEGORIES = (
  "gemm_loop",
  "gemm_outside",
  "elementwise_loop",
  "elementwise_outside",
  "movement",
  "other",
)
LABELS = dict(
  gemm_loop="GEMMs in the loop (recurrent)",
  gemm_outside="GEMMs outside the loop",
  elementwise_loop="elementwise in the loop",
  elementwise_outside="elementwise outside the loop",
  movement="data movement (copies, slices, transposes)",
  other="other ops",
)
_CONTAINERS = {"while", "conditional", "call"}
_MOVEMENT = {
  "copy",
  "slice",
  "dynamic-slice",
  "dynamic-update-slice",
  "transpose",
  "broadcast",
  "concatenate",
  "pad",
  "reshape",
  "bitcast",
  "gather",
  "scatter",
  "tuple",
  "get-tuple-element",
  "parameter",
  "constant",
  "iota",
}
_GEMM = {"dot", "convolution"}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([a-z][a-z0-9_\-]*)\(")
_CALLED = re.compile(r"(calls|body|condition|to_apply|branch_computations)=\{?%([\w.\-]+)")


def hlo_ops(text: str) -> dict[str, dict]:
  """Each instruction of a compiled module's HLO text: {name: {computation, opcode, calls,
  category}}. A computation is in the loop when a while calls it, or an in-loop instruction
  does; a fusion is a GEMM when its fused computation holds a dot (or XLA CPU marked it a
  YNNPACK fusion, which it does for dots only)."""
  ops: dict[str, dict] = {}
  comps: dict[str, list[str]] = {}
  current = None
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m and line.rstrip().endswith("{"):
      current = m.group(1)
      comps[current] = []
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      name, opcode = m.group(1), m.group(2)
      called = [c for _, c in _CALLED.findall(line)]
      ops[name] = dict(computation=current, opcode=opcode, calls=called, ynn="__ynn_fusion" in line)
      comps[current].append(name)
  in_loop: set[str] = set()
  frontier = [c for op in ops.values() if op["opcode"] == "while" for c in op["calls"]]
  while frontier:
    c = frontier.pop()
    if c in in_loop or c not in comps:
      continue
    in_loop.add(c)
    frontier += [x for name in comps[c] for x in ops[name]["calls"]]
  has_dot = {c for c, names in comps.items() if any(ops[n]["opcode"] in _GEMM for n in names)}
  moves_only = {  # fused computations that only move data: a broadcast, a dynamic update slice
    c for c, names in comps.items() if names and all(ops[n]["opcode"] in _MOVEMENT for n in names)
  }
  for op in ops.values():
    loop = op["computation"] in in_loop
    if op["opcode"] in _CONTAINERS:
      op["category"] = "container"
    elif op["opcode"] in _GEMM or op["ynn"] or any(c in has_dot for c in op["calls"]):
      op["category"] = "gemm_loop" if loop else "gemm_outside"
    elif op["opcode"] in _MOVEMENT or (op["calls"] and all(c in moves_only for c in op["calls"])):
      op["category"] = "movement"
    elif op["opcode"] == "fusion" or op["opcode"] not in ("custom-call", "reduce", "sort"):
      op["category"] = "elementwise_loop" if loop else "elementwise_outside"
    else:
      op["category"] = "other"
  return ops


def trace_op_seconds(trace_dir: str, module: str) -> dict[str, float]:
  """Seconds per HLO instruction of `module` in a perfetto trace written by
  `jax.profiler.trace(trace_dir, create_perfetto_trace=True)` (its complete events)."""
  paths = [
    os.path.join(d, f)
    for d, _, fs in os.walk(trace_dir)
    for f in fs
    if f.endswith(".trace.json.gz")
  ]
  if not paths:
    raise RuntimeError(f"no perfetto trace under {trace_dir}")
  with gzip.open(paths[0]) as f:
    events = json.load(f)["traceEvents"]
  out: dict[str, float] = {}
  for e in events:
    args = e.get("args") or {}
    if e.get("ph") != "X" or args.get("hlo_module") != module or "hlo_op" not in args:
      continue
    out[args["hlo_op"]] = out.get(args["hlo_op"], 0.0) + e.get("dur", 0.0) * 1e-6
  return out


def profile_step(cfg, rounds: int = 5, traced_steps: int = 20) -> dict:
  """The float32 tbptt train step on W (`cfg`: configs/benchmark.py): its op time by category
  (per step, from the trace), its wall time (per step, untraced median of `rounds`), the scan
  GEMM floor and the big-GEMM roofline at the same shapes."""
  ds = bench.workload(cfg)
  strategy = batching.TBPTT(ds, num_streams=cfg.batch_size, chunk_length=cfg.tbptt_chunk)
  model = SequenceModel(
    hidden_size=cfg.hidden_size, num_outputs=1, input_projection=cfg.input_projections[0]
  )
  state = train.create_train_state(model, optax.adam(cfg.learning_rate), ds, seed=0)
  plans = strategy.plan(0)[: traced_steps + 1]
  batches = [batching.assemble(ds, p, strategy.right_padded) for p in plans]
  step = jax.jit(train.train_step)
  carry = model.zero_carry(cfg.batch_size)
  compiled = step.lower(state, batches[0], carry, np.float32(1.0)).compile()
  text = compiled.as_text() or ""
  ops = hlo_ops(text)
  module = re.search(r"HloModule ([\w.\-]+)", text)
  module_name = module.group(1) if module else "jit_train_step"

  def run(n: int) -> None:
    st, c = state, carry
    for b in batches[1 : n + 1]:
      st, _, c = compiled(st, b, c, np.float32(1.0))
    jax.block_until_ready(st)

  run(traced_steps)  # warm
  walls = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    run(traced_steps)
    walls.append((time.perf_counter() - t0) / traced_steps)
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      run(traced_steps)
    seconds = trace_op_seconds(d, module_name)
  per_category = {c: 0.0 for c in CATEGORIES}
  unknown = 0.0
  for name, s in seconds.items():
    op = ops.get(name)
    if op is None:
      unknown += s
    elif op["category"] != "container":
      per_category[op["category"]] += s / traced_steps
  tokens = cfg.batch_size * cfg.tbptt_chunk
  flops = bench.flops_per_token(cfg.features, cfg.hidden_size) * tokens
  floor = bench.scan_gemm_floor(cfg, steps=cfg.tbptt_chunk)
  rate = bench.gemm_rate(cfg.features, cfg.hidden_size)
  wall = statistics.median(walls)
  return dict(
    shapes=dict(
      batch=cfg.batch_size, chunk=cfg.tbptt_chunk, features=cfg.features, hidden=cfg.hidden_size
    ),
    input_projection=cfg.input_projections[0],
    module=module_name,
    traced_steps=traced_steps,
    wall_seconds_per_step=wall,
    wall_samples=walls,
    op_seconds_per_step=per_category,
    ops_total_seconds_per_step=sum(per_category.values()),
    untraced_hlo_seconds=unknown / traced_steps,
    gemm_floor_seconds_per_step=tokens / floor,
    roofline_seconds_per_step=flops / rate,
    gemm_flops_per_second=rate,
    module_ops=len(ops),
    malloc=host.malloc_state(),
  )


def malloc_words(m: dict | None) -> str:
  """The allocator a timing ran under, in words, beside the benchmark rows' (tuned)."""
  tuned = bool(m and m.get("tuned"))
  return bench.malloc_words(m) + (
    ", as in the benchmark's rows" if tuned else ", unlike the benchmark's rows"
  )


def markdown(r: dict, cpu: str) -> str:
  """The profile as a table: seconds per step and shares, beside the GEMM-only references."""
  wall, ops = r["wall_seconds_per_step"], r["ops_total_seconds_per_step"]
  sh = r["shapes"]
  lines = [
    f"Float32 tbptt train step, B={sh['batch']} streams x K={sh['chunk']} steps,"
    f" F={sh['features']}, H={sh['hidden']}, input projection `{r['input_projection']}`; {cpu}."
    f" Op times from XLA's trace of {r['traced_steps']} steps; wall time untraced, median of"
    f" {len(r['wall_samples'])} rounds; {malloc_words(r.get('malloc'))}.",
    "",
    "| where | ms per step | share of op time | share of wall |",
    "| --- | --- | --- | --- |",
  ]
  for c in CATEGORIES:
    s = r["op_seconds_per_step"][c]
    lines.append(f"| {LABELS[c]} | {1e3 * s:.2f} | {100 * s / ops:.1f}% | {100 * s / wall:.1f}% |")
  lines.append(
    f"| all ops (summed; they can overlap) | {1e3 * ops:.2f} | 100% | {100 * ops / wall:.1f}% |"
  )
  rest = wall - ops
  lines.append(
    f"| loop and dispatch overhead (wall - ops) | {1e3 * max(rest, 0):.2f} | - |"
    f" {100 * max(rest, 0) / wall:.1f}% |"
  )
  lines.append(f"| **wall time of the step** | **{1e3 * wall:.2f}** | - | 100% |")
  g, roof = r["gemm_floor_seconds_per_step"], r["roofline_seconds_per_step"]
  lines += [
    "",
    f"Against the GEMMs alone at the same shapes: the three GEMMs per time step in a scan"
    f" (`scan_gemm_floor`) take {1e3 * g:.2f} ms per step, {100 * g / wall:.0f}% of the step's"
    f" wall time (the recurrent GEMMs above took {1e3 * r['op_seconds_per_step']['gemm_loop']:.2f}"
    f" ms); the step's FLOPs at the best big-GEMM rate ({r['gemm_flops_per_second'] / 1e9:.1f}"
    f" GFLOP/s) would take {1e3 * roof:.2f} ms.",
  ]
  return "\n".join(lines) + "\n"
