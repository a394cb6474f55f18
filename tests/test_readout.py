"""Readouts for sequence labels (lstm_jax.readout): mean, max and attention pooling are exact
under pad, bucket, pack (per segment inside packed rows, across both directions when
bidirectional) and truncated BPTT (the pool carried across chunks): every step's logits, the
pool after each row's last sequence and the parameter gradients equal each sequence run alone at
its exact length, to float32 rounding (<= 1e-5 relative, max |a - b| / max |b|)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import max_rel_err, ragged_features
from lstm_jax import batching, evaluation, loop, readout, train
from lstm_jax.data import RaggedDataset
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.model import LSTM, SequenceModel

TOL = 1e-5
LENGTHS = [1, 7, 3, 12, 5, 7, 3, 12, 1, 5, 7, 3]
H, CLASSES = 6, 3
POOLED = ("mean", "max", "attention")


def _labelled() -> RaggedDataset:
  ds = ragged_features(LENGTHS, num_features=3, seed=5)
  labels = np.random.default_rng(5).integers(0, CLASSES, size=len(LENGTHS)).astype(np.int32)
  return RaggedDataset(
    ds.values, ds.lengths, labels, target_level="sequence", num_classes=CLASSES, name="labelled"
  )


@functools.lru_cache(maxsize=None)
def _setup(name: str, bidirectional: bool = False):
  ds = _labelled()
  model = SequenceModel(H, CLASSES, readout=name, bidirectional=bidirectional)
  state = train.create_train_state(model, optax.sgd(0.1), ds, seed=0)
  alone = []
  for i in range(len(ds)):
    x, y = ds.sequence(i)
    alone.append(_alone(model, state.params, jnp.asarray(x), jnp.asarray(y)))
  return ds, model, state, alone


@functools.partial(jax.jit, static_argnums=(0,))
def _alone(model, params, x, y):
  """The sequence alone, no mask or resets: (logits at every step, carry, gradient of its loss
  on its label at its last step)."""
  preds, carry = model.apply({"params": params}, x[None])

  def loss(p):
    logits = model.apply({"params": p}, x[None])[0][0, -1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)

  return preds[0], carry, jax.grad(loss)(params)


@jax.jit
def _summed_loss_grad(state, batch, carry):
  return jax.grad(lambda p: train._forward(p, state, batch, carry)[1][0]["loss_sum"])(state.params)


@jax.jit
def _apply(state, batch, carry):
  return state.apply_fn(
    {"params": state.params}, batch.inputs, mask=batch.mask, resets=batch.resets,
    initial_carry=carry,
  )  # fmt: skip


STRATEGIES = {
  "pad": lambda ds: batching.Pad(ds, batch_size=4, max_length=16),
  "bucket": lambda ds: batching.Bucket(ds, batch_size=3, boundaries=[4, 8, 12]),
  "pack": lambda ds: batching.Pack(ds, batch_size=2, row_length=15),
  "bucket_packed": lambda ds: batching.Bucket(ds, batch_size=2, boundaries=[8, 20], pack_rows=True),
}


@pytest.mark.parametrize(
  "name, layout, bidirectional",
  # every readout under pad, bucket and pack; attention, whose pool has the most state, also
  # in bucket rows that pack and across both directions (pooling is the same code for each)
  [(n, s, False) for n in POOLED for s in ("pad", "bucket", "pack")]
  + [("attention", "bucket_packed", False), ("attention", "pack", True)],
)
def test_pooled_readouts_equal_each_sequence_alone(name, layout, bidirectional):
  ds, model, state, alone = _setup(name, bidirectional)
  strategy = STRATEGIES[layout](ds)
  grad_sum, seen, packed = None, set(), 0
  for plan, batch in zip(strategy.plan(0), strategy.batches(0)):
    carry = model.zero_carry(plan.batch_size)
    preds, out_carry = _apply(state, batch, carry)
    preds = np.asarray(preds)
    assert np.all(preds[~batch.mask] == 0.0)
    for r, row in enumerate(plan.rows):
      packed += len(row) > 1
      for seq, start, pos, n in row:
        assert start == 0 and n == LENGTHS[seq]
        assert max_rel_err(preds[r, pos : pos + n], alone[seq][0]) <= TOL, (seq, r)
        seen.add(seq)
      last = row[-1][0]  # the pool (and stack) after the row's last sequence
      got = jax.tree.map(lambda a: a[r], out_carry)
      want = jax.tree.map(lambda a: a[0], alone[last][1])
      assert max_rel_err(got["pool"], want["pool"]) <= TOL
    g = _summed_loss_grad(state, batch, carry)
    grad_sum = g if grad_sum is None else jax.tree.map(jnp.add, grad_sum, g)
  assert seen == set(range(len(ds)))
  if "pack" in layout:
    assert packed > 0  # rows really hold several sequences
  want = jax.tree.map(lambda *gs: sum(gs), *[a[2] for a in alone])
  assert max_rel_err(grad_sum, want) <= TOL


def _tbptt(state, ds, num_streams, chunk):
  """Per-sequence logits gathered from chunks and the summed gradient, the carry handed on."""
  strategy = batching.TBPTT(ds, num_streams=num_streams, chunk_length=chunk)
  carry, total, pieces = state.model.zero_carry(num_streams), None, {}
  for plan, batch in zip(strategy.plan(0), strategy.batches(0)):
    g = _summed_loss_grad(state, batch, carry)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
    preds, carry = _apply(state, batch, carry)
    for r, row in enumerate(plan.rows):
      for seq, start, pos, n in row:
        pieces.setdefault(seq, []).append((start, np.asarray(preds[r, pos : pos + n])))
  joined = {
    s: np.concatenate([o for _, o in sorted(p, key=lambda t: t[0])]) for s, p in pieces.items()
  }
  return joined, total, strategy


@pytest.mark.parametrize("name", POOLED)
def test_pooled_readouts_carry_the_pool_across_tbptt_chunks(name):
  """Any chunk length (1: the pool crosses every step; 4) gives every step's logits of the
  whole sequence (the pool travels in the carry and resets with it); chunks that hold whole
  streams give the full gradient, and short chunks do not (so the comparison can fail)."""
  ds, model, state, alone = _setup(name)
  for chunk in (1, 4):
    joined, _, _ = _tbptt(state, ds, 3, chunk)
    for i in range(len(ds)):
      assert max_rel_err(joined[i], alone[i][0]) <= TOL, (chunk, i)
  full = jax.tree.map(lambda *gs: sum(gs), *[a[2] for a in alone])
  _, g, strategy = _tbptt(state, ds, len(ds), max(LENGTHS))
  assert len(strategy.plan(0)) == 1
  assert max_rel_err(g, full) <= TOL
  whole = batching.TBPTT(ds, num_streams=3, chunk_length=1000).plan(0)[0]
  loads = [sum(s[3] for s in row) for row in whole.rows]
  _, g, _ = _tbptt(state, ds, 3, max(loads))
  assert max_rel_err(g, full) <= TOL
  _, g, _ = _tbptt(state, ds, 3, 2)
  assert max_rel_err(g, full) > 1e-3


def test_each_readout_computes_what_it_says_by_hand():
  """Against numpy on the stack's own outputs: the mean and max over the real steps, attention's
  softmax over the learned scores; then the head."""
  ds = _labelled()
  x = jnp.asarray(ds.sequence(3)[0])[None]
  for name in POOLED:
    model = SequenceModel(H, CLASSES, readout=name)
    params = train.create_train_state(model, optax.sgd(0.1), ds, seed=1).params
    preds, _ = model.apply({"params": params}, x)
    h, _ = LSTM(H).apply({"params": params["lstm"]}, x)
    h = np.asarray(h[0], np.float64)
    if name == "mean":
      pooled = h.mean(axis=0)
    elif name == "max":
      pooled = h.max(axis=0)
    else:
      assert set(params["readout_score"]) == {"kernel"}  # a shared bias cancels in the softmax
      s = h @ np.asarray(params["readout_score"]["kernel"], np.float64)[:, 0]
      w = np.exp(s - s.max())
      pooled = (w / w.sum()) @ h
    head = params["head"]
    want = pooled @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)
    assert max_rel_err(preds[0, -1], want) <= TOL, name


def test_last_is_the_default_and_a_pooled_model_trains():
  ds = _labelled()
  assert SequenceModel(H, CLASSES).readout == "last"
  state = train.create_train_state(SequenceModel(H, CLASSES, readout="mean"), optax.adam(3e-2), ds)
  pad = batching.Pad(ds, batch_size=4)
  before = evaluation.evaluate(state, pad)["loss"]
  result = loop.fit(state, pad, epochs=30)
  assert evaluation.evaluate(result.state, pad)["loss"] < 0.7 * before


def test_a_bad_readout_and_a_carry_without_the_pool_are_named():
  bad = r"readout must be one of \('last', 'mean', 'max', 'attention'\), got 'avg'"
  with pytest.raises(ConfigError, match=bad):
    SequenceModel(H, CLASSES, readout="avg").init(jax.random.key(0), jnp.zeros((1, 2, 3)))
  model = SequenceModel(H, CLASSES, readout="mean")
  params = model.init(jax.random.key(0), jnp.zeros((1, 2, 3)))
  stack_only = SequenceModel(H, CLASSES).zero_carry(1)
  wrong = r"readout='mean' carries \{'stack': \.\.\., 'pool': \.\.\.\}"
  with pytest.raises(DataError, match=wrong):
    model.apply(params, jnp.zeros((1, 2, 3)), initial_carry=stack_only)
  assert readout.zero_pool("last", 2, 4) is None
