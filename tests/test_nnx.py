"""The Flax NNX front end: linen's parameter layout (weights convert both ways exactly), the
same outputs and gradients for the same weights, training under every strategy with compiles
counted, and a hand-written NNX loop over lstm_jax batches that follows loop.fit."""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from helpers import HalfCell, four_strategies, max_rel_err, ragged_features
from lstm_jax import batching, evaluation, loop, nnx_model, train
from lstm_jax import model as linen_model
from lstm_jax.data import next_token_dataset
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.model import stack_name

TOL = 1e-5
LENGTHS = [1, 7, 3, 12, 5, 7, 3, 12, 1, 5, 7, 3]


def _model(seed=0, **kw):
  kw = dict(hidden_size=6, num_outputs=2, num_features=3, num_layers=2) | kw
  return nnx_model.SequenceModel(**kw, rngs=nnx.Rngs(seed))


def test_layout_is_linens_and_weights_convert_both_ways_exactly():
  ds = ragged_features(LENGTHS, num_features=3, seed=0)
  m = _model()
  linen_state = train.create_train_state(nnx_model.linen_twin(m), optax.sgd(0.1), ds, seed=3)
  ours = nnx_model.to_linen_params(m)
  assert jax.tree.structure(ours) == jax.tree.structure(linen_state.params)
  assert jax.tree.map(np.shape, ours) == jax.tree.map(np.shape, linen_state.params)
  # linen -> NNX -> linen is exact
  nnx_model.from_linen_params(m, linen_state.params)
  back = nnx_model.to_linen_params(m)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, linen_state.params))
  tokens = nnx_model.SequenceModel(
    hidden_size=4, num_outputs=9, vocab_size=9, embed_dim=5, rngs=nnx.Rngs(0)
  )
  tok_ds = next_token_dataset([np.arange(6, dtype=np.int32) % 9], vocab_size=9)
  tok_state = train.create_train_state(nnx_model.linen_twin(tokens), optax.sgd(0.1), tok_ds)
  assert jax.tree.map(np.shape, nnx_model.to_linen_params(tokens)) == jax.tree.map(
    np.shape, tok_state.params
  )


@pytest.mark.parametrize("backward", ["manual", "deferred", "autodiff"])
def test_same_outputs_and_gradients_as_linen_for_the_same_weights(backward):
  _check_same_as_linen(_model(backward=backward))


def _check_same_as_linen(m):
  """m and its linen twin on the same weights, on packed rows with resets: outputs, final carry
  and gradients to TOL. Returns (the batch's args, m's outputs)."""
  ds = ragged_features(LENGTHS, num_features=3, seed=0)
  twin, params = nnx_model.linen_twin(m), nnx_model.to_linen_params(m)
  batch = next(batching.Pack(ds, batch_size=3, row_length=20).batches(0))
  args, kw = (batch.inputs,), dict(mask=batch.mask, resets=batch.resets)

  def linen_loss(p):
    preds, _ = twin.apply({"params": p}, *args, **kw)
    return jnp.sum(batch.weights[..., None] * jnp.square(preds - batch.targets))

  def nnx_loss(model):
    preds, _ = model(*args, **kw)
    return jnp.sum(batch.weights[..., None] * jnp.square(preds - batch.targets))

  # each side compiled as one program (nnx.jit, jax.jit): eager calls compile every operation
  a, carry_a = _call(m, *args, **kw)
  b, carry_b = jax.jit(twin.apply)({"params": params}, *args, **kw)
  assert max_rel_err(a, b) <= TOL and max_rel_err(carry_a, carry_b) <= TOL
  g_nnx = nnx.to_pure_dict(nnx.jit(nnx.grad(nnx_loss))(m))
  g_linen = jax.jit(jax.grad(linen_loss))(params)
  assert max_rel_err(g_nnx, g_linen) <= TOL
  # seq_lengths= is the right-padded mask it stands for, in NNX as in linen
  pad = next(batching.Pad(ds, batch_size=4).batches(0))
  by_mask, _ = _call(m, pad.inputs, mask=pad.mask)
  by_lengths, _ = _call(m, pad.inputs, seq_lengths=pad.mask.sum(axis=1))
  assert np.array_equal(by_mask, by_lengths)
  return (args, kw), a


