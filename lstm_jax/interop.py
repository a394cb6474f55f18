"""Other libraries' batch layouts and lstm_jax's `Batch`, both ways, exactly.

Grain's packers (`FirstFitPackIterDataset`, `BestFitPackIterDataset`, what MaxText uses) mark a
packed row with `<key>_segment_ids` (1-based per row, 0 = padding) and `<key>_positions` (each
step's index inside its sequence). lstm_jax's batch contract says the same with `mask` (the step
is real) and `resets` (a new sequence starts here):

    mask = segment_ids > 0;   resets = mask & (positions == 0)

`from_grain_packed` turns such a batch into a `Batch` for lstm_jax's steps and models;
`to_grain_packed` gives a `Batch`'s layout as Grain marks it (tests/test_interop.py holds both
to each other on Pack's batches).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lstm_jax.batching import Batch
from lstm_jax.errors import DataError


def from_grain_packed(
  example: dict[str, Any],
  *,
  inputs: str = "inputs",
  targets: str = "targets",
  sequence_labels: bool = False,
) -> Batch:
  """A Grain-packed batch as lstm_jax's `Batch`.

  Args:
    example: the batch's arrays by name: `inputs` <float32>[B, T, F] or <int32>[B, T], `targets`
      per step, and `<inputs>_segment_ids`, `<inputs>_positions` <int>[B, T] as Grain's packers
      write them.
    inputs, targets: the keys of the inputs and the targets.
    sequence_labels: each segment's targets hold its sequence's label at every step (a label
      packed along with its sequence): the loss weight goes on each segment's last step only,
      as lstm_jax's own sequence-level batches put it; else every real step weighs 1.

  Returns:
    The `Batch` (seq_lengths None: a packed row has no single length). A layout that is not
    Grain's (negative ids, positions that do not start at 0 or count up by 1 inside a segment)
    is a DataError naming the row and step.
  """
  try:
    x, y = np.asarray(example[inputs]), np.asarray(example[targets])
    seg = np.asarray(example[f"{inputs}_segment_ids"])
    pos = np.asarray(example[f"{inputs}_positions"])
  except KeyError as e:
    raise DataError(
      f"the packed batch has no {e.args[0]!r} array (it has {sorted(example)}); a Grain-packed "
      f"batch holds {inputs!r}, {targets!r}, {inputs}_segment_ids and {inputs}_positions."
    ) from None
  if seg.ndim != 2 or pos.shape != seg.shape or x.shape[:2] != seg.shape:
    raise DataError(
      f"segment_ids {list(seg.shape)}, positions {list(pos.shape)} and inputs "
      f"{list(x.shape)} must share their first two axes [B, T]."
    )
  mask = seg > 0
  same = np.zeros_like(mask)
  same[:, 1:] = mask[:, 1:] & (seg[:, 1:] == seg[:, :-1])  # continues the step before it
  expected = np.where(same, np.concatenate([pos[:, :1], pos[:, :-1] + 1], axis=1), 0)
  bad = (seg < 0) | (mask & (pos != expected))
  if bad.any():
    r, t = (int(v) for v in np.argwhere(bad)[0])
    raise DataError(
      f"the packed batch's row {r}, step {t}: segment id {int(seg[r, t])} at position "
      f"{int(pos[r, t])}; Grain's layout has ids >= 0 (0: padding) and positions that start "
      f"at 0 with each segment and count up by 1."
    )
  resets = mask & ~same
  if sequence_labels:
    last = mask.copy()
    last[:, :-1] &= ~same[:, 1:]  # the next step does not continue this segment
    weights = last.astype(np.float32)
  else:
    weights = mask.astype(np.float32)
  zero = mask.reshape(mask.shape + (1,) * (x.ndim - 2))
  return Batch(
    inputs=np.where(zero, x, 0).astype(x.dtype),
    targets=np.where(mask.reshape(mask.shape + (1,) * (y.ndim - 2)), y, 0).astype(y.dtype),
    weights=weights,
    mask=mask,
    resets=resets,
  )


def to_grain_packed(batch: Batch, *, inputs: str = "inputs") -> dict[str, np.ndarray]:
  """A `Batch`'s layout as Grain's packers mark it.

  Args:
    batch: any strategy's batch (a row's sequences back to back, padding only at its end).
    inputs: the key the segment ids and positions are named after.

  Returns:
    {`<inputs>_segment_ids`, `<inputs>_positions`}: <int32>[B, T], ids 1-based per row (0 on
    padding), positions counting from 0 at each reset.
  """
  mask, resets = np.asarray(batch.mask, bool), np.asarray(batch.resets, bool)
  starts = resets | (mask & ~np.concatenate([np.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1))
  seg = np.where(mask, np.cumsum(starts, axis=1), 0).astype(np.int32)
  t = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)
  first = np.maximum.accumulate(np.where(starts, t, 0), axis=1)
  pos = np.where(mask, t - first, 0).astype(np.int32)
  return {f"{inputs}_segment_ids": seg, f"{inputs}_positions": pos}
