"""Training-throughput benchmark on a fixed workload W (see configs/benchmark.py).

For each of our strategies, and for peers measured in the same run (Flax `nn.RNN` with
`OptimizedLSTMCell`; PyTorch `nn.LSTM` when torch is installed): real (non-padding) tokens per
second of training (forward + backward + Adam), as the median of `repeats` timed passes after a
warm-up pass; compile seconds (ahead of time, before any timer); padding; and % of the GEMM
roofline. The roofline is the float32 matmul rate measured in the same run
([4096, F+H] x [F+H, 4H] through jax) divided by the LSTM's 3 x 2 x 4H(F+H) FLOPs per real token.

A pass is the first batches of an epoch (shuffled, so every bucket shows up) holding at least
`tokens_per_pass` real tokens. Batches are assembled on the host before timing and fed as numpy
arrays, so the timing covers host-to-device transfer and the step, not batch assembly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lstm_jax import batching, host, loop, tasks, train
from lstm_jax.data import RaggedDataset
from lstm_jax.model import SequenceModel


def workload(cfg) -> RaggedDataset:
  """W: log-normal lengths clipped to [min, max], F random features, one per-step target."""
  rng = np.random.default_rng(cfg.seed)
  dist = tasks.LengthDistribution(
    "lognormal", cfg.min_length, cfg.max_length, median=cfg.median_length, sigma=cfg.sigma
  )
  lengths = tasks.sample_lengths(dist, cfg.num_sequences, rng)
  total = int(lengths.sum())
  values = rng.normal(size=(total, cfg.features)).astype(np.float32)
  targets = rng.normal(size=(total, 1)).astype(np.float32)
  return RaggedDataset(values, lengths, targets, target_level="step", name="W")


GATES = {"lstm": 4, "gru": 3}  # gate blocks per step: the LSTM's i, f, g, o; the GRU's r, z, n


def flops_per_token(features: int, hidden: int, cell: str = "lstm") -> float:
  """Forward + backward of one step: 3 x (2 x gates x H x (F + H)); 4 gates for the LSTM, 3 for
  the GRU."""
  return 3 * 2 * GATES[cell] * hidden * (features + hidden)


def gemm_rate(features: int, hidden: int, repeats: int = 20) -> float:
  """Float32 GEMM FLOP/s of [4096, F+H] x [F+H, 4H] through jax (median of `repeats`)."""
  k = features + hidden
  a = jax.random.normal(jax.random.key(0), (4096, k), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (k, 4 * hidden), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * 4096 * k * 4 * hidden / statistics.median(times)


def scan_gemm_floor(cfg, steps: int = 64, repeats: int = 7) -> float:
  """Real tokens/s if a train step did nothing but its three GEMMs per time step, in a scan.

  The forward [B, F+H] x [F+H, 4H] plus the backward's two of the same size (input/recurrent
  gradient and weight gradient), each time step in `lax.scan` at the benchmark's batch B: the
  ceiling for any scan-based LSTM at this batch size on this machine, below the big-GEMM roofline
  because a [64, 288] operand cannot keep the cores as busy as a [4096, 288] one.
  """
  b, k, n = cfg.batch_size, cfg.features + cfg.hidden_size, 4 * cfg.hidden_size
  w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32) * 0.01
  x = jax.random.normal(jax.random.key(1), (steps, b, k), jnp.float32)

  def three_gemms(w, x):
    def step(acc, x_t):
      z = x_t @ w
      return acc + x_t.T @ z, z @ w.T

    return jax.lax.scan(step, jnp.zeros_like(w), x)

  f = jax.jit(three_gemms)
  jax.block_until_ready(f(w, x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(f(w, x))
    times.append(time.perf_counter() - t0)
  return steps * b / statistics.median(times)


def compile_probe(cfg_dict: dict, cache_dir: str, executables: bool = True) -> dict:
  """In a fresh process (see `compile_cache_probe`): compiles the train step for every shape of
  the bucket strategy with the persistent cache in `cache_dir` (JAX's compilation cache, and
  lstm_jax's executable cache unless `executables` is False); returns the seconds."""
  from lstm_jax import compiles

  compiles.enable_persistent_cache(cache_dir, executables=executables)
  cfg = types.SimpleNamespace(**cfg_dict)
  ds = workload(cfg)
  strategy = batching.Bucket(ds, batch_size=cfg.batch_size, num_buckets=cfg.num_buckets)
  model = SequenceModel(hidden_size=cfg.hidden_size, num_outputs=1)
  state = train.create_train_state(model, optax.adam(cfg.learning_rate), ds, seed=0)
  steps = train.StepFunctions.create()
  train.precompile(steps.train, state, strategy, 0)
  recs = steps.train.records.values()
  return dict(
    compiles=steps.train.compiles,
    cache_loads=steps.train.cache_loads,
    seconds=steps.train.compile_seconds,
    trace_lower_seconds=sum(r.lower_seconds for r in recs),
    xla_seconds=sum(r.compile_seconds for r in recs),
  )


def in_subprocess(module: str, function: str, kwargs: dict, tune_malloc: bool = False) -> dict:
  """`module.function(**kwargs)` in a fresh Python process (nothing compiled, cached or allocated
  in it yet); returns its dict result. The allocator starts at glibc's defaults (GLIBC_TUNABLES
  and MALLOC_* are dropped from the environment) and is tuned first thing if `tune_malloc`."""
  code = (
    f"import json, sys; from lstm_jax import host; host.tune_malloc({bool(tune_malloc)}); "
    f"from {module} import {function} as f; "
    f"print('PROBE', json.dumps(f(**json.loads(sys.argv[1]))))"
  )
  env = {
    k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")
  }
  proc = subprocess.run(
    [sys.executable, "-c", code, json.dumps(kwargs)],
    capture_output=True,
    text=True,
    timeout=900,
    env=dict(env, PYTHONPATH=os.pathsep.join(sys.path)),
  )
  if proc.returncode != 0:
    raise RuntimeError(f"{module}.{function} failed in a subprocess: {proc.stderr[-2000:]}")
  return json.loads(
    [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")][-1][6:]
  )


def compile_probe_in_subprocess(cfg_dict: dict, cache_dir: str, executables: bool = True) -> dict:
  """`compile_probe` in a fresh Python process (so nothing is compiled or cached in memory)."""
  return in_subprocess(
    "lstm_jax.benchmark.measure",
    "compile_probe",
    dict(cfg_dict=cfg_dict, cache_dir=cache_dir, executables=executables),
    tune_malloc=host.malloc_state()["tuned"],
  )


def compile_cache_probe(cfg) -> dict:
  """The bucket strategy's compile seconds in fresh processes sharing one cache directory: the
  first fills it; the second reads JAX's compilation cache only (still tracing and lowering);
  the third reads lstm_jax's executable cache too (tracing only)."""
  with tempfile.TemporaryDirectory() as cache_dir:
    first = compile_probe_in_subprocess(cfg.to_dict(), cache_dir)
    jax_only = compile_probe_in_subprocess(cfg.to_dict(), cache_dir, executables=False)
    second = compile_probe_in_subprocess(cfg.to_dict(), cache_dir)
  return dict(
    first=first,
    jax_cache_only=jax_only,
    second=second,
    jax_cache_only_ratio=jax_only["seconds"] / first["seconds"],
    ratio=second["seconds"] / first["seconds"],
  )


def _pass_batches(strategy: batching.Strategy, tokens_per_pass: int):
  plans, out, real = strategy.plan(0), [], 0
  for p in plans:
    out.append((p, batching.assemble(strategy.dataset, p, strategy.right_padded)))
    real += p.real_tokens
    if real >= tokens_per_pass:
      break
  return out


@dataclasses.dataclass
class Timing:
  name: str
  tokens_per_second: float
  pass_seconds: list[float]
  real_tokens: int
  computed_tokens: int
  compile_seconds: float
  compiles: int
  extra: dict = dataclasses.field(default_factory=dict)
  page_faults_per_step: float = 0.0  # minor faults in the timed passes, per train step
  # One more timed pass on demand (for the paired comparison); not part of the results file.
  run_pass: Callable[[], None] | None = dataclasses.field(default=None, repr=False, compare=False)

  def record(self) -> dict:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "run_pass"}
    return dict(d, padding_fraction=self.padding_fraction)

  @property
  def padding_fraction(self) -> float:
    return 1.0 - self.real_tokens / self.computed_tokens


def _time_passes(
  run_pass: Callable[[], None], real: int, repeats: int, steps: int
) -> tuple[float, list[float], float]:
  """(real tokens/s of the median pass, each pass's seconds, minor page faults per step)."""
  run_pass()  # warm-up
  secs, faults = [], host.minor_page_faults()
  for _ in range(repeats):
    t0 = time.perf_counter()
    run_pass()
    secs.append(time.perf_counter() - t0)
  faults = host.minor_page_faults() - faults
  return real / statistics.median(secs), secs, faults / (repeats * steps)


def malloc_words(m: dict | None) -> str:
  """The allocator a timing ran under (`host.malloc_state()`), in words."""
  if m and m.get("tuned"):
    return f"{m['libc']} malloc tuned (`lstm_jax.host.tune_malloc`)"
  return f"allocator at its defaults ({(m or {}).get('reason', 'not recorded')})"


_MODEL_DEFAULTS = dict(unroll=1, backward="manual", matmul_dtype="float32", cell="lstm")


def time_ours(
  name: str, strategy: batching.Strategy, cfg, input_projection: str = "auto", **model_settings
) -> Timing:
  """Our train step on `strategy`'s batches: AOT-compiled shapes, then timed passes.
  `model_settings`: SequenceModel's (unroll, backward, matmul_dtype, cell, backend). A `cell`
  other than "lstm" runs model.CellLayer (autodiff; input_projection and backward unused);
  `backend` is the model's (the fused cuDNN LSTM takes the right-padded strategies' rows)."""
  ds = strategy.dataset
  settings = dict(_MODEL_DEFAULTS, **model_settings)
  model = SequenceModel(
    hidden_size=cfg.hidden_size, num_outputs=1, input_projection=input_projection, **settings
  )
  state = train.create_train_state(model, optax.adam(cfg.learning_rate), ds, seed=0)
  steps = train.StepFunctions.create()
  train.precompile(steps.train, state, strategy, 0)
  batches = _pass_batches(strategy, cfg.tokens_per_pass)
  zeros = {p.batch_size: model.zero_carry(p.batch_size) for p, _ in batches}
  box = [state]

  def run_pass():
    st, carry = box[0], None
    for p, b in batches:
      c = carry if strategy.carries_state and carry is not None else zeros[p.batch_size]
      st, _, carry = steps.train(st, b, c, np.float32(p.lr_scale))
    jax.block_until_ready(st)
    box[0] = st

  real = sum(p.real_tokens for p, _ in batches)
  tps, secs, faults = _time_passes(run_pass, real, cfg.repeats, len(batches))
  return Timing(
    name,
    tps,
    secs,
    real,
    sum(p.computed_tokens for p, _ in batches),
    steps.train.compile_seconds,
    steps.train.compiles,
    dict(
      shapes=len(strategy.shapes()),
      input_projection=input_projection,
      **{k: settings[k] for k in _MODEL_DEFAULTS},
    ),
    faults,
    run_pass,
  )


class _FlaxRNNModel(nn.Module):
  """The peer: flax.linen.RNN(OptimizedLSTMCell), or RNN(GRUCell) for cell "gru", with
  seq_lengths, and a Dense head.

  dtype: the cell's computation dtype (Flax's own reduced-precision option: bfloat16 matmuls
  and gate math, float32 parameters); the head stays float32."""

  hidden_size: int
  dtype: str = "float32"
  cell: str = "lstm"

  @nn.compact
  def __call__(self, x, seq_lengths):
    cls = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[self.cell]
    cell = cls(self.hidden_size, dtype=jnp.dtype(self.dtype))
    h = nn.RNN(cell)(x, seq_lengths=seq_lengths)
    return nn.Dense(1)(h.astype(jnp.float32))


def time_flax_rnn(
  name: str, strategy: batching.Strategy, cfg, dtype: str = "float32", cell: str = "lstm"
) -> Timing:
  """Flax's own nn.RNN on the same batches (right-padded, seq_lengths from the mask)."""
  ds = strategy.dataset
  model = _FlaxRNNModel(cfg.hidden_size, dtype, cell)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1, ds.num_features)), jnp.ones(1, jnp.int32))

  def predict(p, inputs, mask):
    return model.apply(p, inputs, mask.sum(axis=1))

  extra = dict(matmul_dtype=dtype, cell=cell)
  return time_right_padded(name, strategy, cfg, predict, params, extra)