@nnx.jit
def _call(m, *args, **kw):
  """m(*args, **kw) as one compiled program."""
  return m(*args, **kw)


@pytest.mark.parametrize("name", ["pad", "bucket", "tbptt", "pack"])
def test_nnx_model_trains_under_every_strategy_with_compiles_counted(name):
  ds, strategy = four_strategies(name)
  m = _model()
  before = nnx_model.to_linen_params(m)
  first = evaluation.evaluate(nnx_model.train_state(m, optax.adam(1e-2), ds), strategy)["loss"]
  result = nnx_model.fit(m, strategy, optax.adam(1e-2), epochs=3)
  assert result.steps.train.compiles == len(strategy.shapes(num_epochs=3))
  after = nnx_model.to_linen_params(m)  # written back into the NNX model
  assert jax.tree.all(jax.tree.map(np.array_equal, after, result.state.params))
  assert not jax.tree.all(jax.tree.map(np.array_equal, after, before))
  assert evaluation.evaluate(result.state, strategy)["loss"] < first


def test_hand_written_nnx_loop_follows_train_fit():
  """nnx.Optimizer and nnx.jit over a strategy's batches give loop.fit's parameters."""
  ds = ragged_features(LENGTHS, num_features=3, seed=0)
  strategy = batching.Bucket(ds, batch_size=3, boundaries=[4, 8, 12])
  tx = optax.adam(1e-2)
  m = _model(seed=1)
  reference = loop.fit(nnx_model.train_state(m, tx, ds), strategy, epochs=2)

  optimizer = nnx.Optimizer(m, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, batch):
    def loss_fn(model):
      preds, _ = model(batch.inputs, mask=batch.mask, resets=batch.resets)
      loss, _ = train.per_step_loss(preds, batch.targets, "regression")
      return jnp.sum(batch.weights * loss) / jnp.maximum(jnp.sum(batch.weights), 1e-12)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  for epoch in range(2):
    for batch in strategy.batches(epoch):
      step(m, optimizer, batch)
  assert max_rel_err(nnx_model.to_linen_params(m), reference.state.params) <= TOL


def test_nnx_bad_inputs_are_named():
  with pytest.raises(DataError, match="either num_features .* or vocab_size"):
    nnx_model.SequenceModel(hidden_size=4, num_outputs=2, rngs=nnx.Rngs(0))
  m = _model()
  with pytest.raises(DataError, match="the inputs have 5 features per step but the layer"):
    m(jnp.zeros((1, 4, 5)))
  with pytest.raises(DataError, match="do not have the NNX model's layout"):
    nnx_model.from_linen_params(m, nnx_model.to_linen_params(_model(num_layers=1)))


# Every other model setting: any cell (Flax's and a user's), the bidirectional stack, dropout.

CELL_CASES = [
  dict(cell="gru"),
  dict(cell="mgu", num_layers=1),
  dict(cell=HalfCell),
  dict(bidirectional=True),
  dict(cell="gru", bidirectional=True),
  dict(readout="attention"),
  dict(readout="max", bidirectional=True),
  dict(readout="mean", cell="gru"),
]
CELL_IDS = [
  "gru",
  "mgu",
  "user_cell",
  "bidirectional_lstm",
  "bidirectional_gru",
  "attention_readout",
  "bidirectional_max_readout",
  "gru_mean_readout",
]


@pytest.mark.parametrize("kw", CELL_CASES, ids=CELL_IDS)
def test_any_cell_and_bidirectional_match_linen_exactly(kw):
  """Layout, both conversions, outputs, final carry and gradients on packed rows with resets
  (bidirectional needs whole sequences per row: packing keeps them); the pooled readouts too."""
  ds = ragged_features(LENGTHS, num_features=3, seed=0)
  m = _model(**kw)
  twin, params = nnx_model.linen_twin(m), nnx_model.to_linen_params(m)
  ref = train.create_train_state(twin, optax.sgd(0.1), ds, seed=3).params
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, ref)
  scored = {"readout_score"} if m.settings.readout == "attention" else set()
  assert set(params) == {stack_name(m.settings.cell), "head"} | scored
  (args, kw), a = _check_same_as_linen(m)
  nnx_model.from_linen_params(m, ref)  # linen -> NNX -> linen, exact
  assert jax.tree.all(jax.tree.map(np.array_equal, nnx_model.to_linen_params(m), ref))
  c, _ = _call(m, *args, **kw)
  d, _ = jax.jit(twin.apply)({"params": ref}, *args, **kw)
  assert max_rel_err(c, d) <= TOL and not np.allclose(a, c)


