"""Readouts for sequence-level labels: what the head sees at each step.

A sequence label's loss weight sits on the sequence's last real step (the batch contract), so
the head's input there is the readout of the whole sequence:

  last       the recurrent stack's output at that step (no pooling);
  mean       the mean of the outputs over the sequence's real steps so far;
  max        their elementwise maximum;
  attention  their softmax-weighted mean, one learned score per step (`w . h_t`; a bias would
             cancel in the softmax).

Each pooled readout runs as a running pool over time, the same masked, resettable recurrence
as the stack's own state: padded steps leave it unchanged, a reset starts it afresh, and its
state travels in the model's carry, so a sequence split over truncated-BPTT chunks pools
exactly as it would whole. The pool applies the same operations in the same order to a
sequence's real steps whatever the padding, the bucket or the row it shares, so pad, bucket,
pack and tbptt give what the sequence gives alone (tests/test_readout.py). Attention keeps a
running maximum of the scores (the online softmax), so no exponent overflows however long the
sequence.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax.errors import ConfigError

Array = jax.Array

READOUTS = ("last", "mean", "max", "attention")


def check_readout(readout: str) -> None:
  if readout not in READOUTS:
    raise ConfigError(f"readout must be one of {READOUTS}, got {readout!r}.")


def zero_pool(readout: str, batch_size: int, width: int) -> dict[str, Array] | None:
  """The pool's empty state for `batch_size` rows of `width`-wide outputs (None for "last").

  count <float32>[B] (real steps pooled); mean: sum <float32>[B, D]; max: max <float32>[B, D];
  attention: score_max <float32>[B], weight_sum <float32>[B], weighted <float32>[B, D] (the
  online softmax's running maximum, normaliser and weighted sum).
  """
  check_readout(readout)
  if readout == "last":
    return None
  rows, vectors = jnp.zeros((batch_size,), jnp.float32), jnp.zeros((batch_size, width), jnp.float32)
  if readout == "mean":
    return {"count": rows, "sum": vectors}
  if readout == "max":
    return {"count": rows, "max": vectors}
  return {"count": rows, "score_max": rows, "weight_sum": rows, "weighted": vectors}


def _pool_step(readout: str, pool: dict, h_BxD: Array, mask_B: Array, reset_B: Array, score_B):
  """The pool after one step: reset first (a new sequence), then the step pooled where real."""
  pool = jax.tree.map(lambda a: jnp.where(_rows(reset_B, a), jnp.zeros_like(a), a), pool)
  first = pool["count"] == 0  # the sequence's first real step starts the pool from it
  new = {"count": pool["count"] + 1.0}
  if readout == "mean":
    new["sum"] = pool["sum"] + h_BxD
  elif readout == "max":
    new["max"] = jnp.where(first[:, None], h_BxD, jnp.maximum(pool["max"], h_BxD))
  else:
    top = jnp.where(first, score_B, jnp.maximum(pool["score_max"], score_B))
    old = jnp.where(first, 0.0, jnp.exp(pool["score_max"] - top))  # rescales what was pooled
    this = jnp.exp(score_B - top)
    new["score_max"] = top
    new["weight_sum"] = pool["weight_sum"] * old + this
    new["weighted"] = pool["weighted"] * old[:, None] + this[:, None] * h_BxD
  return jax.tree.map(lambda n, o: jnp.where(_rows(mask_B, n), n, o), new, pool)


def _rows(flag_B: Array, a: Array) -> Array:
  return flag_B.reshape(flag_B.shape + (1,) * (a.ndim - 1))


def pooled(readout: str, pool: dict) -> Array:
  """The readout of what the pool holds, <float32>[B, D]; zero for a row with no real step yet."""
  count = pool["count"][:, None]
  if readout == "mean":
    return pool["sum"] / jnp.maximum(count, 1.0)
  if readout == "max":
    return jnp.where(count > 0, pool["max"], 0.0)
  return pool["weighted"] / jnp.maximum(pool["weight_sum"], 1e-30)[:, None]


def running_readout(
  readout: str,
  outputs_BxTxD: Array,
  mask_BxT: Array | None,
  resets_BxT: Array | None,
  pool: dict | None,
  scores_BxT: Array | None = None,
) -> tuple[Array, Any]:
  """The readout at every step and the pool after the last: (<float32>[B, T, D], pool).

  outputs_BxTxD: the stack's outputs; mask_BxT, resets_BxT: the batch's (None: every step real,
  no reset); pool: the incoming pool (the carry's; None: empty); scores_BxT: attention's scores.
  "last" returns the outputs as they are and None.
  """
  check_readout(readout)
  if readout == "last":
    return outputs_BxTxD, None
  b, t, d = outputs_BxTxD.shape
  if pool is None:
    pool = zero_pool(readout, b, d)
  mask = jnp.ones((b, t), bool) if mask_BxT is None else mask_BxT.astype(bool)
  resets = jnp.zeros((b, t), bool) if resets_BxT is None else resets_BxT.astype(bool)
  if readout == "attention":
    if scores_BxT is None:
      raise ConfigError("the attention readout needs each step's score (scores_BxT).")
    scores = scores_BxT.astype(jnp.float32)
  else:
    scores = jnp.zeros((b, t), jnp.float32)
  h = outputs_BxTxD.astype(jnp.float32)

  def step(p, xs):
    h_BxD, m_B, r_B, s_B = xs
    p = _pool_step(readout, p, h_BxD, m_B, r_B, s_B)
    return p, pooled(readout, p)

  xs = (jnp.swapaxes(h, 0, 1), mask.T, resets.T, scores.T)
  pool, out_TxBxD = jax.lax.scan(step, pool, xs)
  return jnp.swapaxes(out_TxBxD, 0, 1), pool
