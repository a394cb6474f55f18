"""The one batch contract every strategy emits (`Batch`), and plans held as arrays: which
steps of which sequence go where in each batch of an epoch (`EpochPlan`, a table of segments;
`StreamPlan` for truncated BPTT, the streams' layout from which each batch's segments are cut
when it is asked for), a few tens of bytes per sequence; `assemble` builds a numpy `Batch` from
a plan; `StreamPosition` is where a stream of batches stands (saved with a checkpoint).

The strategies that make the plans are in `lstm_jax.batching` (which also names everything
here), the algorithms behind them in `lstm_jax.planning`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Iterator, NamedTuple, Sequence

import flax.struct
import numpy as np

from lstm_jax.data import RaggedDataset, gather_steps
from lstm_jax.errors import DataError


@flax.struct.dataclass
class Batch:
  """One fixed-shape batch; every strategy emits these and the train step knows nothing else.

  Args (fields):
    inputs: <float32>[B, T, F] features, or <int32>[B, T] token ids.
    targets: <int32>[B, T] classes / next tokens, or <float32>[B, T, D] regression targets.
    weights: <float32>[B, T] loss weight: 0 on padding; a sequence-level target puts its weight
      on the sequence's last real step only.
    mask: <bool>[B, T] True where the step is real: the carry advances only there.
    resets: <bool>[B, T] True where a new sequence starts: the state is zeroed before that step.
    seq_lengths: <int32>[B] each row's real steps, for right-padded rows only (one sequence per
      row from step 0: `Strategy.right_padded`), where the fused cuDNN LSTM can take them in
      place of the mask (`backend.step_backend`); None for any other layout.
  """

  inputs: np.ndarray
  targets: np.ndarray
  weights: np.ndarray
  mask: np.ndarray
  resets: np.ndarray
  seq_lengths: np.ndarray | None = None

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.mask.shape)


class Segment(NamedTuple):
  """A run of one sequence's steps placed in a batch row."""

  sequence: int  # index in the dataset
  start: int  # first step taken from the sequence (0: it begins here, so a reset)
  position: int  # where in the row it goes
  length: int  # number of steps


# The columns of a plan's segment table, <int32>[num_segments, 5], sorted by (row, position).
ROW, SEQUENCE, START, POSITION, LENGTH = range(5)


@dataclasses.dataclass(frozen=True, eq=False)
class BatchPlan:
  """Where each real step of one batch comes from: `segments` <int32>[n, 5], one row per run of
  one sequence's steps (row, sequence, start, position, length), sorted by row and position.
  Rows no segment names are empty."""

  batch_size: int
  length: int
  segments: np.ndarray
  lr_scale: float = 1.0  # the step's learning-rate factor (variable-length BPTT)

  @property
  def shape(self) -> tuple[int, int]:
    return (self.batch_size, self.length)

  @property
  def real_tokens(self) -> int:
    return int(self.segments[:, LENGTH].sum())

  @property
  def computed_tokens(self) -> int:
    return self.batch_size * self.length

  @property
  def rows(self) -> tuple[tuple[Segment, ...], ...]:
    """The segments row by row, up to the last row that holds one (for reading a plan)."""
    segs = self.segments
    if not len(segs):
      return ()
    out: list[list[Segment]] = [[] for _ in range(int(segs[:, ROW].max()) + 1)]
    for r, *seg in segs.tolist():
      out[r].append(Segment(*seg))
    return tuple(tuple(r) for r in out)

  def take_rows(self, start: int, stop: int) -> BatchPlan:
    """Rows [start, stop) as a batch of their own (a process's share of a global batch)."""
    rows = self.segments[:, ROW]
    segs = self.segments[(rows >= start) & (rows < stop)].copy()
    segs[:, ROW] -= start
    return BatchPlan(stop - start, self.length, segs, self.lr_scale)


