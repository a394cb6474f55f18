"""The masked LSTM: its math (gate order i, f, g, o), and exactness under padding, bucketing,
packing and truncated BPTT. "Exact" here means equal to float32 rounding: <= 1e-5 relative
(max |a - b| / max |b|) for outputs at real steps, the final carry and the parameter gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import max_rel_err, ragged_features
from lstm_jax import batching, train
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.layers import resolve_input_projection
from lstm_jax.model import (
  LSTM,
  SequenceClassifier,
  SequenceModel,
  last_real_step,
  layer_params,
)

TOL = 1e-5
LENGTHS = [1, 7, 3, 12, 5, 7, 3, 12, 1, 5, 7, 3]  # a length-1, repeats, a repeated maximum
H = 8


def numpy_lstm(x_TxF, layers):
  """Float64 reference: gates in the order i, f, g, o; returns (outputs [T, H], [(c, h)])."""

  def sig(z):
    return 1.0 / (1.0 + np.exp(-z))

  x = np.asarray(x_TxF, np.float64)
  carry = []
  for p in layers:
    w, u, b = (np.asarray(p[k], np.float64) for k in ("kernel", "recurrent_kernel", "bias"))
    hid = u.shape[0]
    c, h, out = np.zeros(hid), np.zeros(hid), []
    for t in range(x.shape[0]):
      z = x[t] @ w + h @ u + b
      i, f, g, o = z[:hid], z[hid : 2 * hid], z[2 * hid : 3 * hid], z[3 * hid :]
      c = sig(f) * c + sig(i) * np.tanh(g)
      h = sig(o) * np.tanh(c)
      out.append(h)
    x = np.stack(out)
    carry.append((c, h))
  return x, carry


@pytest.fixture(scope="module")
def setup():
  ds = ragged_features(LENGTHS, num_features=3, seed=0)
  model = SequenceModel(hidden_size=H, num_outputs=2, num_layers=2)
  state = train.create_train_state(model, optax.sgd(0.1), ds, seed=0)
  return ds, model, state


def _lstm(model, projection=None):
  return LSTM(
    model.hidden_size,
    model.num_layers,
    input_projection=projection or model.input_projection,
    matmul_dtype=model.matmul_dtype,
  )


@functools.partial(jax.jit, static_argnums=(0,))
def _alone_jit(model, params, x, y):
  out, carry = _lstm(model).apply({"params": params["lstm"]}, x[None])

  def loss(p):
    preds, _ = model.apply({"params": p}, x[None])
    return jnp.sum(jnp.mean(jnp.square(preds[0] - y), axis=-1))

  return out[0], carry, jax.grad(loss)(params)


_ALONE_CACHE = {}


def _alone(ds, model, state, i, projection=None, matmul_dtype="float32"):
  """Sequence i run by itself at its exact length, without mask or resets (unpadded):
  (outputs [L, H], carry, gradient of its summed loss). One compile per distinct length."""
  model = model.clone(
    input_projection=projection or model.input_projection, matmul_dtype=matmul_dtype
  )
  key = (model, i)
  if key not in _ALONE_CACHE:
    x, y = ds.sequence(i)
    _ALONE_CACHE[key] = _alone_jit(model, state.params, x, y)
  return _ALONE_CACHE[key]


@jax.jit
def _summed_loss_grad(state, batch, carry):
  """Gradient of sum(weights * per_step_loss) through the train step's own forward."""

  def f(p):
    return train._forward(p, state, batch, carry)[1][0]["loss_sum"]

  return jax.grad(f)(state.params)


_forward_jit = jax.jit(train._forward)


@functools.partial(jax.jit, static_argnums=(0,))
def _lstm_apply(lstm, params, inputs, mask, resets, carry):
  return lstm.apply({"params": params}, inputs, mask=mask, resets=resets, initial_carry=carry)