def time_right_padded(
  name: str, strategy: batching.Strategy, cfg, predict: Callable, params, extra: dict
) -> Timing:
  """A train step (Adam, the per-step MSE) of `predict(params, inputs, mask) -> [B, T, 1]` on
  `strategy`'s right-padded batches: every shape compiled ahead of time, then timed passes
  (the peers' harness: Flax's nn.RNN, the fused cuDNN LSTM)."""
  ds = strategy.dataset
  tx = optax.adam(cfg.learning_rate)

  def step(params, opt_state, inputs, targets, weights, mask):
    def loss_fn(p):
      err = jnp.mean(jnp.square(predict(p, inputs, mask) - targets), axis=-1)
      return jnp.sum(weights * err) / jnp.maximum(jnp.sum(weights), 1.0)

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  jitted = jax.jit(step, donate_argnums=(0, 1))
  batches = _pass_batches(strategy, cfg.tokens_per_pass)
  opt_state = tx.init(params)
  compiled, t0 = {}, time.perf_counter()
  for b, t in strategy.shapes():

    def sds(*s, d=jnp.float32):
      return jax.ShapeDtypeStruct(s, d)

    compiled[(b, t)] = jitted.lower(
      params, opt_state, sds(b, t, ds.num_features), sds(b, t, 1), sds(b, t), sds(b, t, d=jnp.bool_)
    ).compile()
  compile_seconds = time.perf_counter() - t0
  box = [params, opt_state]

  def run_pass():
    p, o = box
    for plan, bt in batches:
      p, o = compiled[plan.shape](p, o, bt.inputs, bt.targets, bt.weights, bt.mask)
    jax.block_until_ready(p)
    box[:] = [p, o]

  real = sum(p.real_tokens for p, _ in batches)
  tps, secs, faults = _time_passes(run_pass, real, cfg.repeats, len(batches))
  return Timing(
    name,
    tps,
    secs,
    real,
    sum(p.computed_tokens for p, _ in batches),
    compile_seconds,
    len(compiled),
    dict(shapes=len(compiled), **extra),
    faults,
    run_pass,
  )


