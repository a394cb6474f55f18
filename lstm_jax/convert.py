"""Exact weight conversion between lstm_jax's LSTM and PyTorch / Keras LSTMs, in numpy.

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


def from_torch(state_dict: Mapping[str, Any]) -> dict:
  """lstm_jax params from a PyTorch nn.LSTM state dict (numpy arrays)."""
  layers: dict[int, dict[str, np.ndarray]] = {}
  for key, value in state_dict.items():
    m = _TORCH_KEY.match(key)
    if m is None:
      raise DataError(
        f"unexpected key {key!r} in the torch state dict; only unidirectional "
        f"nn.LSTM weights without projections convert (weight_ih_l0, weight_hh_l0, "
        f"bias_ih_l0, bias_hh_l0, ...)."
      )
    layers.setdefault(int(m.group(2)), {})[m.group(1)] = _f32(value, key)
  out = {}
  for k in range(len(layers)):
    if k not in layers:
      raise DataError(f"the torch state dict has no layer {k} (found {sorted(layers)}).")
    w = layers[k]
    missing = {"weight_ih", "weight_hh"} - set(w)
    if missing:
      raise DataError(f"layer {k} lacks {sorted(f'{n}_l{k}' for n in missing)}.")
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


def from_keras(weights: Sequence[Any]) -> dict:
  """lstm_jax params from Keras LSTM weights: per layer `layer.get_weights()` ([kernel,
  recurrent_kernel, bias]) or a dict with those keys; a list of such, one per stacked layer (a
  single layer's three arrays are accepted as is)."""
  if len(weights) == 3 and all(hasattr(w, "shape") for w in weights):
    weights = [weights]
  out = {}
  for k, layer in enumerate(weights):
    if isinstance(layer, Mapping):
      layer = [layer["kernel"], layer["recurrent_kernel"], layer.get("bias")]
    if len(layer) != 3 or layer[2] is None:
      raise DataError(
        f"Keras layer {k}: expected [kernel, recurrent_kernel, bias] (use_bias=True), "
        f"got {len(layer)} arrays."
      )
    kernel, recurrent, bias = (_f32(a, n) for a, n in zip(layer, ("kernel", "rk", "bias")))
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