class EpochPlan(Sequence[BatchPlan]):
  """One epoch's batches, in order, as arrays: batch i is `BatchPlan(batch_size[i], length[i],
  segments[offsets[i]:offsets[i + 1]], lr_scale[i])`, built when it is asked for.

  batch_size, length: <int64>[num_batches]; lr_scale: <float64>[num_batches];
  segments: <int32>[num_segments, 5] (see `BatchPlan`), batch after batch;
  offsets: <int64>[num_batches + 1].
  """

  def __init__(
    self, batch_size, length, segments, offsets, lr_scale=None, real_tokens=None, order=None
  ):
    self.batch_size = np.asarray(batch_size, np.int64)
    self.length = np.asarray(length, np.int64)
    self.segments, self.offsets = segments, np.asarray(offsets, np.int64)
    # batch i's segments are the table's block order[i] (None: block i), so reordering the
    # batches moves no segment; the per-batch arrays are in the batches' order
    self.order = order
    n = len(self.batch_size)
    self.lr_scale = np.ones(n) if lr_scale is None else np.asarray(lr_scale, np.float64)
    if real_tokens is None:
      real_tokens = _segment_sums(segments[:, LENGTH], self.offsets)
      real_tokens = real_tokens if order is None else real_tokens[order]
    self.real_tokens = np.asarray(real_tokens, np.int64)  # <int64>[num_batches]

  def __len__(self) -> int:
    return len(self.batch_size)

  def _blocks(self) -> np.ndarray:
    """Each batch's block of the segment table, in the batches' order."""
    return np.arange(len(self)) if self.order is None else self.order

  def batch_segments(self, i: int) -> np.ndarray:
    j = i if self.order is None else int(self.order[i])
    return self.segments[self.offsets[j] : self.offsets[j + 1]]

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    if i < 0:
      i += len(self)
    if not 0 <= i < len(self):
      raise IndexError(f"batch {i} of an epoch of {len(self)}")
    return BatchPlan(
      int(self.batch_size[i]), int(self.length[i]), self.batch_segments(i), float(self.lr_scale[i])
    )

  def __iter__(self) -> Iterator[BatchPlan]:
    return (self[i] for i in range(len(self)))

  @property
  def computed_tokens(self) -> np.ndarray:
    return self.batch_size * self.length

  def shapes(self) -> list[tuple[int, int]]:
    """The distinct (B, T), in the order the epoch first meets them."""
    pairs = self.batch_size * (int(self.length.max(initial=0)) + 1) + self.length
    _, first = np.unique(pairs, return_index=True)
    return [(int(self.batch_size[i]), int(self.length[i])) for i in np.sort(first)]

  def widened(self, multiple: int) -> EpochPlan:
    """The same batches with each row count rounded up to a multiple (empty rows added)."""
    plan = copy.copy(self)
    plan.batch_size = -(-self.batch_size // multiple) * multiple
    return plan

  def reordered(self, order: np.ndarray) -> EpochPlan:
    """The batches in `order` (the segment table stays as it is)."""
    order = np.asarray(order, np.int64)
    return EpochPlan(
      self.batch_size[order],
      self.length[order],
      self.segments,
      self.offsets,
      self.lr_scale[order],
      self.real_tokens[order],
      self._blocks()[order],
    )

  @staticmethod
  def concatenate(plans: Sequence[EpochPlan]) -> EpochPlan:
    plans = [p for p in plans if len(p)]
    if not plans:
      return EpochPlan([], [], np.zeros((0, 5), np.int32), [0])
    sizes = np.cumsum([0] + [len(p.segments) for p in plans])
    blocks = np.cumsum([0] + [len(p.offsets) - 1 for p in plans])
    order = None
    if any(p.order is not None for p in plans):
      order = np.concatenate([p._blocks() + b for p, b in zip(plans, blocks)])
    return EpochPlan(
      np.concatenate([p.batch_size for p in plans]),
      np.concatenate([p.length for p in plans]),
      np.concatenate([p.segments for p in plans]),
      np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(plans, sizes)]),
      np.concatenate([p.lr_scale for p in plans]),
      np.concatenate([p.real_tokens for p in plans]),
      order,
    )


class StreamPlan(EpochPlan):
  """Truncated BPTT's epoch: sequences laid end to end in `num_streams` streams and cut into
  windows [starts[c], starts[c] + spans[c]), each padded to length[c]. Held as the layout only
  (each sequence's stream and position: 12 bytes a sequence); a batch's segments are cut from
  it when that batch is asked for."""

  def __init__(self, lengths, num_streams, layout, starts, spans, shapes, lr_scale=None):
    stream, position, order = layout  # `_lay_streams`: order is by stream, then position
    self._lengths, self._num_streams = lengths, int(num_streams)
    self._seq = order.astype(np.int32)
    self._starts, self._spans = np.asarray(starts, np.int64), np.asarray(spans, np.int64)
    # one key per sequence, stream * span + position: span past every position and window end
    ends = (self._starts + self._spans).max(initial=0)
    self._span = int(max(position.max(initial=0) + lengths.max(initial=0), ends)) + 1
    self._key = stream[order].astype(np.int64) * self._span + position[order]
    loads = np.bincount(stream, weights=lengths, minlength=num_streams).astype(np.int64)
    # a stream's steps fill [0, load) without gaps: chunk c holds min(span, load - start) of it
    real = np.zeros(len(self._starts), np.int64)
    for load in loads:
      real += np.clip(load - self._starts, 0, self._spans)
    super().__init__(
      np.full(len(self._starts), num_streams),
      shapes,
      np.zeros((0, 5), np.int32),
      np.zeros(len(self._starts) + 1, np.int64),
      lr_scale,
      real,
    )

  def batch_segments(self, i: int) -> np.ndarray:
    lo_t, hi_t = int(self._starts[i]), int(self._starts[i] + self._spans[i])
    base = np.arange(self._num_streams, dtype=np.int64) * self._span
    first = np.searchsorted(self._key, base + lo_t, side="right") - 1  # the one holding lo_t
    last = np.searchsorted(self._key, base + hi_t, side="left")
    n = last - first
    idx = gather_steps(first, n)
    seq = self._seq[idx].astype(np.int64)
    pos = self._key[idx] % self._span
    row = self._key[idx] // self._span
    lo = np.maximum(pos, lo_t)
    hi = np.minimum(pos + self._lengths[seq], hi_t)
    keep = hi > lo
    return _table(row, seq, lo - pos, lo - lo_t, hi - lo)[keep]

  def reordered(self, order):
    raise TypeError("a stream plan's batches follow the streams; they cannot be reordered")