def test_forward_matches_numpy_reference_gate_order_ifgo(setup):
  ds, model, state = setup
  layers = layer_params(state.params)
  for i in (0, 3, 9):
    x, _ = ds.sequence(i)
    ref_out, ref_carry = numpy_lstm(x, layers)
    out, carry = _lstm(model).apply({"params": state.params["lstm"]}, x[None])
    assert np.allclose(out[0], ref_out, rtol=1e-5, atol=1e-6)
    for (c, h), (rc, rh) in zip(carry, ref_carry):
      assert np.allclose(c[0], rc, rtol=1e-5, atol=1e-6)
      assert np.allclose(h[0], rh, rtol=1e-5, atol=1e-6)


def test_model_settings_are_declared_with_the_linen_models_fields():
  """ModelSettings is written out (a type checker sees its fields); its fields are
  SequenceModel's, in order, with the same types and defaults, so neither can gain a setting
  the other lacks."""
  import dataclasses

  from lstm_jax.model import ModelSettings

  def fields(cls, skip=("parent", "name")):
    return [(f.name, str(f.type), f.default) for f in dataclasses.fields(cls) if f.name not in skip]

  assert fields(ModelSettings) == fields(SequenceModel)
  model = SequenceModel(4, 2, readout="max", cell="gru")
  assert SequenceModel(**dataclasses.asdict(model.settings)) == model


def test_parameter_layout(setup):
  _, _, state = setup
  l0, l1 = layer_params(state.params)
  assert l0["kernel"].shape == (3, 4 * H) and l1["kernel"].shape == (H, 4 * H)
  assert l0["recurrent_kernel"].shape == (H, 4 * H) and l0["bias"].shape == (4 * H,)
  # unit forget bias: ones on the second quarter (the f gate) only
  assert np.array_equal(np.asarray(l0["bias"]), np.repeat([0.0, 1.0, 0.0, 0.0], H))


MASK_STRATEGIES = {
  "pad": lambda ds: batching.Pad(ds, batch_size=5, max_length=17),
  "bucket": lambda ds: batching.Bucket(ds, batch_size=3, boundaries=[4, 8, 12, 20]),
  "pack": lambda ds: batching.Pack(ds, batch_size=2, row_length=15),
  "bucket_packed": lambda ds: batching.Bucket(ds, batch_size=2, boundaries=[8, 20], pack_rows=True),
}


# float32: every layout with either input projection. bfloat16 matmuls: the two layouts that
# hold every case between them (padding after one sequence; several sequences, resets and
# padding in one row), with either projection: the matmul code is the same for all four.
@pytest.mark.parametrize(
  "name, projection, matmul_dtype",
  [(n, p, "float32") for n in MASK_STRATEGIES for p in ("in_step", "hoisted")]
  + [(n, p, "bfloat16") for n in ("pad", "bucket_packed") for p in ("in_step", "hoisted")],
)
def test_mask_invariance_outputs_carry_gradients(setup, name, projection, matmul_dtype):
  """Alone at exact length == padded longer == in a bucket == packed in a row with others, in
  float32 and with bfloat16 matmuls (the same bfloat16 operands per row, so the same numbers)."""
  strategy = MASK_STRATEGIES[name]
  ds, model, state = setup
  model = model.clone(input_projection=projection, matmul_dtype=matmul_dtype)
  state = state.replace(apply_fn=model.apply, model=model)
  lstm = _lstm(model)
  alone = [_alone(ds, model, state, i, projection, matmul_dtype) for i in range(len(ds))]
  strat = strategy(ds)
  grad_sum, seen = None, set()
  for plan, batch in zip(strat.plan(0), strat.batches(0)):
    out, carry = _lstm_apply(
      lstm,
      state.params["lstm"],
      batch.inputs,
      batch.mask,
      batch.resets,
      model.zero_carry(plan.batch_size),
    )
    out = np.asarray(out)
    assert np.all(out[~batch.mask] == 0.0), "outputs at padded steps must be exactly zero"
    for r, row in enumerate(plan.rows):
      for seq, start, pos, n in row:
        assert start == 0 and n == LENGTHS[seq]
        assert max_rel_err(out[r, pos : pos + n], alone[seq][0]) <= TOL
        seen.add(seq)
      last_seq = row[-1][0]  # the row's carry is the state after its last sequence
      row_carry = jax.tree.map(lambda a: a[r], carry)
      assert max_rel_err(row_carry, jax.tree.map(lambda a: a[0], alone[last_seq][1])) <= TOL
    g = _summed_loss_grad(state, batch, model.zero_carry(plan.batch_size))
    grad_sum = g if grad_sum is None else jax.tree.map(jnp.add, grad_sum, g)
  assert seen == set(range(len(ds)))
  alone_sum = jax.tree.map(lambda *gs: sum(gs), *[a[2] for a in alone])
  assert max_rel_err(grad_sum, alone_sum) <= TOL