def _peer_batches(strategy: batching.Strategy, cfg, to_batch_max: bool = False):
  """A timed pass's batches for a peer: (plan, inputs, mask, targets, weights) with the empty
  rows left out (a bucket's last batch), so the peer does no more work than its real rows;
  `to_batch_max`: cut to the longest sequence in the batch, else the batch's own width."""
  for plan, b in _pass_batches(strategy, cfg.tokens_per_pass):
    rows = b.mask.any(axis=1)
    t = int(b.mask.sum(axis=1).max()) if to_batch_max else b.mask.shape[1]
    yield plan, b.inputs[rows, :t], b.mask[rows, :t], b.targets[rows, :t], b.weights[rows, :t]


class PeerSkipped(Exception):
  """A peer that is installed but cannot run here (the reason is its message)."""


def onednn_info() -> dict | None:
  """PyTorch's oneDNN: whether it is available, its version, and which oneDNN RNN primitive a
  padded nn.LSTM training step runs in float32 and under bfloat16 autocast (from ONEDNN_VERBOSE,
  in a fresh process: `ref` is oneDNN's reference implementation, `jit`/`brgemm` its optimised
  ones), or why it could not run. None without torch."""
  try:
    import torch
  except ImportError:
    return None
  version = re.search(r"(?:oneDNN|MKL-DNN) v([\d.]+)", torch.__config__.show())
  out = dict(
    torch=torch.__version__,
    mkldnn_available=bool(torch.backends.mkldnn.is_available()),
    onednn_version=version.group(1) if version else None,
  )
  for dtype in ("float32", "bfloat16"):
    code = (
      "import torch\n"
      "lstm = torch.nn.LSTM(8, 16, batch_first=True)\n"
      "x = torch.randn(4, 10, 8)\n"
      + (
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n  y, _ = lstm(x)\n"
        if dtype == "bfloat16"
        else "y, _ = lstm(x)\n"
      )
      + "y.float().sum().backward()\n"
    )
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    done = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    impls = sorted(
      {
        line.split(",")[5] + " " + line.split(",")[6]
        for line in done.stdout.splitlines()
        if line.startswith("onednn_verbose") and ",exec,cpu,rnn," in line
      }
    )
    if done.returncode == 0:
      out[f"lstm_{dtype}"] = impls or ["no oneDNN RNN primitive ran"]
    else:
      said = (done.stderr.strip().splitlines() or ["?"])[-1].split(". Run workload")[0]
      out[f"lstm_{dtype}"] = f"failed ({said[:200]})"
  return out


