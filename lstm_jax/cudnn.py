"""The fused cuDNN LSTM (`jax.experimental.rnn`) computed from lstm_jax's own parameters.

A scanned LSTM runs one small kernel per time step; cuDNN's fused RNN runs the whole sequence
in one call. It takes right-padded rows with `seq_lengths` (optionally bidirectional) and no
resets inside a row, so it can serve `pad`, `bucket` without packed rows and whole-sequence
evaluation; `pack`, packed bucket rows and truncated BPTT (resets inside rows) keep the scan.

`lstm(params, inputs, seq_lengths, ...)` returns what `model.LSTM` / `model.BidirectionalLSTM`
return on the same rows with the mask `seq_lengths` stands for: outputs zero past each row's
length, the carry in lstm_jax's layout taken at each row's last real step. The wiring:

- weights: lstm_jax's per-layer `kernel` [F, 4H], `recurrent_kernel` [H, 4H] and `bias` [4H],
  gates i, f, g, o (PyTorch's order, cuDNN's too), packed into cuDNN's flat vector exactly
  (`pack_weights`: W_ih = kernel.T, W_hh = recurrent_kernel.T, b_ih = bias, b_hh = 0) and
  back (`unpack_weights`, the biases summed);
- precision HIGHEST (cuDNN's default lets TF32 round the matmuls, which would break the
  float32 agreement) and float32 only (cuDNN refuses bfloat16 here);
- zero-length rows (cuDNN fails on them, jax#17966): called with length 1, then their
  outputs zeroed and their carry put back to the initial one, as the masked scan leaves it.

`impl="reference"` runs the same wiring through `jax.experimental.rnn.lstm_ref`, the module's
pure-JAX reference of the cuDNN computation, which runs on any backend: the CPU tests hold this
wiring to lstm_jax's own LSTM (outputs, carry, gradients) with it; `impl="cudnn"` needs a CUDA
device.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import rnn

from lstm_jax.errors import ConfigError, DataError

IMPLS = ("cudnn", "reference")


def _pseudo_layers(layers: Sequence[Any], bidirectional: bool) -> list[dict]:
  """cuDNN's pseudo-layers, in its order: layer 0 forward, layer 0 backward, layer 1, ..."""
  if not bidirectional:
    return list(layers)
  return [p for pair in layers for p in pair]


def pack_weights(layers: Sequence[Any], bidirectional: bool = False) -> jax.Array:
  """cuDNN's flat weight vector from lstm_jax layers.

  Args:
    layers: per layer its dict (kernel [F, 4H], recurrent_kernel [H, 4H], bias [4H]); for a
      bidirectional stack, per layer its (forward, backward) pair of such dicts.
    bidirectional: whether `layers` holds pairs.

  Returns:
    <float32>[get_num_params_in_lstm(F, H, layers, bidirectional)]: every pseudo-layer's W_ih
    and W_hh, then every pseudo-layer's b_ih and b_hh (b_hh zero: lstm_jax has one bias).
  """
  pseudo = _pseudo_layers(layers, bidirectional)
  weights = []
  for p in pseudo:
    weights += [
      jnp.asarray(p["kernel"]).T.reshape(-1),
      jnp.asarray(p["recurrent_kernel"]).T.reshape(-1),
    ]
  biases = []
  for p in pseudo:
    biases += [jnp.asarray(p["bias"]), jnp.zeros_like(jnp.asarray(p["bias"]))]
  return jnp.concatenate(weights + biases).astype(jnp.float32)


def unpack_weights(
  flat: jax.Array, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool = False
) -> list:
  """lstm_jax layers from cuDNN's flat vector (`pack_weights`' inverse; b_ih + b_hh summed).

  Args:
    flat: cuDNN's weights; input_size, hidden_size, num_layers, bidirectional: its shape.

  Returns:
    Per layer its dict, or for a bidirectional stack its (forward, backward) pair.
  """
  w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(
    flat, input_size, hidden_size, num_layers, bidirectional
  )
  pseudo = [
    dict(kernel=w_ih[i].T, recurrent_kernel=w_hh[i].T, bias=b_ih[i] + b_hh[i])
    for i in range(len(w_ih))
  ]
  if not bidirectional:
    return pseudo
  return [(pseudo[2 * k], pseudo[2 * k + 1]) for k in range(num_layers)]


