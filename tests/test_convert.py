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


def _torch_dict(rng, layers=2, gates=4):
  """A random torch state dict: nn.LSTM's (4 gate blocks) or nn.GRU's (gates=3)."""
  d = {}
  for k in range(layers):
    f = F if k == 0 else H
    d[f"weight_ih_l{k}"] = rng.normal(size=(gates * H, f)).astype(np.float32)
    d[f"weight_hh_l{k}"] = rng.normal(size=(gates * H, H)).astype(np.float32)
    d[f"bias_ih_l{k}"] = rng.normal(size=gates * H).astype(np.float32)
    d[f"bias_hh_l{k}"] = rng.normal(size=gates * H).astype(np.float32)
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


def _run_torch_packed(module, rng):
  """A torch RNN (batch_first) over 4 sequences of lengths 5, 2, 7, 1 packed with
  pack_padded_sequence: (inputs [4, 7, F], mask, outputs padded back to 7 steps, final state)."""
  import torch

  lengths = np.array([5, 2, 7, 1])
  x = rng.normal(size=(4, 7, F)).astype(np.float32)
  packed = torch.nn.utils.rnn.pack_padded_sequence(
    torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
  )
  with torch.no_grad():
    out, final = module(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=7)
  return x, np.arange(7)[None] < lengths[:, None], out, final


@pytest.mark.skipif(
  not _HAS_TORCH, reason="torch not installed (pip install torch==2.13.0, the CPU build)"
)
def test_outputs_match_torch_packed_lstm(rng):
  import torch

  torch.manual_seed(0)
  lstm = torch.nn.LSTM(F, H, num_layers=2, batch_first=True)
  x, mask, out, (h_n, c_n) = _run_torch_packed(lstm, rng)
  params = convert.from_torch({k: v.numpy() for k, v in lstm.state_dict().items()})
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


# GRU: PyTorch's and Keras' (reset_after=True) step, written out in float64 numpy, is the
# reference; torch itself when installed.


def _sig(z):
  return 1.0 / (1.0 + np.exp(-z))


def _numpy_torch_gru(x_TxF, state_dict, layers):
  """nn.GRU's documented step, in float64: gates r, z, n; b_hn inside the reset product."""
  x = np.asarray(x_TxF, np.float64)
  finals = []
  for k in range(layers):
    w_ih, w_hh, b_ih, b_hh = (
      np.asarray(state_dict[f"{n}_l{k}"], np.float64)
      for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    )
    h, out = np.zeros(w_hh.shape[1]), []
    for t in range(x.shape[0]):
      gi, gh = w_ih @ x[t] + b_ih, w_hh @ h + b_hh
      (i_r, i_z, i_n), (h_r, h_z, h_n) = np.split(gi, 3), np.split(gh, 3)
      r, z = _sig(i_r + h_r), _sig(i_z + h_z)
      n = np.tanh(i_n + r * h_n)
      h = (1 - z) * n + z * h
      out.append(h)
    x = np.stack(out)
    finals.append(h)
  return x, finals


def test_gru_from_torch_matches_torchs_step_and_round_trips(rng):
  sd = _torch_dict(rng, gates=3)
  params = convert.gru_from_torch(sd)
  lengths = [5, 2, 7]
  x = rng.normal(size=(3, 7, F)).astype(np.float32)
  mask = np.arange(7)[None] < np.array(lengths)[:, None]
  ours, carry = LSTM(H, num_layers=2, cell="gru").apply(
    {"params": params}, jnp.asarray(x), mask=jnp.asarray(mask)
  )
  for b, n in enumerate(lengths):
    ref, finals = _numpy_torch_gru(x[b, :n], sd, 2)
    assert np.abs(np.asarray(ours)[b, :n] - ref).max() / np.abs(ref).max() <= 1e-5
    for k in range(2):
      assert np.abs(np.asarray(carry[k])[b] - finals[k]).max() <= 1e-5
  # torch's layout: b_ir + b_hr folded into ir's bias, b_hn kept in hn
  np.testing.assert_array_equal(
    params["layer_0"]["cell"]["ir"]["bias"], sd["bias_ih_l0"][:H] + sd["bias_hh_l0"][:H]
  )
  np.testing.assert_array_equal(params["layer_0"]["cell"]["hn"]["bias"], sd["bias_hh_l0"][2 * H :])
  # round trips: ours -> torch -> ours and ours -> keras -> ours are exact
  back = convert.gru_from_torch(convert.gru_to_torch(params))
  assert jax.tree.all(jax.tree.map(np.array_equal, back, params))
  back = convert.gru_from_keras(convert.gru_to_keras(params))
  assert jax.tree.all(jax.tree.map(np.array_equal, back, params))
  # and the torch dict we write computes the same step
  ref2, _ = _numpy_torch_gru(x[0, :5], convert.gru_to_torch(params), 2)
  assert np.abs(np.asarray(ours)[0, :5] - ref2).max() / np.abs(ref2).max() <= 1e-5


def test_gru_from_keras_gate_order_z_r_h(rng):
  """Keras stacks z, r, h: a kernel whose z block is zero and whose r block is not must land
  in iz and ir accordingly; bias row 1 (recurrent) of h stays inside the reset product."""
  kernel = np.concatenate([np.zeros((F, H)), np.ones((F, H)), 2 * np.ones((F, H))], 1)
  recurrent = np.concatenate([3 * np.ones((H, H)), 4 * np.ones((H, H)), 5 * np.ones((H, H))], 1)
  bias = np.arange(6 * H, dtype=np.float32).reshape(2, 3 * H)
  cell = convert.gru_from_keras([kernel, recurrent, bias])["layer_0"]["cell"]
  assert np.all(cell["iz"]["kernel"] == 0) and np.all(cell["ir"]["kernel"] == 1)
  assert np.all(cell["in"]["kernel"] == 2) and np.all(cell["hz"]["kernel"] == 3)
  assert np.all(cell["hr"]["kernel"] == 4) and np.all(cell["hn"]["kernel"] == 5)
  np.testing.assert_array_equal(cell["iz"]["bias"], bias[0, :H] + bias[1, :H])
  np.testing.assert_array_equal(cell["ir"]["bias"], bias[0, H : 2 * H] + bias[1, H : 2 * H])
  np.testing.assert_array_equal(cell["in"]["bias"], bias[0, 2 * H :])
  np.testing.assert_array_equal(cell["hn"]["bias"], bias[1, 2 * H :])
  with pytest.raises(DataError, match="only reset_after=True"):
    convert.gru_from_keras([kernel, recurrent, bias[0]])
  with pytest.raises(DataError, match="not a GRU cell's parameters"):
    convert.gru_to_torch({"layer_0": {"cell": {"ir": {}}}})


@pytest.mark.skipif(
  not _HAS_TORCH, reason="torch not installed (pip install torch==2.13.0, the CPU build)"
)
def test_gru_outputs_match_torch_packed_gru(rng):
  import torch

  torch.manual_seed(0)
  gru = torch.nn.GRU(F, H, num_layers=2, batch_first=True)
  x, mask, out, h_n = _run_torch_packed(gru, rng)
  params = convert.gru_from_torch({k: v.numpy() for k, v in gru.state_dict().items()})
  ours, carry = LSTM(H, num_layers=2, cell="gru").apply(
    {"params": params}, jnp.asarray(x), mask=jnp.asarray(mask)
  )
  scale = np.abs(out.numpy()).max()
  assert np.abs(np.asarray(ours) - out.numpy()).max() / scale <= 1e-5
  for k in range(2):
    assert np.abs(np.asarray(carry[k]) - h_n[k].numpy()).max() <= 1e-5