def time_torch(
  name: str,
  strategy: batching.Strategy,
  cfg,
  packed: bool,
  dtype: str = "float32",
  pad_to_batch: bool = False,
) -> Timing | None:
  """PyTorch nn.LSTM on the same batches: pack_padded_sequence, or padded (to the batch's own
  width with `pad_to_batch`: a bucket's boundary, as lstm_jax's bucket rows compute; else to the
  longest sequence in the batch). dtype "bfloat16": under torch.autocast (bfloat16 matmuls
  through oneDNN); raises PeerSkipped where the CPU's oneDNN has no such LSTM primitive. Empty
  rows (a bucket's last batch) are left out, so the peer does no more work than its real rows."""
  try:
    import torch
  except ImportError:
    return None
  torch.manual_seed(0)
  torch.set_num_threads(max(1, torch.get_num_threads()))
  ds = strategy.dataset
  lstm = torch.nn.LSTM(ds.num_features, cfg.hidden_size, batch_first=True)
  head = torch.nn.Linear(cfg.hidden_size, 1)
  opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=cfg.learning_rate)
  batches = [
    (plan, *map(torch.from_numpy, (x, y, w, m.sum(axis=1))))
    for plan, x, m, y, w in _peer_batches(strategy, cfg, to_batch_max=not pad_to_batch)
  ]

  def run_pass():
    for _, x, y, w, lengths in batches:
      opt.zero_grad()
      if packed:
        seq = torch.nn.utils.rnn.pack_padded_sequence(
          x, lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = lstm(seq)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(
          out, batch_first=True, total_length=x.shape[1]
        )
      elif dtype == "bfloat16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
          out, _ = lstm(x)
        out = out.float()
      else:
        out, _ = lstm(x)
      err = ((head(out) - y) ** 2).mean(-1)
      ((w * err).sum() / w.sum()).backward()
      opt.step()

  if dtype == "bfloat16":
    try:
      run_pass()
    except RuntimeError as e:  # oneDNN has no bfloat16 LSTM primitive on this CPU
      raise PeerSkipped(str(e).splitlines()[0].split(". Run workload")[0][:200]) from None

  real = sum(p.real_tokens for p, *_ in batches)
  # packed: the LSTM runs real steps only; padded: every step of the batch-max rectangle
  computed = real if packed else sum(int(x.shape[0] * x.shape[1]) for _, x, *_ in batches)
  tps, secs, faults = _time_passes(run_pass, real, cfg.repeats, len(batches))
  return Timing(
    name,
    tps,
    secs,
    real,
    computed,
    0.0,
    0,
    dict(torch=torch.__version__, matmul_dtype=dtype, cell="lstm"),
    faults,
    run_pass,
  )


def time_keras(name: str, strategy: batching.Strategy, cfg) -> Timing | None:
  """Keras 3's LSTM on its JAX backend (what a Keras user who buckets by length gets): each
  batch padded to its bucket's boundary, the padding masked (`mask=`), per-step MSE weighted
  as the other rows, Adam, `train_on_batch` (jitted once per shape). None without keras."""
  os.environ.setdefault("KERAS_BACKEND", "jax")
  try:
    import keras
  except ImportError:
    return None
  if keras.backend.backend() != "jax":
    raise PeerSkipped(f"keras runs on its {keras.backend.backend()} backend here, not jax")
  keras.utils.set_random_seed(0)
  ds = strategy.dataset
  x_in = keras.Input(shape=(None, ds.num_features))
  m_in = keras.Input(shape=(None,), dtype="bool")
  h = keras.layers.LSTM(cfg.hidden_size, return_sequences=True)(x_in, mask=m_in)
  model = keras.Model([x_in, m_in], keras.layers.Dense(1)(h))
  model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="mse")
  batches = list(_peer_batches(strategy, cfg))

  def run_pass():
    for _, x, m, y, w in batches:
      model.train_on_batch([x, m], y[..., None], sample_weight=w)

  real = sum(p.real_tokens for p, *_ in batches)
  computed = sum(int(x.shape[0] * x.shape[1]) for _, x, *_ in batches)
  t0 = time.perf_counter()
  run_pass()  # every shape compiles here (keras' jitted train step, once per shape)
  first = time.perf_counter() - t0
  tps, secs, faults = _time_passes(run_pass, real, cfg.repeats, len(batches))
  return Timing(
    name,
    tps,
    secs,
    real,
    computed,
    max(0.0, first - statistics.median(secs)),  # the first pass's extra: its compiles
    len({x.shape for _, x, *_ in batches}),
    dict(keras=keras.__version__, matmul_dtype="float32", cell="lstm"),
    faults,
    run_pass,
  )


