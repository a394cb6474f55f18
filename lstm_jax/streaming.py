"""Streaming inference: a batch of B streams fed chunk by chunk, the LSTM state kept between calls.

    streamer = Streamer(model, params, batch_size=4)
    out1 = streamer(chunk1)          # <float32>[4, T1, ...]: the model's outputs for the chunk
    out2 = streamer(chunk2)          # continues every stream where chunk1 left it
    streamer.reset([2])              # stream 2 starts a new sequence with its next chunk

The outputs over the chunks equal one forward pass over the whole sequences (tests check it to
float32 rounding), whatever the chunk lengths. A chunk of any length is padded (masked) up to the
next power of two, so jit compiles once per power of two, not once per length; `steps` counts
them. A stream with nothing new in a chunk passes `mask` False for it, and its state stays put.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.compiles import CountedJit
from lstm_jax.errors import DataError


def _next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


class Streamer:
  """Keeps the state of `batch_size` streams for `model` (an `LSTM` or `SequenceModel`).

  Args:
    model: the model to run; params: its parameters.
    batch_size: how many streams run side by side.
    pad_to_pow2: pad each chunk's length to a power of two (few compiles for any chunk sizes).

  Calling it with a chunk returns the outputs and carries each stream's state on, so the outputs
  equal one forward pass over everything sent; `reset(rows)` starts streams afresh.
  """

  def __init__(self, model, params: Any, *, batch_size: int, pad_to_pow2: bool = True):
    if batch_size < 1:
      raise DataError(f"batch_size must be >= 1, got {batch_size}.")
    self.model, self.params, self.batch_size = model, params, int(batch_size)
    self.pad_to_pow2 = pad_to_pow2
    self.carry = model.zero_carry(self.batch_size)

    def forward(params, inputs, mask, carry):
      return model.apply({"params": params}, inputs, mask=mask, initial_carry=carry)

    self.steps = CountedJit(forward, name="stream_step", label_argnum=1)

  def __call__(self, chunk, mask=None):
    """Outputs for `chunk` (<float32>[B, T, F], or <int32>[B, T] tokens for a token model),
    continuing each stream's state; `mask` <bool>[B, T] marks which steps are real (default all)."""
    chunk = np.asarray(chunk)
    if chunk.ndim < 2 or chunk.shape[0] != self.batch_size:
      raise DataError(
        f"a chunk must be [batch_size={self.batch_size}, T, ...], got {list(chunk.shape)}."
      )
    b, t = chunk.shape[:2]
    if t == 0:
      raise DataError("an empty chunk (T = 0); send at least one step.")
    mask = np.ones((b, t), bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != (b, t):
      raise DataError(f"mask must be [{b}, {t}] like the chunk, got {list(mask.shape)}.")
    padded = _next_pow2(t) if self.pad_to_pow2 else t
    if padded > t:
      chunk = np.concatenate([chunk, np.zeros((b, padded - t) + chunk.shape[2:], chunk.dtype)], 1)
      mask = np.concatenate([mask, np.zeros((b, padded - t), bool)], 1)
    outputs, self.carry = self.steps(self.params, jnp.asarray(chunk), jnp.asarray(mask), self.carry)
    return outputs[:, :t]

  def reset(self, streams: int | Sequence[int] | None = None) -> None:
    """Restores the initial state (`model.zero_carry`: zeros for the LSTM, a cell's own
    initial carry otherwise) of `streams` (all if None): each starts a new sequence."""
    if streams is None:
      self.carry = self.model.zero_carry(self.batch_size)
      return
    rows = np.atleast_1d(np.asarray(streams, int))
    if rows.size and (rows.min() < 0 or rows.max() >= self.batch_size):
      raise DataError(f"stream index out of range [0, {self.batch_size}): {rows.tolist()}.")
    fresh = np.zeros(self.batch_size, bool)
    fresh[rows] = True
    self.carry = jax.tree.map(
      lambda a, z: jnp.where(fresh.reshape((-1,) + (1,) * (a.ndim - 1)), z, a),
      self.carry,
      self.model.zero_carry(self.batch_size),
    )
