"""Dropout: between layers and variational (one mask per sequence, the same at every step) on the
inputs and outputs; on in training and seeded from the step, off in evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from helpers import ragged_features
from lstm_jax import batching, evaluation, loop, train
from lstm_jax.model import LSTM, SequenceModel


def test_dropout_is_off_in_eval_and_on_in_training():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 4)), jnp.float32)
  plain = LSTM(6, num_layers=2)
  dropped = LSTM(6, num_layers=2, dropout_rate=0.3, input_dropout=0.3, output_dropout=0.3)
  params = plain.init(jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(dropped.init(jax.random.key(0), x))
  eval_out, _ = dropped.apply(params, x)  # deterministic by default
  assert np.array_equal(np.asarray(eval_out), np.asarray(plain.apply(params, x)[0]))
  a, _ = dropped.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  b, _ = dropped.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  c, _ = dropped.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
  assert np.array_equal(np.asarray(a), np.asarray(b))  # seeded
  assert not np.allclose(np.asarray(a), np.asarray(eval_out))  # on
  assert not np.allclose(np.asarray(a), np.asarray(c))  # a new key, a new mask
  # the output mask zeroes whole (row, feature) columns over time: variational
  zero = np.asarray(a) == 0
  assert zero.any() and np.all(zero == zero[:, :1])


def test_training_steps_draw_new_masks_and_repeat_with_the_seed():
  ds = ragged_features([5, 7, 3, 6], num_features=3)
  model = SequenceModel(
    8, num_outputs=2, dropout_rate=0.5, input_dropout=0.5, output_dropout=0.5, num_layers=2
  )
  strategy = batching.Pad(ds, batch_size=4)

  def run():
    return loop.fit(train.create_train_state(model, optax.sgd(0.0), ds, seed=0), strategy, epochs=3)

  first, second = run(), run()
  losses = [h["loss"] for h in first.history]
  assert losses == [h["loss"] for h in second.history]  # same seed, same masks
  assert len(set(losses)) == 3  # lr 0: the same batch and params, only the masks change
  ev = evaluation.evaluate(first.state, strategy)
  plain = SequenceModel(8, num_outputs=2, num_layers=2)
  st = first.state.replace(apply_fn=plain.apply, model=plain)
  assert ev["loss"] == evaluation.evaluate(st, strategy)["loss"]  # evaluation: no dropout
