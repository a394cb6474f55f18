"""Streaming inference equals the whole forward pass, whatever the chunking; resets and idle
streams behave; compiles are one per power-of-two chunk length."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import max_rel_err
from lstm_jax.errors import DataError
from lstm_jax.model import LSTM, SequenceModel
from lstm_jax.streaming import Streamer

B, T, F, H = 3, 23, 4, 8


@pytest.fixture(scope="module")
def setup():
  model = LSTM(H, num_layers=2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1, F)))["params"]
  x = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)
  full, carry = model.apply({"params": params}, jnp.asarray(x))
  return model, params, x, np.asarray(full), carry


@pytest.mark.parametrize("cuts", [[1] * T, [5, 5, 5, 8], [23], [2, 9, 1, 11]])
def test_chunks_equal_the_full_forward(setup, cuts):
  model, params, x, full, carry = setup
  s = Streamer(model, params, batch_size=B)
  outs, t = [], 0
  for n in cuts:
    outs.append(np.asarray(s(x[:, t : t + n])))
    t += n
  assert max_rel_err(np.concatenate(outs, 1), full) <= 1e-5
  assert max_rel_err(s.carry, carry) <= 1e-5
  assert s.steps.compiles == len({1 << max(0, n - 1).bit_length() for n in cuts})


def test_reset_one_stream_starts_it_afresh(setup):
  model, params, x, full, _ = setup
  s = Streamer(model, params, batch_size=B)
  s(x[:, :10])
  s.reset([1])
  out = np.asarray(s(x[:, 10:]))
  fresh, _ = model.apply({"params": params}, jnp.asarray(x[1:2, 10:]))
  assert max_rel_err(out[1], np.asarray(fresh)[0]) <= 1e-5
  assert max_rel_err(out[[0, 2]], full[[0, 2], 10:]) <= 1e-5  # the others carried on


def test_a_masked_stream_keeps_its_state(setup):
  model, params, x, full, _ = setup
  s = Streamer(model, params, batch_size=B)
  s(x[:, :7])
  idle = np.ones((B, 5), bool)
  idle[2] = False  # stream 2 has nothing new in this chunk
  s(np.where(idle[..., None], x[:, 7:12], 0.0), mask=idle)
  later = np.asarray(s(x[:, 7:12]))  # stream 2 now gets its steps 7..11
  assert max_rel_err(later[2], full[2, 7:12]) <= 1e-5


def test_token_model_and_bad_chunks():
  model = SequenceModel(8, num_outputs=5, vocab_size=5, embed_dim=4)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  tokens = np.random.default_rng(1).integers(0, 5, size=(2, 9)).astype(np.int32)
  whole, _ = model.apply({"params": params}, jnp.asarray(tokens))
  s = Streamer(model, params, batch_size=2)
  got = np.concatenate([np.asarray(s(tokens[:, :4])), np.asarray(s(tokens[:, 4:]))], 1)
  assert max_rel_err(got, np.asarray(whole)) <= 1e-5
  with pytest.raises(DataError, match=r"must be \[batch_size=2"):
    s(tokens[:1])
  with pytest.raises(DataError, match="empty chunk"):
    s(tokens[:, :0])
  with pytest.raises(DataError, match="out of range"):
    s.reset([2])