def paired_comparison(ours: Timing, peer: Timing, cfg, rounds: int = 5) -> dict:
  """`ours` against `peer` and against the GEMM roofline, measured side by side.

  The machine is shared and its speed drifts over minutes, so rows timed minutes apart (and a
  GEMM rate taken at the start or end) can flatter or wrong a ratio. Here each round times one
  pass of each, then the GEMM rate, back to back; the ratios are per round and the medians are
  reported.
  """
  flops = flops_per_token(cfg.features, cfg.hidden_size, ours.extra.get("cell", "lstm"))
  speedups, fractions = [], []
  run_ours, run_peer = ours.run_pass, peer.run_pass
  if run_ours is None or run_peer is None:
    raise ValueError("paired rounds need both timings' passes (Timing.run_pass)")
  for _ in range(rounds):
    t0 = time.perf_counter()
    run_ours()
    t1 = time.perf_counter()
    run_peer()
    t2 = time.perf_counter()
    rate = gemm_rate(cfg.features, cfg.hidden_size, repeats=10)
    ours_tps, peer_tps = ours.real_tokens / (t1 - t0), peer.real_tokens / (t2 - t1)
    speedups.append(ours_tps / peer_tps)
    fractions.append(ours_tps / (rate / flops))
  return dict(
    ours=ours.name,
    peer=peer.name,
    rounds=rounds,
    speedups=speedups,
    roofline_fractions=fractions,
    speedup=statistics.median(speedups),
    roofline_fraction=statistics.median(fractions),
  )


