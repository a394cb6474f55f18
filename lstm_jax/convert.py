"""Exact weight conversion between lstm_jax's LSTM and GRU and PyTorch / Keras LSTMs and GRUs, in
numpy (the GRU's functions, `gru_from_torch` etc., are at the end, with their layout).

`params` below is what `LSTM(...).init(...)["params"]` holds: {"layer_k": {"kernel" [F, 4H],
"recurrent_kernel" [H, 4H], "bias" [4H]}} (a SequenceModel keeps the same under params["lstm"]).
All three libraries order the gates i, f, g(c), o, so conversion is transposes and a bias sum:

    PyTorch nn.LSTM (state_dict, layer k)         lstm_jax layer_k
    weight_ih_l{k}  [4H, F]            <->        kernel            = weight_ih.T
    weight_hh_l{k}  [4H, H]            <->        recurrent_kernel  = weight_hh.T
    bias_ih_l{k} + bias_hh_l{k}  [4H]  <->        bias              (to_torch puts it all in
                                                                     bias_ih, zeros in bias_hh)
    Keras LSTM (get_weights(), per layer)
    [kernel [F, 4H], recurrent_kernel [H, 4H], bias [4H]]  <->  the same three arrays

Nothing here imports torch or keras; arrays come and go as numpy (torch tensors: pass
`{k: v.numpy() for k, v in lstm.state_dict().items()}`). Only unidirectional layers without
projections convert (PyTorch `proj_size=0`, `bidirectional=False`); anything else raises a
`ValueError` naming the key.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from lstm_jax.errors import DataError

_TORCH_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)$")


def _layers(params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  params = params.get("lstm", params)
  names = sorted((k for k in params if re.fullmatch(r"layer_\d+", k)), key=lambda k: int(k[6:]))
  if not names or names != [f"layer_{i}" for i in range(len(names))]:
    raise DataError(f"expected LSTM params with layer_0, layer_1, ...; got keys {sorted(params)}.")
  return [params[n] for n in names]


def _f32(a, name: str) -> np.ndarray:
  a = np.asarray(a)
  if not np.issubdtype(a.dtype, np.floating):
    raise DataError(f"{name} must be a floating-point array, got {a.dtype}.")
  return a.astype(np.float32)


def _check_layer(kernel, recurrent, bias, where: str) -> None:
  four_h = recurrent.shape[-1]
  if four_h % 4 or recurrent.shape != (four_h // 4, four_h):
    raise DataError(f"{where}: the recurrent kernel must be [H, 4H], got {recurrent.shape}.")
  if kernel.ndim != 2 or kernel.shape[1] != four_h:
    raise DataError(f"{where}: the kernel must be [F, {four_h}], got {kernel.shape}.")
  if bias.shape != (four_h,):
    raise DataError(f"{where}: the bias must be [{four_h}], got {bias.shape}.")


def _torch_layers(state_dict: Mapping[str, Any], what: str) -> list[dict[str, np.ndarray]]:
  """A torch RNN state dict's arrays by layer: [{"weight_ih": ..., "weight_hh": ..., maybe
  "bias_ih", "bias_hh"}, ...], float32; unexpected keys and missing layers are DataErrors."""
  layers: dict[int, dict[str, np.ndarray]] = {}
  for key, value in state_dict.items():
    m = _TORCH_KEY.match(key)
    if m is None:
      raise DataError(
        f"unexpected key {key!r} in the torch state dict; only unidirectional {what} convert "
        f"(weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ...)."
      )
    layers.setdefault(int(m.group(2)), {})[m.group(1)] = _f32(value, key)
  out = []
  for k in range(len(layers)):
    if k not in layers:
      raise DataError(f"the torch state dict has no layer {k} (found {sorted(layers)}).")
    missing = {"weight_ih", "weight_hh"} - set(layers[k])
    if missing:
      raise DataError(f"layer {k} lacks {sorted(f'{n}_l{k}' for n in missing)}.")
    out.append(layers[k])
  return out


def from_torch(state_dict: Mapping[str, Any]) -> dict:
  """lstm_jax params from a PyTorch nn.LSTM state dict (numpy arrays)."""
  out = {}
  for k, w in enumerate(_torch_layers(state_dict, "nn.LSTM weights without projections")):
    four_h = w["weight_hh"].shape[0]
    bias = w.get("bias_ih", np.zeros(four_h, np.float32)) + w.get(
      "bias_hh", np.zeros(four_h, np.float32)
    )
    kernel, recurrent = w["weight_ih"].T.copy(), w["weight_hh"].T.copy()
    _check_layer(kernel, recurrent, bias, f"torch layer {k}")
    out[f"layer_{k}"] = dict(kernel=kernel, recurrent_kernel=recurrent, bias=bias)
  return out


def to_torch(params: Mapping[str, Any]) -> dict:
  """A PyTorch nn.LSTM state dict (numpy arrays) from lstm_jax params; the bias goes into
  bias_ih and bias_hh is zero, so outputs match exactly."""
  out = {}
  for k, layer in enumerate(_layers(params)):
    kernel, recurrent = _f32(layer["kernel"], "kernel"), _f32(layer["recurrent_kernel"], "rk")
    bias = _f32(layer["bias"], "bias")
    _check_layer(kernel, recurrent, bias, f"layer_{k}")
    out[f"weight_ih_l{k}"] = kernel.T.copy()
    out[f"weight_hh_l{k}"] = recurrent.T.copy()
    out[f"bias_ih_l{k}"] = bias.copy()
    out[f"bias_hh_l{k}"] = np.zeros_like(bias)
  return out


def _keras_layers(weights: Sequence[Any], what: str) -> list[tuple[np.ndarray, ...]]:
  """Keras weights per layer as float32 (kernel, recurrent_kernel, bias): from a list of
  `layer.get_weights()` lists or dicts, or one layer's three arrays as they are."""
  if len(weights) == 3 and all(hasattr(w, "shape") for w in weights):
    weights = [weights]
  out = []
  for k, layer in enumerate(weights):
    if isinstance(layer, Mapping):
      layer = [layer["kernel"], layer["recurrent_kernel"], layer.get("bias")]
    if len(layer) != 3 or layer[2] is None:
      raise DataError(
        f"{what} {k}: expected [kernel, recurrent_kernel, bias] (use_bias=True), got "
        f"{len(layer)} arrays."
      )
    out.append(tuple(_f32(a, n) for a, n in zip(layer, ("kernel", "rk", "bias"))))
  return out