def _table(row, sequence, start, position, length) -> np.ndarray:
  """A segment table, <int32>[n, 5] (ROW, SEQUENCE, START, POSITION, LENGTH): 20 bytes a
  segment, so a plan of millions of sequences stays small."""
  columns = (row, sequence, start, position, length)
  out = np.empty((len(length), 5), np.int32)  # filled a column at a time: no int64 table
  for c, values in enumerate(columns):  # a column cast on its own first: a strided cast is slow
    out[:, c] = values if np.isscalar(values) else np.asarray(values, np.int32)
  return out


def _segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Sum of values[offsets[i]:offsets[i + 1]] for each i (empty ranges give 0)."""
  c = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
  return c[offsets[1:]] - c[offsets[:-1]]


def assemble(dataset: RaggedDataset, plan: BatchPlan, right_padded: bool = False) -> Batch:
  """Builds the numpy arrays of one batch from its plan (vectorised over segments).
  right_padded: the plan's strategy lays one sequence per row from step 0
  (`Strategy.right_padded`): the batch also holds each row's length (`Batch.seq_lengths`)."""
  b, t = plan.shape
  row, seq, start, pos, n = plan.segments.T
  dst = gather_steps(row * t + pos, n)  # flat positions in the [B * T] batch
  inputs, step_targets = dataset.gather(seq, start, n)
  if dataset.is_tokens:
    flat_inputs = np.zeros((b * t,), np.int32)
  else:
    flat_inputs = np.zeros((b * t, int(dataset.num_features or 0)), np.float32)
  flat_inputs[dst] = inputs
  mask = np.zeros(b * t, bool)
  mask[dst] = True
  resets = np.zeros(b * t, bool)
  resets[(row * t + pos)[start == 0]] = True
  weights = np.zeros(b * t, np.float32)
  if dataset.is_classification:
    targets = np.zeros((b * t,), np.int32)
  else:
    targets = np.zeros((b * t, int(dataset.target_dim or 0)), np.float32)
  if dataset.target_level == "step":
    targets[dst] = step_targets
    weights[dst] = 1.0
  else:  # the sequence's target sits on its last step, if this segment holds it
    ends = start + n == dataset.lengths[seq]
    last = (row * t + pos + n - 1)[ends]
    targets[last] = dataset.sequence_targets(seq[ends])
    weights[last] = 1.0

  def shape(a):
    return a.reshape((b, t) + a.shape[1:])

  lengths = None
  if right_padded:
    if (start != 0).any() or (pos != 0).any() or len(np.unique(row)) != len(row):
      raise DataError(
        "assemble(right_padded=True) takes one whole sequence per row from step 0; this "
        "plan packs or chunks its rows. Pass right_padded=strategy.right_padded."
      )
    lengths = np.zeros(b, np.int32)
    lengths[row] = n
  return Batch(
    inputs=shape(flat_inputs),
    targets=shape(targets),
    weights=shape(weights),
    mask=shape(mask),
    resets=shape(resets),
    seq_lengths=lengths,
  )


@dataclasses.dataclass(frozen=True)
class StreamPosition:
  """Where a strategy's stream of batches stands: the next batch is `plan(epoch)[index]`, and
  `real_tokens` real tokens were trained on before it. A small value, saved with a checkpoint as
  data, from which `Strategy.stream` resumes exactly."""

  epoch: int = 0
  index: int = 0
  real_tokens: int = 0