def memory_table(cfg, dataset: RaggedDataset, lengths=(64, 128, 256, 512)) -> list[dict]:
  """XLA temp memory of one compiled train step against T (pad/bucket), and for tbptt's chunk."""
  model = SequenceModel(hidden_size=cfg.hidden_size, num_outputs=1)
  state = train.create_train_state(model, optax.adam(cfg.learning_rate), dataset, seed=0)
  rows = []
  for t in lengths:
    fn = train.StepFunctions.create().train
    fn.compile(*train.abstract_step_args(fn, state, dataset, (cfg.batch_size, t)))
    rec = next(iter(fn.records.values()))
    rows.append(dict(batch=cfg.batch_size, length=t, temp_bytes=rec.temp_bytes))
  return rows


def fit_overhead(name: str, strategy: batching.Strategy, cfg, rounds: int = 5) -> dict:
  """`loop.fit` (batch assembly, host-to-device transfer, per-step bookkeeping: research code's
  loop) against the benchmark's pre-assembled passes over the same batches, side by side.

  Each round times one pre-assembled pass (`time_ours`'s loop over batches assembled before the
  timer) and one `loop.fit` call over the same first batches of epoch 0 (the call's whole wall
  time: its checks, the stream of plans, assembly, the steps and the last step's metrics), from
  copies of the same state, all shapes compiled before. Returns the per-round ratios of fit's
  real tokens/s to the pre-assembled pass's, and their median: 1 - median is what fit loses.
  """
  ds = strategy.dataset
  model = SequenceModel(hidden_size=cfg.hidden_size, num_outputs=1)
  state = train.create_train_state(model, optax.adam(cfg.learning_rate), ds, seed=0)
  steps = train.StepFunctions.create()
  train.precompile(steps.train, state, strategy, 0)
  batches = _pass_batches(strategy, cfg.tokens_per_pass)
  real = sum(p.real_tokens for p, _ in batches)
  zeros = {p.batch_size: model.zero_carry(p.batch_size) for p, _ in batches}

  def assembled_pass() -> float:
    st, carry = jax.tree.map(jnp.copy, state), None
    t0 = time.perf_counter()
    for p, b in batches:
      c = carry if strategy.carries_state and carry is not None else zeros[p.batch_size]
      st, _, carry = steps.train(st, b, c, np.float32(p.lr_scale))
    jax.block_until_ready(st)
    return time.perf_counter() - t0

  def fit_pass() -> float:
    st = jax.tree.map(jnp.copy, state)
    t0 = time.perf_counter()
    result = loop.fit(st, strategy, real_tokens=real, steps=steps)
    jax.block_until_ready(result.state)
    assert len(result.history) == len(batches), (len(result.history), len(batches))
    return time.perf_counter() - t0

  assembled_pass(), fit_pass()  # warm-up
  pairs = [(assembled_pass(), fit_pass()) for _ in range(rounds)]
  ratios = [a / f for a, f in pairs]  # (real / f) / (real / a)
  return dict(
    strategy=name,
    rounds=rounds,
    real_tokens=real,
    steps=len(batches),
    assembled_seconds=[a for a, _ in pairs],
    fit_seconds=[f for _, f in pairs],
    ratios=ratios,
    ratio=statistics.median(ratios),
    compiles=steps.train.compiles,
  )