def from_keras(weights: Sequence[Any]) -> dict:
  """lstm_jax params from Keras LSTM weights: per layer `layer.get_weights()` ([kernel,
  recurrent_kernel, bias]) or a dict with those keys; a list of such, one per stacked layer (a
  single layer's three arrays are accepted as is)."""
  out = {}
  for k, (kernel, recurrent, bias) in enumerate(_keras_layers(weights, "Keras layer")):
    _check_layer(kernel, recurrent, bias, f"Keras layer {k}")
    out[f"layer_{k}"] = dict(
      kernel=kernel.copy(), recurrent_kernel=recurrent.copy(), bias=bias.copy()
    )
  return out


def to_keras(params: Mapping[str, Any]) -> list[list[np.ndarray]]:
  """Per layer [kernel, recurrent_kernel, bias], as Keras' `layer.set_weights` takes them."""
  return [
    [
      _f32(layer["kernel"], "kernel").copy(),
      _f32(layer["recurrent_kernel"], "rk").copy(),
      _f32(layer["bias"], "bias").copy(),
    ]
    for layer in _layers(params)
  ]


# GRU: lstm_jax's cell="gru" is Flax's GRUCell, whose parameters per layer are
# {"cell": {"ir", "iz", "in": {"kernel" [F, H], "bias" [H]}, "hr", "hz": {"kernel" [H, H]},
# "hn": {"kernel" [H, H], "bias" [H]}}}. Its step is PyTorch's and Keras' (reset_after=True):
#
#     r = sigmoid(x W_ir + b_ir + h W_hr + b_hr),   z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
#     n = tanh(x W_in + b_in + r * (h W_hn + b_hn)),  h' = (1 - z) * n + z * h
#
# so b_ir + b_hr and b_iz + b_hz fold into one bias each, while b_hn stays inside the reset
# product (in "hn"). PyTorch nn.GRU stacks the gates r, z, n in weight_ih_l{k} [3H, F],
# weight_hh_l{k} [3H, H], bias_ih_l{k} and bias_hh_l{k} [3H]; Keras GRU (reset_after=True, its
# default) stacks z, r, h in kernel [F, 3H] and recurrent_kernel [H, 3H], with bias [2, 3H]
# (input bias, recurrent bias).

_GATES_TORCH = ("r", "z", "n")
_GATES_KERAS = ("z", "r", "n")