def test_in_step_and_hoisted_projection_agree(setup):
  ds, model, state = setup
  batch = next(batching.Pad(ds, batch_size=6).batches(0))
  args = (batch.inputs,)
  kw = dict(mask=batch.mask, resets=batch.resets)
  a = _lstm(model, "in_step").apply({"params": state.params["lstm"]}, *args, **kw)
  b = _lstm(model, "hoisted").apply({"params": state.params["lstm"]}, *args, **kw)
  assert max_rel_err(a, b) <= TOL
  assert resolve_input_projection("auto", "cpu") == "in_step"
  assert resolve_input_projection("auto", "gpu") == "hoisted"


def _tbptt_outputs(ds, model, state, num_streams, chunk, strat=None):
  """Per-sequence outputs gathered from chunks, the carry handed from chunk to chunk."""
  lstm = _lstm(model)
  strat = strat or batching.TBPTT(ds, num_streams=num_streams, chunk_length=chunk)
  pieces = {i: [] for i in range(len(ds))}
  carry = model.zero_carry(num_streams)
  for plan, batch in zip(strat.plan(0), strat.batches(0)):
    out, carry = _lstm_apply(
      lstm, state.params["lstm"], batch.inputs, batch.mask, batch.resets, carry
    )
    for r, row in enumerate(plan.rows):
      for seq, start, pos, n in row:
        pieces[seq].append((start, np.asarray(out[r, pos : pos + n])))
  return {
    i: np.concatenate([o for _, o in sorted(p, key=lambda t: t[0])]) for i, p in pieces.items()
  }


@pytest.mark.parametrize("chunk", [1, 4, 9, 100])
def test_tbptt_forward_equals_full_forward_for_any_chunk_length(setup, chunk):
  ds, model, state = setup
  outs = _tbptt_outputs(ds, model, state, num_streams=3, chunk=chunk)
  for i in range(len(ds)):
    assert max_rel_err(outs[i], _alone(ds, model, state, i)[0]) <= TOL


@pytest.mark.parametrize("base", [10, 16])
def test_variable_length_bptt_forward_equals_full_forward(setup, base):
  """Chunks of random lengths, each padded (masked) to one of 4 shapes: the same outputs."""
  ds, model, state = setup
  strat = batching.VariableTBPTT(ds, num_streams=3, base_length=base, seed=1)
  assert len({p.length for p in strat.plan(0)}) > 1  # several shapes really are used
  outs = _tbptt_outputs(ds, model, state, 3, None, strat)
  for i in range(len(ds)):
    assert max_rel_err(outs[i], _alone(ds, model, state, i)[0]) <= TOL


def _tbptt_grad(ds, state, num_streams, chunk):
  strat = batching.TBPTT(ds, num_streams=num_streams, chunk_length=chunk)
  carry, total = state.model.zero_carry(num_streams), None
  for batch in strat.batches(0):
    g = _summed_loss_grad(state, batch, carry)
    _, (_, carry) = _forward_jit(state.params, state, batch, carry)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  return total, strat


