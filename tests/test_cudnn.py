"""The cuDNN LSTM's wiring (lstm_jax.cudnn), held on the CPU to lstm_jax's own LSTM through
jax.experimental.rnn's reference implementation: weights packed into cuDNN's flat layout and
back exactly; outputs, final carry and gradients equal to float32 rounding (1e-5) on ragged,
right-padded rows with a zero-length row, for a stack and for the bidirectional stack."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import max_rel_err
from lstm_jax import cudnn
from lstm_jax.errors import DataError
from lstm_jax.model import LSTM, BidirectionalLSTM, layer_params

TOL = 1e-5
B, T, F, H = 5, 9, 3, 8
LENGTHS = np.array([9, 1, 0, 5, 7], np.int32)  # a full row, a single step, an empty row


def _inputs():
  x = jax.random.normal(jax.random.key(0), (B, T, F))
  mask = jnp.arange(T)[None, :] < LENGTHS[:, None]
  return jnp.where(mask[..., None], x, 0.0), mask


def _stack(params, bidirectional, num_layers):
  if bidirectional:
    return [(params[f"forward_{k}"], params[f"backward_{k}"]) for k in range(num_layers)]
  return layer_params(params)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["stack", "bidirectional"])
def test_the_fused_lstm_equals_lstm_jax_s_on_ragged_rows(bidirectional):
  num_layers = 2
  x, mask = _inputs()
  module = (BidirectionalLSTM if bidirectional else LSTM)(H, num_layers=num_layers)
  params = module.init(jax.random.key(1), x, mask=mask)["params"]
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
  carry0 = jax.tree.map(
    lambda z: jax.random.normal(jax.random.key(3), z.shape), module.zero_carry(B)
  )  # a nonzero start: where an empty row's carry must stay

  def scan(p, c):
    return module.apply({"params": p}, x, mask=mask, initial_carry=c)

  def fused(layers, c):
    return cudnn.lstm(
      layers, x, LENGTHS, bidirectional=bidirectional, initial_carry=c, impl="reference"
    )

  want_y, want_carry = jax.jit(scan)(params, carry0)  # jitted: compiled whole, not op by op
  got_y, got_carry = jax.jit(fused)(_stack(params, bidirectional, num_layers), carry0)
  assert got_y.shape == want_y.shape and max_rel_err(got_y, want_y) <= TOL
  assert jax.tree.structure(got_carry) == jax.tree.structure(want_carry)
  assert max_rel_err(got_carry, want_carry) <= TOL
  assert not np.asarray(got_y[2]).any()  # the empty row: zero outputs, its carry untouched
  assert all(np.array_equal(g[2], w[2]) for g, w in zip(jax.tree.leaves(got_carry),
                                                       jax.tree.leaves(carry0)))  # fmt: skip

  def loss(p, fused):
    stack = _stack(p, bidirectional, num_layers)
    if fused:
      y, c = cudnn.lstm(stack, x, LENGTHS, bidirectional=bidirectional, impl="reference")
    else:
      y, c = module.apply({"params": p}, x, mask=mask)
    return jnp.sum(jnp.sin(y)) + sum(jnp.sum(v**2) for v in jax.tree.leaves(c))

  grad = jax.jit(jax.grad(loss), static_argnums=1)  # jitted: compiled whole, not op by op
  assert max_rel_err(grad(params, True), grad(params, False)) <= TOL


def test_weights_pack_into_cudnn_s_layout_and_back_exactly():
  """pack_weights gives get_num_params_in_lstm numbers, in the order unpack_lstm_weights reads
  (W_ih = kernel.T: rows i, f, g, o), and unpack_weights gives back every array bit for bit."""
  from jax.experimental import rnn

  for bidirectional in (False, True):
    x, mask = _inputs()
    module = (BidirectionalLSTM if bidirectional else LSTM)(H, num_layers=2)
    params = module.init(jax.random.key(4), x, mask=mask)["params"]
    layers = _stack(params, bidirectional, 2)
    flat = cudnn.pack_weights(layers, bidirectional)
    assert flat.shape == (rnn.get_num_params_in_lstm(F, H, 2, bidirectional),)
    w_ih, _, b_ih, b_hh = rnn.unpack_lstm_weights(flat, F, H, 2, bidirectional)
    first = layers[0][0] if bidirectional else layers[0]
    assert np.array_equal(w_ih[0][:H], np.asarray(first["kernel"])[:, :H].T)  # the input gate
    assert np.array_equal(b_ih[0], first["bias"]) and not np.asarray(b_hh[0]).any()
    back = cudnn.unpack_weights(flat, F, H, 2, bidirectional)
    assert jax.tree.all(jax.tree.map(np.array_equal, back, layers))


def test_the_fused_lstm_refuses_what_cudnn_cannot_do():
  x, mask = _inputs()
  params = LSTM(H).init(jax.random.key(1), x, mask=mask)["params"]
  with pytest.raises(DataError, match="computes in float32"):
    cudnn.lstm(layer_params(params), x.astype(jnp.bfloat16), LENGTHS, impl="reference")
  with pytest.raises(DataError, match=r"seq_lengths must be <int>\[5\]"):
    cudnn.lstm(layer_params(params), x, LENGTHS[:3], impl="reference")


def test_the_gpu_script_checks_its_wiring_and_refuses_the_cpu(tmp_path, capsys):
  """lstm_jax.benchmark.gpu (benchmarks/gpu/run.sh): its fused train step runs through the
  reference on the CPU and compiles once per shape (its exactness check is the wiring the tests
  above hold), and asked for cuDNN on a machine without a GPU it says so and exits 2."""
  from configs import benchmark as bench_config
  from lstm_jax import batching
  from lstm_jax.benchmark import gpu, measure

  cfg = bench_config.get_config("default")
  cfg.update(num_sequences=24, max_length=20, median_length=8.0, hidden_size=8, features=4)
  cfg.update(batch_size=8, repeats=1, tokens_per_pass=100)
  row = gpu.time_fused(
    "fused pad", batching.Pad(measure.workload(cfg), batch_size=8), cfg, "reference"
  )
  assert row.compiles == 1 and row.tokens_per_second > 0
  assert gpu.main(["--out", str(tmp_path / "g.md"), "--impl", "cudnn"]) == 2
  assert "needs a CUDA GPU" in capsys.readouterr().err


def test_the_model_s_backend_setting_picks_the_scan_on_the_cpu_and_fuses_on_request():
  """SequenceModel(backend=...): "auto" runs the scan on the CPU (the same numbers as before:
  the scan's own path, bit for bit); "reference" (cudnn's wiring, anywhere) makes the same
  parameters from the same init and gives the scan's outputs, carry and gradients to 1e-5 on
  right-padded rows; a call the fused LSTM cannot serve falls back under "auto" and is one
  ConfigError under an explicit backend."""
  from lstm_jax.errors import ConfigError
  from lstm_jax.model import SequenceModel

  x, mask = _inputs()
  lengths = jnp.asarray(LENGTHS)
  auto, scan = SequenceModel(H, 2, num_layers=2), SequenceModel(H, 2, num_layers=2, backend="scan")
  fused = SequenceModel(H, 2, num_layers=2, backend="reference")
  params = scan.init(jax.random.key(1), x, seq_lengths=lengths)
  assert jax.tree.all(
    jax.tree.map(np.array_equal, params, fused.init(jax.random.key(1), x, seq_lengths=lengths))
  )
  want = scan.apply(params, x, seq_lengths=lengths)
  by_auto = auto.apply(params, x, seq_lengths=lengths)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(by_auto), jax.tree.leaves(want)))
  got = fused.apply(params, x, seq_lengths=lengths)
  assert max_rel_err(got, want) <= TOL

  def loss(p, model):
    preds, carry = model.apply(p, x, seq_lengths=lengths)
    return jnp.sum(jnp.sin(preds)) + sum(jnp.sum(v**2) for v in jax.tree.leaves(carry))

  assert max_rel_err(jax.grad(loss)(params, fused), jax.grad(loss)(params, scan)) <= TOL
  by_mask = auto.apply(params, x, mask=mask)  # a mask: the scan, whatever the backend
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(by_mask), jax.tree.leaves(want)))
  with pytest.raises(ConfigError, match="needs right-padded rows given as seq_lengths="):
    fused.apply(params, x, mask=mask)
  with pytest.raises(
    ConfigError, match="backend='cudnn' is the fused LSTM's: it needs cell='lstm'"
  ):
    SequenceModel(H, 2, cell="gru", backend="cudnn").init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match="backend must be one of"):
    SequenceModel(H, 2, backend="fast").init(jax.random.key(0), x)
  if jax.default_backend() != "gpu":
    with pytest.raises(ConfigError, match="backend='cudnn' needs a CUDA GPU; this machine runs"):
      SequenceModel(H, 2, backend="cudnn").init(jax.random.key(0), x, seq_lengths=lengths)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["stack", "bidirectional"])
def test_linen_and_nnx_models_fuse_both_stacks_to_the_scan_s_numbers(bidirectional, monkeypatch):
  """The fused path in each front end and stack: linen's and NNX's SequenceModel with
  backend="reference" (the cuDNN wiring, any device) give the scan's predictions, carry and
  gradients to 1e-5 on right-padded rows with an empty row, from the same parameters; with
  dropout configured but off (deterministic) the call still fuses."""
  from flax import nnx

  from lstm_jax import nnx_model
  from lstm_jax.model import SequenceModel

  fused_calls, real = [], cudnn.lstm
  monkeypatch.setattr(
    cudnn,
    "lstm",
    lambda *a, **k: fused_calls.append(k.get("bidirectional", False)) or real(*a, **k),
  )
  x, _ = _inputs()
  lengths = jnp.asarray(LENGTHS)
  kw = dict(num_layers=2, bidirectional=bidirectional)
  if not bidirectional:
    kw.update(dropout_rate=0.3, input_dropout=0.2)  # deterministic calls: dropout off
  scan = SequenceModel(H, 3, backend="scan", **kw)
  params = scan.init(jax.random.key(1), x, seq_lengths=lengths)["params"]

  def loss(fn, p):
    preds, carry = fn(p)
    return jnp.sum(jnp.sin(preds)) + sum(jnp.sum(v**2) for v in jax.tree.leaves(carry))

  def linen(model):
    return lambda p: model.apply({"params": p}, x, seq_lengths=lengths)

  def grad(fn):  # compiled as one program (eager JAX compiles every operation alone)
    return jax.jit(jax.grad(lambda p: loss(fn, p)))

  want, want_grad = jax.jit(linen(scan))(params), grad(linen(scan))(params)
  assert not fused_calls
  fused = SequenceModel(H, 3, backend="reference", **kw)
  assert max_rel_err(jax.jit(linen(fused))(params), want) <= TOL
  assert max_rel_err(grad(linen(fused))(params), want_grad) <= TOL

  m = nnx_model.SequenceModel(H, 3, num_features=F, backend="reference", rngs=nnx.Rngs(0), **kw)
  nnx_model.from_linen_params(m, params)
  m.eval()
  assert max_rel_err(nnx.jit(lambda m: m(x, seq_lengths=lengths))(m), want) <= TOL
  graphdef, state, rest = nnx.split(m, nnx.Param, ...)

  def nnx_call(s):
    return nnx.merge(graphdef, s, rest)(x, seq_lengths=lengths)

  got_grad = grad(nnx_call)(state)
  nnx_model.from_linen_params(m, want_grad)  # the scan's gradient in NNX's tree, to compare
  assert max_rel_err(jax.tree.leaves(got_grad), jax.tree.leaves(nnx.state(m, nnx.Param))) <= TOL
  assert len(fused_calls) == 4 and set(fused_calls) == {bidirectional}  # each call fused


def test_the_runner_fuses_the_rows_whose_layout_allows_and_records_it(tmp_path, capsys):
  """config.model.backend in the runner: under "reference" (cuDNN's wiring, any device) the
  right-padded row (pad; bucket's rows are the same layout) trains and evaluates fused, the
  packed row keeps the scan, and each row records what its steps ran; each row compiles what
  it does under the scan, the fused row ends where the scan's does to float32 rounding over its
  steps, and the packed row, on the scan either way, bit for bit. The report, and the plan's
  note before any row trains, name a backend other than the scan."""
  import json

  from configs import compare
  from lstm_jax.runner import experiment

  cfg = compare.get_config("smoke")
  cfg.strategies = ("pad", "pack")
  cfg.data.max_sequences = 96
  cfg.plots, cfg.tune_malloc, cfg.predict_costs = False, False, False
  cfg.eval.num_buckets, cfg.checkpoint.enabled = 1, False  # fewer compiles, no writes
  runs, logs = {}, {}
  for backend in ("scan", "reference"):
    cfg.model.backend = backend
    experiment.train_and_evaluate(cfg, str(tmp_path / backend), quiet=False)
    logs[backend] = capsys.readouterr().err
    rows = json.loads((tmp_path / backend / "runs.json").read_text())
    runs[backend] = {r["strategy"]: r for r in rows}
  fused = dict(train="reference", eval="reference")
  scan = dict(train="scan", eval="scan")
  assert {s: r["backend"] for s, r in runs["reference"].items()} == dict(pad=fused, pack=scan)
  assert all(r["backend"] == scan for r in runs["scan"].values())
  for name, row in runs["reference"].items():
    want = runs["scan"][name]
    assert row["compiles"] == want["compiles"] and row["steps"] == want["steps"]
    assert row["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-4)
  assert runs["reference"]["pack"]["eval_loss"] == runs["scan"]["pack"]["eval_loss"]
  text = (tmp_path / "reference" / "report.md").read_text()
  assert "- pad: batch_size" in text and "; train step reference, eval step reference" in text
  assert "; train step" not in (tmp_path / "scan" / "report.md").read_text()
  # the plan's note, before any row trains, says which rows fuse
  assert "; train step reference" in next(
    x for x in logs["reference"].splitlines() if x.startswith("pad:")
  )
  assert "; train step" not in next(
    x for x in logs["reference"].splitlines() if x.startswith("pack:")
  )
  assert "; train step" not in logs["scan"]


def test_train_fit_fuses_right_padded_rows_and_refuses_what_an_explicit_backend_cannot():
  """loop.fit with backend="reference": a pad strategy's steps take the rows' lengths and train
  to the scan's parameters (1e-5 over a few Adam steps) with one compile; an explicit fused
  backend asked to train packed rows, or with dropout on, is one ConfigError before any step."""
  import flax.linen as nn
  import optax

  from helpers import ragged_features
  from lstm_jax import batching, loop, train
  from lstm_jax.backend import step_backend
  from lstm_jax.errors import ConfigError
  from lstm_jax.model import SequenceModel

  ds = ragged_features([7, 3, 9, 1, 5, 8, 2, 6], num_features=F, seed=0)
  results = {}
  for backend in ("scan", "reference"):
    model = SequenceModel(H, 2, backend=backend)
    state = train.create_train_state(model, optax.adam(1e-2), ds, seed=0)
    results[backend] = loop.fit(state, batching.Pad(ds, batch_size=4), epochs=2)
  fused = results["reference"]
  assert step_backend(fused.state.model, right_padded=True, training=True) == "reference"
  assert step_backend(nn.Dense(2), right_padded=True) == "scan"  # one's own module: as it is
  assert fused.steps.train.compiles == 1 and len(fused.history) == 4
  assert max_rel_err(fused.state.params, results["scan"].state.params) <= TOL
  pack = batching.Pack(ds, batch_size=2, row_length=12)
  with pytest.raises(ConfigError, match="backend='reference' runs right-padded rows, one sequence"):
    loop.fit(fused.state, pack, epochs=1)
  dropped = SequenceModel(H, 2, backend="reference", dropout_rate=0.5, num_layers=2)
  state = train.create_train_state(dropped, optax.adam(1e-2), ds, seed=0)
  with pytest.raises(ConfigError, match="dropout is in use"):
    loop.fit(state, batching.Pad(ds, batch_size=4), epochs=1)