def cost_model_check(cfg, strategies: dict, rows: list[Timing]) -> dict:
  """lstm_jax.runner.costs against this run on W: a calibration of the benchmark's model (two shapes
  compiled and timed), then, for each of our float32 LSTM rows with the manual backward and the
  in-step projection (the calibrated step), the predicted seconds of its timed pass (the sum of
  `step_seconds` over the pass's batches) and compile seconds against the measured ones."""
  from lstm_jax.runner import (
    costs,
  )  # the runner's cost model (the library never imports the harness)

  ds = next(iter(strategies.values())).dataset
  model = SequenceModel(hidden_size=cfg.hidden_size, num_outputs=1)
  state = train.create_train_state(model, optax.adam(cfg.learning_rate), ds, seed=0)
  shapes = costs.calibration_shapes(ds, cfg.batch_size * int(cfg.median_length))
  cal = costs.calibrate(state, ds, shapes)
  out = []
  for t in rows:
    x = t.extra
    if (x.get("cell"), x.get("backward"), x.get("matmul_dtype"), x.get("input_projection")) != (
      "lstm",
      "manual",
      "float32",
      "in_step",
    ):
      continue
    strategy = strategies[x["key"]]
    plans = [p for p, _ in _pass_batches(strategy, cfg.tokens_per_pass)]
    out.append(
      dict(
        name=t.name,
        predicted_pass_seconds=sum(cal.step_seconds(p.batch_size, p.length) for p in plans),
        measured_pass_seconds=statistics.median(t.pass_seconds),
        predicted_compile_seconds=len(strategy.shapes()) * cal.compile_seconds,
        measured_compile_seconds=t.compile_seconds,
      )
    )
  return dict(calibration=dataclasses.asdict(cal), rows=out)