def lstm(
  layers: Sequence[Any],
  inputs: jax.Array,
  seq_lengths: jax.Array,
  *,
  bidirectional: bool = False,
  initial_carry: Any = None,
  impl: str = "cudnn",
) -> tuple[jax.Array, Any]:
  """An LSTM stack over right-padded rows in one fused call, from lstm_jax's parameters.

  Args:
    layers: the stack's parameters as `pack_weights` takes them (`model.layer_params(params)`
      for `model.LSTM`; (params[f"forward_{k}"], params[f"backward_{k}"]) pairs for
      `model.BidirectionalLSTM`).
    inputs: <float32>[B, T, F]; each row one sequence from step 0.
    seq_lengths: <int>[B] each row's length (0 allowed).
    bidirectional: a bidirectional stack (outputs [B, T, 2H]).
    initial_carry: lstm_jax's carry (per layer (c, h), or ((c, h), (c, h)) pairs); None: zeros.
      As in lstm_jax's scan, a bidirectional stack's backward direction starts each sequence
      from zeros (its initial carry only passes through a row with no real step).
    impl: "cudnn" (a CUDA device) or "reference" (`jax.experimental.rnn.lstm_ref`, anywhere).

  Returns:
    (outputs, carry) as `model.LSTM` / `model.BidirectionalLSTM` give them with the mask
    `seq_lengths` stands for.
  """
  if impl not in IMPLS:
    raise ConfigError(f"impl must be one of {IMPLS}, got {impl!r}.")
  if inputs.dtype != jnp.float32:
    raise DataError(
      f"the cuDNN LSTM computes in float32 (it refuses bfloat16), got {inputs.dtype} inputs; "
      f"cast them, or use the scan."
    )
  pseudo = _pseudo_layers(layers, bidirectional)
  num_layers = len(layers)
  b, _, f = inputs.shape
  h = int(pseudo[0]["recurrent_kernel"].shape[0])
  lengths = jnp.asarray(seq_lengths).astype(jnp.int32)
  if lengths.shape != (b,):
    raise DataError(f"seq_lengths must be <int>[{b}], got {list(lengths.shape)}.")
  if initial_carry is None:
    c0 = h0 = jnp.zeros((len(pseudo), b, h), jnp.float32)
  else:
    pairs = [d for layer in initial_carry for d in (layer if bidirectional else (layer,))]
    c0 = jnp.stack([c for c, _ in pairs])
    h0 = jnp.stack([hh for _, hh in pairs])
  empty = lengths == 0
  safe = jnp.maximum(lengths, 1)  # cuDNN fails on a zero length: computed as 1, undone below
  # lstm_jax's backward direction starts every sequence from zeros (its pass resets at each
  # sequence's start), where cuDNN would start it from h_0: zeros, so both backends agree
  start_c, start_h = c0, h0
  if bidirectional:
    backward = (jnp.arange(len(pseudo)) % 2 == 1)[:, None, None]
    start_c, start_h = jnp.where(backward, 0.0, c0), jnp.where(backward, 0.0, h0)
  flat = pack_weights(layers, bidirectional)  # the reference reads it back: packing is tested
  if impl == "cudnn":
    y, h_n, c_n = rnn.lstm(
      inputs, start_h, start_c, flat, safe, f, h, num_layers, 0.0, bidirectional,
      precision=jax.lax.Precision.HIGHEST,
    )  # fmt: skip
  else:
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, f, h, num_layers, bidirectional)
    with jax.default_matmul_precision("highest"):
      y, h_n, c_n = rnn.lstm_ref(
        inputs,
        start_h,
        start_c,
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        safe,
        f,
        h,
        num_layers,
        0.0,
        bidirectional,
      )
  y = jnp.where(empty[:, None, None], 0.0, y)
  h_n = jnp.where(empty[None, :, None], h0, h_n)
  c_n = jnp.where(empty[None, :, None], c0, c_n)
  per = [(c_n[i], h_n[i]) for i in range(len(pseudo))]
  if bidirectional:
    carry = tuple((per[2 * k], per[2 * k + 1]) for k in range(num_layers))
  else:
    carry = tuple(per)  # type: ignore[arg-type]  # one (c, h) a layer, either way
  return y, carry