@pytest.mark.parametrize("name", ["bucket", "tbptt"])
def test_nnx_gru_trains_with_compiles_counted(name):
  ds, strategy = four_strategies(name)
  m = _model(cell="gru")
  first = evaluation.evaluate(nnx_model.train_state(m, optax.adam(1e-2), ds), strategy)["loss"]
  result = nnx_model.fit(m, strategy, optax.adam(1e-2), epochs=3)
  assert result.steps.train.compiles == len(strategy.shapes(num_epochs=3))
  assert jax.tree.all(
    jax.tree.map(np.array_equal, nnx_model.to_linen_params(m), result.state.params)
  )
  assert evaluation.evaluate(result.state, strategy)["loss"] < first


def test_nnx_dropout_is_linens_setting_and_off_in_eval_mode():
  ds = ragged_features(LENGTHS, num_features=3, seed=0)
  rates = dict(dropout_rate=0.3, input_dropout=0.2, output_dropout=0.4)
  m = _model(**rates)
  twin, params = nnx_model.linen_twin(m), nnx_model.to_linen_params(m)
  assert {k: getattr(twin, k) for k in rates} == rates
  batch = next(batching.Pack(ds, batch_size=3, row_length=20).batches(0))
  args, kw = (batch.inputs,), dict(mask=batch.mask, resets=batch.resets)
  trained, _ = m(*args, **kw)  # training mode: dropout on
  m.eval()
  a, _ = m(*args, **kw)
  b, _ = twin.apply({"params": params}, *args, **kw)  # linen's deterministic=True
  assert max_rel_err(a, b) <= TOL and not np.allclose(trained, a)
  m.train()
  again, _ = m(*args, **kw, deterministic=True)
  assert max_rel_err(again, a) <= TOL
  # variational input dropout: one mask per sequence row and feature, the same at every step
  x = jnp.ones((2, 9, 3))
  dropped = np.asarray(m.lstm.input_dropout(x))
  assert (dropped == dropped[:, :1]).all() and (dropped == 0).any() and (dropped != 0).any()
  with pytest.raises(ConfigError, match="dropout is not implemented for the bidirectional"):
    _model(bidirectional=True, dropout_rate=0.1)
  with pytest.raises(ConfigError, match="implemented for cell='lstm' only"):
    _model(cell="gru", matmul_dtype="bfloat16")


def test_the_nnx_models_settings_are_one_frozen_value_with_linens_fields():
  """One list of model settings: linen's SequenceModel fields. The NNX model takes exactly those
  (plus num_features and rngs), keeps them as one frozen value (`settings`, a ModelSettings, as
  linen's `.settings`), and refuses what linen refuses through the same check."""
  taken = set(inspect.signature(nnx_model.SequenceModel.__init__).parameters)
  fields = {f.name for f in dataclasses.fields(linen_model.SequenceModel)} - {"parent", "name"}
  assert taken - {"self", "num_features", "rngs"} == fields
  m = nnx_model.SequenceModel(4, 2, num_features=3, cell="gru", rngs=nnx.Rngs(0))
  twin = nnx_model.linen_twin(m)
  assert twin == linen_model.SequenceModel(4, 2, cell="gru") and m.settings == twin.settings
  assert isinstance(m.settings, linen_model.ModelSettings) and hash(m.settings)
  with pytest.raises(dataclasses.FrozenInstanceError):
    m.settings.hidden_size = 8  # frozen: a value, not a second copy to keep in step
  for kw in (dict(bidirectional=True, dropout_rate=0.1), dict(cell="gru", matmul_dtype="bfloat16")):
    with pytest.raises(ConfigError) as nnx_error:
      nnx_model.SequenceModel(4, 2, num_features=3, rngs=nnx.Rngs(0), **kw)
    with pytest.raises(ConfigError) as linen_error:
      linen_model.SequenceModel(4, 2, **kw).check_settings()
    assert str(nnx_error.value) == str(linen_error.value)