def _gru_layers(params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  params = params.get("rnn", params)
  names = sorted((k for k in params if re.fullmatch(r"layer_\d+", k)), key=lambda k: int(k[6:]))
  if not names or names != [f"layer_{i}" for i in range(len(names))]:
    raise DataError(f"expected GRU params with layer_0, layer_1, ...; got keys {sorted(params)}.")
  out = []
  for n in names:
    cell = params[n].get("cell", params[n])
    missing = {"ir", "iz", "in", "hr", "hz", "hn"} - set(cell)
    if missing:
      raise DataError(f"{n}: not a GRU cell's parameters, it lacks {sorted(missing)}.")
    out.append(cell)
  return out


def _gru_cell(w_i: dict, w_h: dict, b_i: dict, b_h: dict) -> dict:
  """Flax GRUCell parameters from per-gate input/recurrent weights [in, H] and biases [H]."""
  return dict(
    ir=dict(kernel=w_i["r"], bias=b_i["r"] + b_h["r"]),
    iz=dict(kernel=w_i["z"], bias=b_i["z"] + b_h["z"]),
    hr=dict(kernel=w_h["r"]),
    hz=dict(kernel=w_h["z"]),
    **{"in": dict(kernel=w_i["n"], bias=b_i["n"])},
    hn=dict(kernel=w_h["n"], bias=b_h["n"]),
  )


def _split(a: np.ndarray, gates: Sequence[str], axis: int) -> dict:
  return {g: part.copy() for g, part in zip(gates, np.split(a, 3, axis=axis))}


def gru_from_torch(state_dict: Mapping[str, Any]) -> dict:
  """lstm_jax GRU params ({"layer_k": {"cell": ...}}, what `LSTM(H, cell="gru").init(...)`
  holds and `SequenceModel(cell="gru")` keeps under params["rnn"]) from a PyTorch nn.GRU state
  dict (numpy arrays)."""
  out = {}
  for k, w in enumerate(_torch_layers(state_dict, "nn.GRU weights")):
    three_h = w["weight_hh"].shape[0]
    if three_h % 3 or w["weight_hh"].shape != (three_h, three_h // 3):
      raise DataError(f"torch layer {k}: weight_hh must be [3H, H], got {w['weight_hh'].shape}.")
    if w["weight_ih"].shape[0] != three_h:
      raise DataError(f"torch layer {k}: weight_ih must be [3H, F], got {w['weight_ih'].shape}.")
    zeros = np.zeros(three_h, np.float32)
    out[f"layer_{k}"] = dict(
      cell=_gru_cell(
        _split(w["weight_ih"].T, _GATES_TORCH, 1),
        _split(w["weight_hh"].T, _GATES_TORCH, 1),
        _split(w.get("bias_ih", zeros), _GATES_TORCH, 0),
        _split(w.get("bias_hh", zeros), _GATES_TORCH, 0),
      )
    )
  return out


def gru_to_torch(params: Mapping[str, Any]) -> dict:
  """A PyTorch nn.GRU state dict (numpy arrays) from lstm_jax GRU params: the folded r and z
  biases go into bias_ih, b_hn into bias_hh (its r and z parts zero), so outputs match exactly."""
  out = {}
  for k, c in enumerate(_gru_layers(params)):

    def get(gate, kind):
      return _f32(c[gate][kind], f"layer_{k}.{gate}.{kind}")

    out[f"weight_ih_l{k}"] = np.concatenate([get(g, "kernel") for g in ("ir", "iz", "in")], 1).T
    out[f"weight_hh_l{k}"] = np.concatenate([get(g, "kernel") for g in ("hr", "hz", "hn")], 1).T
    out[f"bias_ih_l{k}"] = np.concatenate([get(g, "bias") for g in ("ir", "iz", "in")])
    zeros = np.zeros_like(get("hn", "bias"))
    out[f"bias_hh_l{k}"] = np.concatenate([zeros, zeros, get("hn", "bias")])
  return {k: v.copy() for k, v in out.items()}


def gru_from_keras(weights: Sequence[Any]) -> dict:
  """lstm_jax GRU params from Keras GRU weights (reset_after=True): per layer
  `layer.get_weights()` ([kernel [F, 3H], recurrent_kernel [H, 3H], bias [2, 3H]], gates z, r,
  h), a list of such for stacked layers (one layer's three arrays are accepted as is)."""
  out = {}
  for k, (kernel, recurrent, bias) in enumerate(_keras_layers(weights, "Keras GRU layer")):
    if bias.shape != (2, kernel.shape[-1]):
      raise DataError(
        f"Keras GRU layer {k}: bias {bias.shape} is not [2, 3H]; only reset_after=True (Keras' "
        f"default, the cuDNN/PyTorch form) converts exactly. Rebuild the layer with "
        f"reset_after=True."
      )
    out[f"layer_{k}"] = dict(
      cell=_gru_cell(
        _split(kernel, _GATES_KERAS, 1),
        _split(recurrent, _GATES_KERAS, 1),
        _split(bias[0], _GATES_KERAS, 0),
        _split(bias[1], _GATES_KERAS, 0),
      )
    )
  return out


def gru_to_keras(params: Mapping[str, Any]) -> list[list[np.ndarray]]:
  """Per layer [kernel, recurrent_kernel, bias [2, 3H]] for a Keras GRU(reset_after=True)."""
  out = []
  for k, c in enumerate(_gru_layers(params)):

    def get(gate, kind):
      return _f32(c[gate][kind], f"layer_{k}.{gate}.{kind}")

    zeros = np.zeros_like(get("hn", "bias"))
    out.append(
      [
        np.concatenate([get(g, "kernel") for g in ("iz", "ir", "in")], 1),
        np.concatenate([get(g, "kernel") for g in ("hz", "hr", "hn")], 1),
        np.stack(
          [
            np.concatenate([get(g, "bias") for g in ("iz", "ir", "in")]),
            np.concatenate([zeros, zeros, get("hn", "bias")]),
          ]
        ),
      ]
    )
  return out