def test_tbptt_gradients_equal_full_bptt_when_chunks_cover_sequences(setup):
  ds, model, state = setup
  full = jax.tree.map(
    lambda *gs: sum(gs), *[_alone(ds, model, state, i)[2] for i in range(len(ds))]
  )
  # One stream per sequence and a chunk as long as the longest sequence: nothing is truncated.
  g, strat = _tbptt_grad(ds, state, num_streams=len(ds), chunk=max(LENGTHS))
  assert len(strat.plan(0)) == 1
  assert max_rel_err(g, full) <= TOL
  # Several sequences per stream, one chunk holding each whole stream: resets separate them.
  loads = [
    sum(s[3] for s in row)
    for row in batching.TBPTT(ds, num_streams=3, chunk_length=1000).plan(0)[0].rows
  ]
  g, _ = _tbptt_grad(ds, state, num_streams=3, chunk=max(loads))
  assert max_rel_err(g, full) <= TOL
  # Short chunks do truncate the gradient: the comparison above is able to fail.
  g, _ = _tbptt_grad(ds, state, num_streams=3, chunk=2)
  assert max_rel_err(g, full) > 1e-3


def test_incoming_carry_gradient_is_stopped(setup):
  ds, model, state = setup
  batch = next(batching.TBPTT(ds, num_streams=3, chunk_length=4).batches(0))
  carry = jax.tree.map(lambda z: z + 0.5, model.zero_carry(3))
  g = jax.grad(lambda c: train._forward(state.params, state, batch, c)[0])(carry)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g))


def test_resets_restore_zero_state_mid_row(setup):
  ds, model, state = setup
  x1, x2 = ds.sequence(3)[0], ds.sequence(5)[0]
  row = np.concatenate([x1, x2])[None]
  resets = np.zeros(row.shape[:2], bool)
  resets[0, len(x1)] = True
  out, _ = _lstm(model).apply({"params": state.params["lstm"]}, row, resets=resets)
  alone2, _ = _lstm(model).apply({"params": state.params["lstm"]}, x2[None])
  assert max_rel_err(out[0, len(x1) :], alone2[0]) <= TOL
  no_reset, _ = _lstm(model).apply({"params": state.params["lstm"]}, row)
  assert max_rel_err(no_reset[0, len(x1) :], alone2[0]) > 1e-3


def test_sequence_classifier_reads_last_real_step():
  x = jax.random.normal(jax.random.key(0), (4, 9, 3))
  mask = np.arange(9)[None, :] < np.array([[9], [1], [5], [7]])
  clf = SequenceClassifier(hidden_size=H, num_classes=5)
  v = clf.init(jax.random.key(1), x, mask=mask)
  logits = clf.apply(v, x, mask=mask)
  for b, n in enumerate([9, 1, 5, 7]):
    alone = clf.apply(v, x[b : b + 1, :n])
    assert max_rel_err(logits[b], alone[0]) <= TOL
  out, carry = LSTM(H).apply({"params": v["params"]["lstm"]}, x, mask=mask)
  assert max_rel_err(last_real_step(out, mask), carry[0][1]) <= TOL
  # seq_lengths (Flax nn.RNN's argument) is the same right-padded mask, bit for bit
  lengths = jnp.array([9, 1, 5, 7])
  assert np.array_equal(clf.apply(v, x, seq_lengths=lengths), logits)
  by_lengths = LSTM(H).apply({"params": v["params"]["lstm"]}, x, seq_lengths=lengths)
  assert all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(by_lengths), jax.tree.leaves((out, carry)))
  )
  with pytest.raises(DataError, match="give mask or seq_lengths, not both"):
    clf.apply(v, x, mask=mask, seq_lengths=lengths)
  with pytest.raises(DataError, match=r"seq_lengths must be <int>\[4\]"):
    clf.apply(v, x, seq_lengths=jnp.array([9.0, 1, 5, 7]))


def test_token_model_embeds_ids():
  model = SequenceModel(hidden_size=H, num_outputs=11, vocab_size=11, embed_dim=4)
  ids = jnp.array([[1, 2, 3], [4, 5, 0]], jnp.int32)
  v = model.init(jax.random.key(0), ids)
  preds, carry = model.apply(v, ids, mask=jnp.array([[True] * 3, [True, True, False]]))
  assert preds.shape == (2, 3, 11) and float(jnp.abs(preds[1, 2]).max()) == 0.0
  with pytest.raises(DataError, match="token ids"):
    model.apply(v, jnp.zeros((2, 3, 4)))


