"""Other libraries' batch layouts and lstm_jax's `Batch`, both ways, exactly.

Grain's packers (`FirstFitPackIterDataset`, `BestFitPackIterDataset`, what MaxText uses) mark a
packed row with `<key>_segment_ids` (1-based per row, 0 = padding) and `<key>_positions` (each
step's index inside its sequence). lstm_jax's batch contract says the same with `mask` (the step
is real) and `resets` (a new sequence starts here):

    mask = segment_ids > 0;   resets = mask & (positions == 0)

`from_grain_packed` turns such a batch into a `Batch` for lstm_jax's steps and models;
`to_grain_packed` gives a `Batch`'s layout as Grain marks it (tests/test_interop.py holds both
to each other on Pack's batches; tests/test_grain.py holds a `FirstFitPackIterDataset` pipeline
over a store to lstm_jax's own batches of the same rows, bit for bit).

The other way, `grain_dataset(strategy)` is any lstm_jax strategy as a Grain `IterDataset`: its
batches in order, step after step, its iterator's state the stream's position (epoch, index,
real tokens), so Grain's checkpointing saves and restores it exactly. That includes the
truncated-BPTT streams Grain has no packer for: each row is a lane that keeps its sequences
across batches (a reset where one starts), so a carry handed from batch to batch stays valid.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from lstm_jax.batching import Batch, Strategy, StreamPosition, assemble
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

  # the batch contract's dtypes, as lstm_jax's own batches have them: int32 token ids and
  # classes, float32 features and regression targets (a store's uint8 bytes, say, become int32)
  def as_contract(a: np.ndarray) -> np.ndarray:
    return a.astype(np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32)

  return Batch(
    inputs=as_contract(np.where(zero, x, 0)),
    targets=as_contract(np.where(mask.reshape(mask.shape + (1,) * (y.ndim - 2)), y, 0)),
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


def _batch_dict(batch: Batch) -> dict[str, np.ndarray]:
  return {k: v for k, v in dataclasses.asdict(batch).items() if v is not None}


@functools.cache
def _grain_classes():
  """The IterDataset and its iterator, defined once Grain is imported (an optional extra)."""
  try:
    import grain
  except ImportError:
    raise DataError(
      "grain_dataset needs Grain, which is not installed: pip install 'lstm_jax[grain]'."
    ) from None

  class StrategyIterator(grain.DatasetIterator):
    def __init__(self, strategy: Strategy, start: StreamPosition, epochs: int | None, as_dict):
      super().__init__()
      self.strategy, self.epochs, self.as_dict = strategy, epochs, as_dict
      self._start(start)

    def _start(self, position: StreamPosition) -> None:
      self.position = position
      self._stream = self.strategy.stream(position)

    def __next__(self):
      if self.epochs is not None and self.position.epoch >= self.epochs:
        raise StopIteration
      plan, after = next(self._stream)
      batch = assemble(self.strategy.dataset, plan, self.strategy.right_padded)
      self.position = after
      return _batch_dict(batch) if self.as_dict else batch

    def get_state(self) -> dict[str, Any]:
      p = self.position
      return {"epoch": int(p.epoch), "index": int(p.index), "real_tokens": int(p.real_tokens)}

    def set_state(self, state: dict[str, Any]) -> None:
      try:
        position = StreamPosition(
          int(state["epoch"]), int(state["index"]), int(state["real_tokens"])
        )
      except (KeyError, TypeError, ValueError):
        raise DataError(
          f"{state!r:.120} is not a grain_dataset iterator's state; it holds epoch, index and "
          f"real_tokens (get_state())."
        ) from None
      if (
        position.index >= len(self.strategy.plan(position.epoch))
        or min(position.epoch, position.index, position.real_tokens) < 0
      ):
        raise DataError(
          f"the state {state} is past epoch {position.epoch}'s "
          f"{len(self.strategy.plan(position.epoch))} batches: it comes from another strategy "
          f"or data; restore the state this strategy's iterator saved."
        )
      self._start(position)

  class StrategyIterDataset(grain.IterDataset):
    def __init__(self, strategy: Strategy, start: StreamPosition, epochs, as_dict):
      super().__init__()
      self.strategy, self.start, self.epochs, self.as_dict = strategy, start, epochs, as_dict

    def __iter__(self):
      return StrategyIterator(self.strategy, self.start, self.epochs, self.as_dict)

    def __str__(self) -> str:
      return f"StrategyIterDataset({self.strategy.name})"

  return StrategyIterDataset


def grain_dataset(
  strategy: Strategy,
  *,
  epochs: int | None = None,
  start: StreamPosition = StreamPosition(),
  as_dict: bool = True,
):
  """`strategy`'s batches as a Grain `IterDataset` (needs `pip install 'lstm_jax[grain]'`).

  Args:
    strategy: any strategy (Pad, Bucket, Pack, TBPTT, ...): the batches are exactly its own,
      in order (`Strategy.stream`).
    epochs: stop after this many epochs; None: without end, as `Strategy.stream`.
    start: where the stream starts (a `StreamPosition`; a checkpoint's, say).
    as_dict: each element a dict of the `Batch`'s arrays (what Grain's transformations take);
      False: the `Batch` itself.

  Returns:
    A `grain.IterDataset` whose iterators' `get_state()` is the position after the last
    element ({"epoch", "index", "real_tokens"}) and `set_state` resumes there, so Grain's
    checkpointing (and orbax's) saves the stream. A TBPTT strategy's rows are lanes: a sequence
    cut at a batch's end goes on in the same row of the next batch.
  """
  return _grain_classes()(strategy, start, epochs, as_dict)
