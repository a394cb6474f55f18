"""Weight conversion to and from PyTorch and Keras layouts: hand-built arrays pin the layout, round
trips are exact, and (when torch is installed) outputs match torch's packed nn.LSTM."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lstm_jax import convert
from lstm_jax.errors import DataError
from lstm_jax.model import LSTM

F, H = 3, 2


def _torch_dict(rng, layers=2):
  d = {}
  for k in range(layers):
    f = F if k == 0 else H
    d[f"weight_ih_l{k}"] = rng.normal(size=(4 * H, f)).astype(np.float32)
    d[f"weight_hh_l{k}"] = rng.normal(size=(4 * H, H)).astype(np.float32)
    d[f"bias_ih_l{k}"] = rng.normal(size=4 * H).astype(np.float32)
    d[f"bias_hh_l{k}"] = rng.normal(size=4 * H).astype(np.float32)
  return d


def test_from_torch_layout_by_hand():
  w_ih = np.arange(4 * H * F, dtype=np.float32).reshape(4 * H, F)  # row r = gate r // H
  w_hh = np.arange(4 * H * H, dtype=np.float32).reshape(4 * H, H) + 100
  params = convert.from_torch(
    {
      "weight_ih_l0": w_ih,
      "weight_hh_l0": w_hh,
      "bias_ih_l0": np.ones(4 * H, np.float32),
      "bias_hh_l0": np.full(4 * H, 2.0, np.float32),
    }
  )
  layer = params["layer_0"]
  assert layer["kernel"].shape == (F, 4 * H) and layer["kernel"][1, 5] == w_ih[5, 1]
  assert layer["recurrent_kernel"][0, 7] == w_hh[7, 0]
  assert np.all(layer["bias"] == 3.0)  # bias_ih + bias_hh


def test_round_trips_are_exact(rng):
  d = _torch_dict(rng)
  params = convert.from_torch(d)
  back = convert.to_torch(params)
  assert convert.from_torch(back).keys() == params.keys()
  for k in range(2):
    assert np.array_equal(back[f"weight_ih_l{k}"], d[f"weight_ih_l{k}"])
    assert np.array_equal(back[f"weight_hh_l{k}"], d[f"weight_hh_l{k}"])
    assert np.array_equal(
      back[f"bias_ih_l{k}"] + back[f"bias_hh_l{k}"], d[f"bias_ih_l{k}"] + d[f"bias_hh_l{k}"]
    )
  keras = convert.to_keras(params)
  assert [a.shape for a in keras[0]] == [(F, 4 * H), (H, 4 * H), (4 * H,)]
  again = convert.from_keras(keras)
  assert all(np.array_equal(again[k][n], params[k][n]) for k in params for n in params[k])
  single = convert.from_keras(keras[0])  # one layer's get_weights() as is
  assert np.array_equal(single["layer_0"]["kernel"], params["layer_0"]["kernel"])


def test_converted_params_run_in_the_model(rng):
  params = convert.from_torch(_torch_dict(rng))
  model = LSTM(H, num_layers=2)
  ref = model.init(jax.random.key(0), jnp.zeros((1, 1, F)))["params"]
  assert jax.tree.structure(ref) == jax.tree.structure(params)
  assert jax.tree.map(jnp.shape, ref) == jax.tree.map(jnp.shape, params)


@pytest.mark.parametrize(
  "bad,match",
  [
    (
      {
        "weight_ih_l0": np.zeros((8, 3)),
        "weight_hh_l0": np.zeros((8, 2)),
        "weight_hr_l0": np.zeros((2, 2)),
      },
      "unexpected key 'weight_hr_l0'",
    ),
    ({"weight_ih_l0_reverse": np.zeros((8, 3))}, "unexpected key"),
    ({"weight_ih_l0": np.zeros((8, 3))}, r"lacks \['weight_hh_l0'\]"),
    ({"weight_ih_l0": np.zeros((8, 3)), "weight_hh_l0": np.zeros((8, 3))}, "must be \\[H, 4H\\]"),
  ],
)
def test_bad_torch_dicts_are_named(bad, match):
  with pytest.raises(DataError, match=match):
    convert.from_torch(bad)


def test_keras_without_bias_is_refused():
  with pytest.raises(DataError, match="use_bias=True"):
    convert.from_keras([[np.zeros((F, 8), np.float32), np.zeros((H, 8), np.float32)]])


_HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(
  not _HAS_TORCH, reason="torch not installed (pip install torch==2.13.0, the CPU build)"
)
def test_outputs_match_torch_packed_lstm(rng):
  import torch

  torch.manual_seed(0)
  lstm = torch.nn.LSTM(F, H, num_layers=2, batch_first=True)
  lengths = np.array([5, 2, 7, 1])
  x = rng.normal(size=(4, 7, F)).astype(np.float32)
  packed = torch.nn.utils.rnn.pack_padded_sequence(
    torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
  )
  with torch.no_grad():
    out, (h_n, c_n) = lstm(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=7)
  params = convert.from_torch({k: v.numpy() for k, v in lstm.state_dict().items()})
  mask = np.arange(7)[None] < lengths[:, None]
  ours, carry = LSTM(H, num_layers=2).apply(
    {"params": params}, jnp.asarray(x), mask=jnp.asarray(mask)
  )
  scale = np.abs(out.numpy()).max()
  assert np.abs(np.asarray(ours) - out.numpy()).max() / scale <= 1e-5
  for k in range(2):  # final states after each sequence's last real step
    assert np.abs(np.asarray(carry[k][1]) - h_n[k].numpy()).max() <= 1e-5
    assert np.abs(np.asarray(carry[k][0]) - c_n[k].numpy()).max() <= 1e-5
  # and back: our params into a fresh torch LSTM give the same outputs
  fresh = torch.nn.LSTM(F, H, num_layers=2, batch_first=True)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in convert.to_torch(params).items()})
  with torch.no_grad():
    again, _ = fresh(torch.from_numpy(x))
  assert np.abs(again.numpy()[0, :5] - out.numpy()[0, :5]).max() / scale <= 1e-5