def test_feature_size_mismatch_is_a_clear_error(setup):
  ds, model, state = setup
  with pytest.raises(DataError, match="4 features per step but the model was initialised for 3"):
    model.apply({"params": state.params}, jnp.zeros((2, 5, 4)))


def test_wrong_input_dtype_and_mask_shape_are_clear_errors():
  lstm = LSTM(H)
  with pytest.raises(DataError, match="float"):
    lstm.init(jax.random.key(0), jnp.zeros((2, 5, 3), jnp.int32))
  with pytest.raises(DataError, match="mask must be <bool>"):
    lstm.init(jax.random.key(0), jnp.zeros((2, 5, 3)), mask=jnp.ones((2, 4), bool))


def test_initializers_keras_flax_pytorch():
  """SequenceModel(initializer=...) for the built-in LSTM. keras (what "auto", the default,
  gives it): one orthogonal init over the whole [H, 4H] recurrent matrix (its rows
  orthonormal), bias 1 on the forget gate only; flax: each gate's [H, H] recurrent block
  orthogonal on its own, zero bias; pytorch: weights within +-1/sqrt(H), the bias a sum of two
  such draws. NNX builds the same kinds. A cell with only its own initialisation refuses
  another (ConfigError), as does an unknown name."""
  from flax import nnx

  from lstm_jax import nnx_model

  h, x = 8, jnp.zeros((1, 1, 3))

  def layer(initializer=None):  # None: the default
    kw = {} if initializer is None else dict(initializer=initializer)
    m = SequenceModel(hidden_size=h, num_outputs=2, **kw)
    p = m.init(jax.random.key(0), x)["params"]["lstm"]["layer_0"]
    return {k: np.asarray(v) for k, v in p.items()}

  def nnx_layer(initializer):
    m = nnx_model.SequenceModel(
      num_features=3, hidden_size=h, num_outputs=2, initializer=initializer, rngs=nnx.Rngs(0)
    )
    lay = m.lstm.layer_0
    return {k: np.asarray(getattr(lay, k)[...]) for k in ("kernel", "recurrent_kernel", "bias")}

  eye = np.eye(h)
  for get in (layer, nnx_layer):
    keras, flax_, torch = get("keras"), get("flax"), get("pytorch")
    r = keras["recurrent_kernel"]
    assert np.allclose(r @ r.T, eye, atol=1e-5) and not np.allclose(r[:, :h].T @ r[:, :h], eye)
    assert keras["bias"].tolist() == [0.0] * h + [1.0] * h + [0.0] * (2 * h)
    blocks = [flax_["recurrent_kernel"][:, g * h : (g + 1) * h] for g in range(4)]
    assert all(np.allclose(b.T @ b, eye, atol=1e-5) for b in blocks)
    assert not np.allclose(blocks[0], blocks[1]) and not flax_["bias"].any()
    k = 1 / np.sqrt(h)
    for name in ("kernel", "recurrent_kernel"):
      assert np.abs(torch[name]).max() <= k and np.abs(torch[name]).max() > 0.8 * k
    assert np.abs(torch["bias"]).max() <= 2 * k and np.abs(torch["bias"]).max() > k
    auto = get("auto")  # auto is keras for the LSTM, bit for bit
    assert all(np.array_equal(auto[n], keras[n]) for n in keras)
  default, keras = layer(), layer("keras")
  assert all(np.array_equal(default[n], keras[n]) for n in keras)
  with pytest.raises(ConfigError, match="initialises as its own class does"):
    SequenceModel(hidden_size=h, num_outputs=2, cell="mgu", initializer="flax").init(
      jax.random.key(0), x
    )
  with pytest.raises(ConfigError, match="initializer must be one of"):
    SequenceModel(hidden_size=h, num_outputs=2, initializer="he").init(jax.random.key(0), x)


def test_gru_initializers_keras_flax_pytorch():
  """The GRU's initialisations, linen and NNX. auto (the default) and flax are Flax's GRUCell
  as it comes, bit for bit: each gate's [H, H] recurrent block orthogonal. keras: the three
  recurrent blocks side by side in Keras' order (z, r, n) are one orthogonal [H, 3H] matrix
  (rows orthonormal, no block orthogonal), the input kernel within glorot's bound for [F, 3H],
  zero biases. pytorch: weights within +-1/sqrt(H); r's and z's biases bias_ih + bias_hh
  (beyond 1/sqrt(H)), n's two biases one draw each. Each trains through the fused GRU."""
  from flax import linen as nn
  from flax import nnx

  from lstm_jax import nnx_model

  f, h, x = 3, 8, jnp.zeros((1, 1, 3))

  def linen_cell(initializer=None):
    kw = {} if initializer is None else dict(initializer=initializer)
    m = SequenceModel(hidden_size=h, num_outputs=2, cell="gru", **kw)
    return jax.tree.map(np.asarray, m.init(jax.random.key(0), x)["params"]["rnn"]["layer_0"])

  def nnx_cell(initializer):
    m = nnx_model.SequenceModel(
      num_features=f,
      hidden_size=h,
      num_outputs=2,
      cell="gru",
      initializer=initializer,
      rngs=nnx.Rngs(0),
    )
    cell = m.rnn.layer_0.cell
    return {
      "cell": jax.tree.map(lambda v: np.asarray(v[...]), cell, is_leaf=nnx_model._is_variable)
    }

  own = nn.GRUCell(features=h).init(jax.random.key(1), jnp.zeros((1, h)), jnp.zeros((1, f)))
  eye = np.eye(h)
  for get in (linen_cell, nnx_cell):
    auto, flax_, keras, torch = get("auto"), get("flax"), get("keras"), get("pytorch")
    p = auto["cell"]
    assert jax.tree.structure(p) == jax.tree.structure(own["params"])
    assert jax.tree.all(jax.tree.map(np.array_equal, auto, flax_))
    for g in ("hr", "hz", "hn"):
      assert np.allclose(p[g]["kernel"].T @ p[g]["kernel"], eye, atol=1e-5)
    k = keras["cell"]
    assert jax.tree.structure(k) == jax.tree.structure(p)
    w_h = np.concatenate([k["hz"]["kernel"], k["hr"]["kernel"], k["hn"]["kernel"]], axis=1)
    assert np.allclose(w_h @ w_h.T, eye, atol=1e-5)
    assert not np.allclose(k["hz"]["kernel"].T @ k["hz"]["kernel"], eye, atol=1e-3)
    w_i = np.concatenate([k[g]["kernel"] for g in ("iz", "ir", "in")], axis=1)
    assert np.abs(w_i).max() <= np.sqrt(6 / (f + 3 * h))
    assert not any(k[g]["bias"].any() for g in ("ir", "iz", "in", "hn"))
    t, bound = torch["cell"], 1 / np.sqrt(h)
    for g in ("ir", "iz", "in", "hr", "hz", "hn"):
      assert np.abs(t[g]["kernel"]).max() <= bound
    gate_bias = max(np.abs(t[g]["bias"]).max() for g in ("ir", "iz"))
    assert bound < gate_bias <= 2 * bound
    assert max(np.abs(t[g]["bias"]).max() for g in ("in", "hn")) <= bound
  default = linen_cell()
  assert jax.tree.all(jax.tree.map(np.array_equal, default, linen_cell("flax")))
  # each initialisation trains: a finite, nonzero gradient through the fused GRU
  xs = jax.random.normal(jax.random.key(2), (2, 5, f))
  for initializer in ("keras", "pytorch"):
    m = SequenceModel(hidden_size=h, num_outputs=2, cell="gru", initializer=initializer)
    params = m.init(jax.random.key(0), x)["params"]
    grads = jax.tree.leaves(jax.grad(lambda p: m.apply({"params": p}, xs)[0].sum())(params))
    assert all(np.isfinite(v).all() for v in grads) and all(np.abs(v).sum() > 0 for v in grads)
