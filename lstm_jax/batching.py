"""Batching strategies: each cuts a `RaggedDataset` into fixed-shape `Batch`es (one contract).

| name            | shapes emitted              | carry across batches   | padding                 |
| --------------- | --------------------------- | ---------------------- | ----------------------- |
| `pad`           | one: [B, T_max]             | no                     | to the longest sequence |
| `bucket`        | one per bucket [B_k, T_k]   | no                     | to the bucket boundary  |
| `tbptt`         | one: [B, K]                 | yes, gradient stopped  | only at the data's end  |
| `pack`          | one: [B, T]                 | no; resets inside rows | only at row ends        |
| `pad_batch_max` | one per distinct batch max  | no                     | to the batch's longest  |

A strategy first *plans* an epoch (which steps of which sequence go where, as `BatchPlan`s), so
it can list the shapes it will emit (`shapes()`) and its padding (`stats()`) before anything
runs; `batches(epoch)` then assembles numpy `Batch`es from the plan. Shuffling is seeded by
(seed, epoch), and every real step of the data appears exactly once per epoch. A batch that runs
short of sequences is filled with empty rows (mask all False), so shapes never change.

Work per step: every strategy's rows-per-batch setting (pad's and pad_batch_max's batch_size,
bucket's per-bucket batch sizes, pack's rows, tbptt's and vbptt's streams) can be left unset and
derived from `tokens_per_step`, real (non-padding) tokens per optimizer step, and the data's own
lengths (`rows_per_step`). Strategies compared on an equal real-token budget then take about
the same number of optimizer steps, on any data.

`batch_multiple` (every strategy; the runner passes the device count) rounds each batch's row
count up with empty rows, after the batches are composed: which sequences share a batch, and so
every loss and gradient, is the same on any number of devices. An empty row has zero weight and
a frozen carry, so it changes no number.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import heapq
from typing import ClassVar, Iterator, NamedTuple, Sequence

import flax.struct
import numpy as np

from lstm_jax.data import RaggedDataset, _gather_steps
from lstm_jax.errors import ConfigError, DataError


@flax.struct.dataclass
class Batch:
  """One fixed-shape batch; every strategy emits these and the train step knows nothing else.

  inputs:  <float32>[B, T, F] features, or <int32>[B, T] token ids
  targets: <int32>[B, T] classes / next tokens, or <float32>[B, T, D] regression targets
  weights: <float32>[B, T] loss weight: 0 on padding; a sequence-level target puts its weight on
           the sequence's last real step only
  mask:    <bool>[B, T] True where the step is real: the carry advances only there
  resets:  <bool>[B, T] True where a new sequence starts: the state is zeroed before that step
  """

  inputs: np.ndarray
  targets: np.ndarray
  weights: np.ndarray
  mask: np.ndarray
  resets: np.ndarray

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.mask.shape)


class Segment(NamedTuple):
  """A run of one sequence's steps placed in a batch row."""

  sequence: int  # index in the dataset
  start: int  # first step taken from the sequence (0: it begins here, so a reset)
  position: int  # where in the row it goes
  length: int  # number of steps


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """Where each real step of one batch comes from. Rows past len(rows) are empty."""

  batch_size: int
  length: int
  rows: tuple[tuple[Segment, ...], ...]
  lr_scale: float = 1.0  # the step's learning-rate factor (variable-length BPTT)

  @property
  def shape(self) -> tuple[int, int]:
    return (self.batch_size, self.length)

  @property
  def real_tokens(self) -> int:
    return sum(seg.length for row in self.rows for seg in row)

  @property
  def computed_tokens(self) -> int:
    return self.batch_size * self.length


def assemble(dataset: RaggedDataset, plan: BatchPlan) -> Batch:
  """Builds the numpy arrays of one batch from its plan (vectorised over segments)."""
  b, t = plan.shape
  segs = np.array(
    [(r,) + s for r, row in enumerate(plan.rows) for s in row], dtype=np.int64
  ).reshape(-1, 5)
  row, seq, start, pos, n = segs.T
  offsets = dataset.offsets
  src = _gather_steps(offsets[seq] + start, n)  # flat step indices in the dataset
  dst = _gather_steps(row * t + pos, n)  # flat positions in the [B * T] batch
  if dataset.is_tokens:
    inputs = np.zeros((b * t,), np.int32)
  else:
    inputs = np.zeros((b * t, dataset.num_features), np.float32)
  inputs[dst] = dataset.values[src]
  mask = np.zeros(b * t, bool)
  mask[dst] = True
  resets = np.zeros(b * t, bool)
  resets[(row * t + pos)[start == 0]] = True
  weights = np.zeros(b * t, np.float32)
  if dataset.is_classification:
    targets = np.zeros((b * t,), np.int32)
  else:
    targets = np.zeros((b * t, dataset.target_dim), np.float32)
  if dataset.target_level == "step":
    targets[dst] = dataset.targets[src]
    weights[dst] = 1.0
  else:  # the sequence's target sits on its last step, if this segment holds it
    ends = start + n == dataset.lengths[seq]
    last = (row * t + pos + n - 1)[ends]
    targets[last] = dataset.targets[seq[ends]]
    weights[last] = 1.0

  def shape(a):
    return a.reshape((b, t) + a.shape[1:])

  return Batch(
    inputs=shape(inputs),
    targets=shape(targets),
    weights=shape(weights),
    mask=shape(mask),
    resets=shape(resets),
  )


@dataclasses.dataclass(frozen=True)
class StreamPosition:
  """Where a strategy's stream of batches stands: the next batch is `plan(epoch)[index]`, and
  `real_tokens` real tokens were trained on before it. A small value, saved with a checkpoint as
  data, from which `Strategy.stream` resumes exactly."""

  epoch: int = 0
  index: int = 0
  real_tokens: int = 0


class Strategy(abc.ABC):
  """Turns a ragged dataset into a stream of fixed-shape batches. Subclasses implement `plan`."""

  name: ClassVar[str]
  carries_state: ClassVar[bool] = False  # True: hand the LSTM carry from batch to batch
  row_setting: ClassVar[str] = "batch_size"  # the setting for rows per batch (errors name it)

  def __init__(self, dataset: RaggedDataset, seed: int = 0, batch_multiple: int = 1):
    if not isinstance(dataset, RaggedDataset):
      raise DataError(f"{self.name} needs a RaggedDataset, got {type(dataset).__name__}.")
    self.dataset = dataset
    self.seed = int(seed)
    self.batch_multiple = _positive_int(batch_multiple, "batch_multiple")
    self._plans: dict[int, list[BatchPlan]] = {}

  @abc.abstractmethod
  def _plan(self, epoch: int, rng: np.random.Generator) -> list[BatchPlan]:
    """The batches of one epoch, in order."""

  def plan(self, epoch: int = 0) -> list[BatchPlan]:
    if epoch not in self._plans:
      plans = self._plan(epoch, np.random.default_rng([self.seed, 0, epoch]))
      m = self.batch_multiple
      if m > 1:  # composed first, then widened: the same batches on any device count
        plans = [dataclasses.replace(p, batch_size=-(-p.batch_size // m) * m) for p in plans]
      self._plans = {epoch: plans}
    return self._plans[epoch]

  def stream(
    self, start: StreamPosition = StreamPosition()
  ) -> Iterator[tuple[BatchPlan, StreamPosition]]:
    """The plans from `start` on, epoch after epoch without end, each with the position after
    it (where training resumes once that plan's step is done: the next epoch's start after an
    epoch's last batch)."""
    epoch, index, real = start.epoch, start.index, start.real_tokens
    while True:
      plans = self.plan(epoch)
      for i in range(index, len(plans)):
        real += plans[i].real_tokens
        last = i + 1 == len(plans)
        yield plans[i], StreamPosition(epoch + last, 0 if last else i + 1, real)
      epoch, index = epoch + 1, 0

  def batches(self, epoch: int = 0) -> Iterator[Batch]:
    for p in self.plan(epoch):
      yield assemble(self.dataset, p)

  def shapes(self, num_epochs: int = 1) -> list[tuple[int, int]]:
    """The distinct (B, T) this strategy emits over `num_epochs` epochs: one compile each."""
    return sorted({p.shape for e in range(num_epochs) for p in self.plan(e)})

  def batch_settings(self) -> dict:
    """The settings this strategy resolved (derived from tokens_per_step where unset), as
    JSON values: what a report prints beside the row."""
    return {}

  def stats(self, epoch: int = 0) -> dict:
    plans = self.plan(epoch)
    real = sum(p.real_tokens for p in plans)
    computed = sum(p.computed_tokens for p in plans)
    return dict(
      strategy=self.name,
      num_batches=len(plans),
      real_tokens=real,
      computed_tokens=computed,
      padding_fraction=1.0 - real / computed,
      shapes=self.shapes(),
    )

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.dataset.name or 'dataset'}, seed={self.seed})"


def _whole(seq: int, length: int) -> tuple[Segment, ...]:
  return (Segment(int(seq), 0, 0, int(length)),)


def _positive_int(value: int, what: str = "batch_size") -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"{what} must be an integer >= 1, got {value!r}.")
  return int(value)


def rows_per_step(
  given: int | None,
  tokens_per_step: int | None,
  tokens_per_row: float,
  most: int,
  what: str,
  strategy: str,
) -> int:
  """`given` if set; else the number of rows, each holding `tokens_per_row` real tokens on
  average, that makes `tokens_per_step` real tokens: at least 1, at most `most` (the rows the
  data can fill). This is how every strategy turns one work-per-step target into its own batch
  setting, from the data's own lengths, so equal real-token budgets mean equal optimizer steps."""
  if given is not None:
    return _positive_int(given, what)
  if tokens_per_step is None:
    raise ConfigError(
      f"{strategy} needs {what}, or tokens_per_step (real tokens per optimizer "
      f"step) to derive it from the data's lengths."
    )
  tokens_per_step = _positive_int(tokens_per_step, "tokens_per_step")
  return int(min(max(most, 1), max(1, round(tokens_per_step / max(tokens_per_row, 1e-9)))))


def _check_not_larger_than_data(
  batch_size: int, available: int, what: str, unit: str, fix: str
) -> None:
  """A batch wider than the data would be mostly empty rows on every step: refuse it."""
  if batch_size > available:
    raise DataError(
      f"{what} {batch_size} is larger than the data, which has only {available} "
      f"{unit}; every step would compute {batch_size - available} or more empty "
      f"rows. {fix}"
    )


def _sequences_per_batch(
  dataset: RaggedDataset, batch_size: int | None, tokens_per_step: int | None, strategy: str
) -> int:
  """Whole sequences per batch (pad, pad_batch_max): set, or derived from tokens_per_step and
  the mean length; never more than the data holds."""
  batch_size = rows_per_step(
    batch_size, tokens_per_step, dataset.lengths.mean(), len(dataset), "batch_size", strategy
  )
  _check_not_larger_than_data(
    batch_size,
    len(dataset),
    "batch_size",
    "sequences",
    f"Lower batch_size to at most {len(dataset)}.",
  )
  return batch_size


def _check_fits(dataset: RaggedDataset, limit: int, what: str, fix: str) -> None:
  too_long = np.flatnonzero(dataset.lengths > limit)
  if len(too_long):
    i = int(too_long[np.argmax(dataset.lengths[too_long])])
    raise DataError(
      f"{len(too_long)} sequence(s) are longer than the {what} ({limit}); the longest "
      f"is sequence {i} with {int(dataset.lengths[i])} steps. {fix}"
    )


def _fixed_batches(
  order: np.ndarray, lengths: np.ndarray, batch_size: int, length: int | None
) -> list[BatchPlan]:
  """Whole sequences in `order`, batch_size per batch, padded to `length` (None: batch's max)."""
  plans = []
  for s in range(0, len(order), batch_size):
    idx = order[s : s + batch_size]
    t = int(lengths[idx].max()) if length is None else length
    plans.append(BatchPlan(batch_size, t, tuple(_whole(i, lengths[i]) for i in idx)))
  return plans


def _packed_batches(
  bins: Sequence[Sequence[int]],
  lengths: np.ndarray,
  batch_size: int,
  length: int,
  rng: np.random.Generator,
) -> list[BatchPlan]:
  """Rows of sequences laid back to back, `batch_size` rows per batch: the rows in a shuffled
  order, each row's members in a shuffled order (Pack, and Bucket with packed rows)."""
  rows = []
  for b in rng.permutation(len(bins)):
    pos, row = 0, []
    for i in rng.permutation(bins[b]):
      row.append(Segment(int(i), 0, pos, int(lengths[i])))
      pos += int(lengths[i])
    rows.append(tuple(row))
  return [
    BatchPlan(batch_size, length, tuple(rows[s : s + batch_size]))
    for s in range(0, len(rows), batch_size)
  ]


class Pad(Strategy):
  """Every batch padded to one length: the data's longest sequence, or `max_length`."""

  name = "pad"

  def __init__(
    self,
    dataset: RaggedDataset,
    batch_size: int | None = None,
    max_length: int | None = None,
    seed: int = 0,
    batch_multiple: int = 1,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed, batch_multiple)
    self.batch_size = _sequences_per_batch(dataset, batch_size, tokens_per_step, self.name)
    self.length = dataset.max_length if max_length is None else int(max_length)
    _check_fits(
      dataset,
      self.length,
      "padded length max_length",
      "Raise max_length, or use 'bucket' or 'tbptt' for long sequences.",
    )

  def batch_settings(self) -> dict:
    return dict(batch_size=self.batch_size, length=self.length)

  def _plan(self, epoch, rng):
    return _fixed_batches(
      rng.permutation(len(self.dataset)), self.dataset.lengths, self.batch_size, self.length
    )


class PadBatchMax(Strategy):
  """Each batch padded to its own longest sequence: the common mistake (one compile per maximum).

  Kept so the runner can show what it costs; never a default.
  """

  name = "pad_batch_max"

  def __init__(
    self,
    dataset: RaggedDataset,
    batch_size: int | None = None,
    seed: int = 0,
    batch_multiple: int = 1,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed, batch_multiple)
    self.batch_size = _sequences_per_batch(dataset, batch_size, tokens_per_step, self.name)

  def batch_settings(self) -> dict:
    return dict(batch_size=self.batch_size)

  def _plan(self, epoch, rng):
    return _fixed_batches(
      rng.permutation(len(self.dataset)), self.dataset.lengths, self.batch_size, None
    )


def optimal_boundaries(lengths: Sequence[int] | np.ndarray, num_buckets: int) -> list[int]:
  """Bucket boundaries that minimise the total padded steps for at most `num_buckets` buckets.

  Exact dynamic program over the distinct lengths (an optimal boundary always equals some
  sequence's length): cost(bucket covering distinct lengths u[i..j]) = u[j] * count - sum. It
  ignores the rows that fill a bucket's last batch. O(num_buckets * U^2) for U distinct lengths.
  Returns the increasing boundaries; the last is the longest length.
  """
  num_buckets = _positive_int(num_buckets, "num_buckets")
  lengths = np.asarray(lengths, dtype=np.int64)
  if lengths.size == 0:
    raise DataError("cannot choose bucket boundaries for an empty dataset.")
  u, counts = np.unique(lengths, return_counts=True)
  k_max = min(num_buckets, len(u))
  cnt = np.concatenate([[0], np.cumsum(counts)]).astype(np.float64)
  tot = np.concatenate([[0], np.cumsum(counts * u)]).astype(np.float64)
  n = len(u)
  # best[j] = min padded steps covering u[0..j] with the current number of buckets.
  best = u * cnt[1:] - tot[1:]  # one bucket
  choice = [np.zeros(n, np.int64)]  # start index of the last bucket ending at j
  for _ in range(1, k_max):
    new, arg = best.copy(), np.full(n, -1, np.int64)  # -1: no better than one bucket fewer
    for j in range(1, n):
      i = np.arange(1, j + 1)  # last bucket covers u[i..j]; the rest is best[i - 1]
      cost = best[i - 1] + u[j] * (cnt[j + 1] - cnt[i]) - (tot[j + 1] - tot[i])
      m = int(np.argmin(cost))
      if cost[m] < new[j]:
        new[j], arg[j] = cost[m], i[m]
    best = new
    choice.append(arg)
  bounds, j, level = [], n - 1, k_max - 1
  while j >= 0:
    start = int(choice[level][j])
    if start >= 0:  # this level's last bucket covers u[start..j]
      bounds.append(int(u[j]))
      j = start - 1
    level -= 1
  return sorted(bounds)


def padded_steps(lengths: np.ndarray, boundaries: Sequence[int]) -> int:
  """Total padding steps when each length is padded to the smallest boundary >= it."""
  lengths = np.asarray(lengths)
  b = np.asarray(boundaries)
  return int((b[np.searchsorted(b, lengths)] - lengths).sum())


class Bucket(Strategy):
  """Sequences grouped by length, each bucket padded to its boundary: one compile per bucket.

  Boundaries are given (increasing) or chosen by `optimal_boundaries` for `num_buckets`. The
  most rows a batch of bucket k holds (B_k) is fixed (`batch_size`), follows a budget of computed
  tokens (`tokens_per_batch`: B_k = budget // T_k), or, when neither is set, a budget of real
  tokens (`tokens_per_step`: bucket k gets round(its real tokens / tokens_per_step) batches, at
  least one), so every step trains on about the same number of real tokens as the other
  strategies' steps do, and an epoch takes about as many steps. (A bucket with less than a step's
  real tokens still takes a whole step: with few tokens per epoch, use fewer buckets.) Buckets
  that hold no sequence emit nothing.

  As each bucket's row count is known, its batch size is then balanced: the fewest batches of at
  most B_k rows, split evenly (70 rows at B=64: two batches of 35, not 64 + 6 and 58 empty rows),
  so a small bucket's batches are not mostly empty rows.

  pack_rows: a row of bucket k may hold several sequences back to back (a reset at each start),
  filled by `best_fit_rows`: the padding left is only the rows' unfilled ends, instead of every
  sequence's distance to its boundary, for the same number of shapes (and compiles). Rows are
  built once (seeded); each epoch shuffles the rows, the order within each row, and the batches.
  """

  name = "bucket"
  row_setting = "tokens_per_batch"

  def __init__(
    self,
    dataset: RaggedDataset,
    batch_size: int | None = None,
    boundaries: Sequence[int] | None = None,
    num_buckets: int | None = None,
    tokens_per_batch: int | None = None,
    batch_multiple: int = 1,
    seed: int = 0,
    pack_rows: bool = False,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed, batch_multiple)
    if batch_size is not None and tokens_per_batch is not None:
      raise ConfigError(
        "bucket takes at most one of batch_size or tokens_per_batch (neither: "
        "tokens_per_step, real tokens per step, sets the batch sizes)."
      )
    if (boundaries is None) == (num_buckets is None):
      raise ConfigError("bucket needs exactly one of boundaries or num_buckets.")
    if boundaries is None:
      boundaries = optimal_boundaries(dataset.lengths, num_buckets)
    self.boundaries = [int(b) for b in boundaries]
    if (
      not self.boundaries
      or self.boundaries[0] < 1
      or any(b <= a for a, b in zip(self.boundaries, self.boundaries[1:]))
    ):
      raise ConfigError(
        f"bucket boundaries must be positive and strictly increasing, got {self.boundaries}."
      )
    _check_fits(
      dataset,
      self.boundaries[-1],
      "largest bucket boundary",
      "Add a boundary >= that length, or split long sequences (e.g. the 'tbptt' strategy).",
    )
    self.bucket_of = np.searchsorted(self.boundaries, dataset.lengths)  # bucket index per sequence
    self.pack_rows = bool(pack_rows)
    self.rows = None
    row_bucket, row_real = self.bucket_of, dataset.lengths  # a row per sequence, or packed:
    if self.pack_rows:
      self.rows = best_fit_rows(
        dataset.lengths, self.boundaries, np.random.default_rng([self.seed, 1])
      )
      row_bucket = [k for k, _ in self.rows]
      row_real = [int(dataset.lengths[members].sum()) for _, members in self.rows]
    per_bucket = np.bincount(row_bucket, minlength=len(self.boundaries))
    real = np.bincount(row_bucket, weights=row_real, minlength=len(self.boundaries))
    if tokens_per_batch is not None:
      tokens_per_batch = _positive_int(tokens_per_batch, "tokens_per_batch")
      most = [max(1, tokens_per_batch // b) for b in self.boundaries]
    elif batch_size is not None:
      most = [_positive_int(batch_size)] * len(self.boundaries)
      _check_not_larger_than_data(
        most[0],
        len(dataset),
        "batch_size",
        "sequences",
        f"Lower batch_size to at most {len(dataset)}, or use tokens_per_batch.",
      )
    else:  # as many batches as the bucket's real tokens make steps (rounded, at least one)
      if tokens_per_step is None:
        raise ConfigError(
          "bucket needs batch_size, tokens_per_batch, or tokens_per_step (real "
          "tokens per optimizer step) to derive its batch sizes from."
        )
      tokens_per_step = _positive_int(tokens_per_step, "tokens_per_step")
      most = [
        -(-int(n) // max(1, round(r / tokens_per_step))) if n else 1
        for n, r in zip(per_bucket, real)
      ]
    self.batch_sizes = [_balanced(int(n), b) for n, b in zip(per_bucket, most)]

  def batch_settings(self) -> dict:
    return dict(boundaries=self.boundaries, batch_sizes=self.batch_sizes, pack_rows=self.pack_rows)

  def _plan(self, epoch, rng):
    plans = []
    lengths = self.dataset.lengths
    for k, (b, t) in enumerate(zip(self.batch_sizes, self.boundaries)):
      if not self.pack_rows:
        members = rng.permutation(np.flatnonzero(self.bucket_of == k))
        plans += _fixed_batches(members, lengths, b, t)
        continue
      plans += _packed_batches([r for bucket, r in self.rows if bucket == k], lengths, b, t, rng)
    return [plans[i] for i in rng.permutation(len(plans))]


def _balanced(rows: int, most: int) -> int:
  """The batch size that splits `rows` into as many batches as `most` rows each would need, but
  evenly, so no batch is left mostly empty."""
  if rows == 0:
    return most
  batches = -(-rows // most)
  return -(-rows // batches)


def best_fit_rows(
  lengths: np.ndarray, boundaries: Sequence[int], rng: np.random.Generator
) -> list[tuple[int, list[int]]]:
  """Rows of bucket lengths, each holding sequences back to back: (bucket index, members).

  Best-fit decreasing over bins of several capacities: sequences, longest first (ties broken by
  `rng`), go into the open row with the least free space that still fits them; when none fits, a
  new row opens at the smallest boundary >= the sequence's length. Long sequences so open the
  long rows and short ones fill their ends; every row is a bucket shape, so the compiles do not
  change.
  """
  lengths = np.asarray(lengths, np.int64)
  order = np.lexsort((rng.permutation(len(lengths)), -lengths))
  top = int(boundaries[-1])
  count = np.zeros(top + 1, np.int64)  # open rows per free space
  by_free: dict[int, list[int]] = {}
  rows: list[tuple[int, list[int]]] = []
  for idx in order:
    need = int(lengths[idx])
    fits = np.flatnonzero(count[need:])
    if len(fits):
      free = need + int(fits[0])
      r = by_free[free].pop()
      count[free] -= 1
    else:
      k = int(np.searchsorted(boundaries, need))
      rows.append((k, []))
      r, free = len(rows) - 1, int(boundaries[k])
    rows[r][1].append(int(idx))
    left = free - need
    if left > 0:
      by_free.setdefault(left, []).append(r)
      count[left] += 1
  return rows


def first_fit_decreasing(
  lengths: np.ndarray, capacity: int, rng: np.random.Generator
) -> list[list[int]]:
  """Bins (lists of indices) packing `lengths` into `capacity` by first-fit decreasing.

  Ties in length are broken by `rng`. A segment tree over the bins' free space finds the first bin
  that fits in O(log n), so 50,000 sequences pack in well under a second.
  """
  n = len(lengths)
  order = np.lexsort((rng.permutation(n), -np.asarray(lengths)))
  size = 1
  while size < n:
    size *= 2
  free = [0] * (2 * size)  # max free space in each subtree; leaves are bins
  for i in range(size, 2 * size):
    free[i] = capacity
  for i in range(size - 1, 0, -1):
    free[i] = capacity
  bins: list[list[int]] = []
  for idx in order:
    need = int(lengths[idx])
    node = 1
    while node < size:  # leftmost leaf with room
      node = 2 * node if free[2 * node] >= need else 2 * node + 1
    b = node - size
    if b == len(bins):
      bins.append([])
    bins[b].append(int(idx))
    free[node] -= need
    node //= 2
    while node:
      free[node] = max(free[2 * node], free[2 * node + 1])
      node //= 2
  return bins


class Pack(Strategy):
  """Whole sequences packed into rows of `row_length` (first-fit decreasing), reset at each start.

  No carry crosses rows. `row_length` defaults to the longest sequence (the runner's config sets
  a fixed one, so a long document is refused rather than widening every row). `batch_size`
  (rows per batch) is set, or derived from `tokens_per_step` and the rows' mean fill. The packing
  is fixed at construction (seeded); each epoch shuffles the rows and the order within each row.
  """

  name = "pack"

  def __init__(
    self,
    dataset: RaggedDataset,
    batch_size: int | None = None,
    row_length: int | None = None,
    seed: int = 0,
    batch_multiple: int = 1,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed, batch_multiple)
    self.length = dataset.max_length if row_length is None else int(row_length)
    _check_fits(
      dataset,
      self.length,
      "row length",
      "Raise row_length, or use 'tbptt', which splits long sequences.",
    )
    self.bins = first_fit_decreasing(
      dataset.lengths, self.length, np.random.default_rng([self.seed, 1])
    )  # packing: its own stream
    self.batch_size = rows_per_step(
      batch_size,
      tokens_per_step,
      dataset.num_steps / len(self.bins),
      len(self.bins),
      "batch_size",
      self.name,
    )
    _check_not_larger_than_data(
      self.batch_size,
      len(self.bins),
      "batch_size",
      f"packed rows of {self.length} steps",
      f"Lower batch_size to at most {len(self.bins)}, or shorten row_length.",
    )

  def batch_settings(self) -> dict:
    return dict(batch_size=self.batch_size, row_length=self.length)

  def _plan(self, epoch, rng):
    return _packed_batches(self.bins, self.dataset.lengths, self.batch_size, self.length, rng)


class TBPTT(Strategy):
  """Stateful truncated BPTT: `num_streams` rows, chunks of `chunk_length` steps.

  Each epoch shuffles the sequences and lays them end to end in the stream with the least work so
  far (so streams end within one sequence of each other); a reset marks each sequence's start.
  The carry goes from chunk to chunk (the train step stops its gradient); the last partial chunk
  is masked. One shape, [num_streams, chunk_length], whatever the lengths.
  """

  name = "tbptt"
  carries_state = True
  row_setting = "num_streams"

  def __init__(
    self,
    dataset: RaggedDataset,
    num_streams: int | None = None,
    chunk_length: int | None = None,
    seed: int = 0,
    batch_multiple: int = 1,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed, batch_multiple)
    if not isinstance(chunk_length, (int, np.integer)) or chunk_length < 1:
      raise ConfigError(
        f"chunk_length must be an integer >= 1, got {chunk_length!r}; it is the "
        f"number of steps backpropagated through per train step."
      )
    self.chunk_length = int(chunk_length)
    self.num_streams = rows_per_step(
      num_streams, tokens_per_step, self.chunk_length, len(dataset), "num_streams", self.name
    )
    _check_not_larger_than_data(
      self.num_streams,
      len(dataset),
      "num_streams",
      "sequences",
      f"Lower num_streams to at most {len(dataset)}.",
    )

  def batch_settings(self) -> dict:
    return dict(num_streams=self.num_streams, chunk_length=self.chunk_length)

  def _plan(self, epoch, rng):
    placed, total = _lay_streams(self.dataset.lengths, self.num_streams, rng)
    k = self.chunk_length
    starts = list(range(0, total, k))
    return _cut_chunks(
      self.dataset.lengths, self.num_streams, placed, starts, [k] * len(starts), [k] * len(starts)
    )


def _lay_streams(lengths: np.ndarray, num_streams: int, rng: np.random.Generator):
  """Shuffled sequences laid end to end, each in the stream with the least work so far.
  Returns ([(stream, sequence, position in stream)], the longest stream's length)."""
  heap = [(0, s) for s in range(num_streams)]
  placed = []
  for i in rng.permutation(len(lengths)):
    load, s = heapq.heappop(heap)
    placed.append((s, int(i), load))
    heapq.heappush(heap, (load + int(lengths[i]), s))
  return placed, max(load for load, _ in heap)


def _cut_chunks(
  lengths,
  num_streams: int,
  placed,
  starts: list[int],
  spans: list[int],
  shapes: list[int],
  lr_scales: list[float] | None = None,
) -> list[BatchPlan]:
  """Batches of the streams' steps [starts[c], starts[c] + spans[c]), each padded to shapes[c]."""
  rows = [[[] for _ in range(num_streams)] for _ in starts]
  for s, i, p in placed:
    end = p + int(lengths[i])
    for c in range(bisect.bisect_right(starts, p) - 1, bisect.bisect_right(starts, end - 1)):
      lo, hi = max(p, starts[c]), min(end, starts[c] + spans[c])
      if hi > lo:
        rows[c][s].append(Segment(i, lo - p, lo - starts[c], hi - lo))
  scales = lr_scales or [1.0] * len(starts)
  return [
    BatchPlan(num_streams, t, tuple(tuple(r) for r in chunk), lr_scale=a)
    for chunk, t, a in zip(rows, shapes, scales)
  ]


class VariableTBPTT(Strategy):
  """Truncated BPTT with a random chunk length per step, as AWD-LSTM trains (Merity et al. 2018).

  Streams as in `TBPTT`. Each step's length is drawn: `base_length` with probability 0.95, else
  base_length / 2; then from a normal around it with sigma 5; at least 5, at most the largest
  chunk shape. The chunk is padded (masked) up to the smallest of `chunk_shapes` that holds it,
  so jit compiles at most len(chunk_shapes) (default 4) times, and the step's learning rate is
  scaled by length / base_length (`BatchPlan.lr_scale`, applied by the train step to the
  optimizer's update), so a short chunk moves the weights less.

  Default shapes for base b: b/2 + 10, b, b + 10, b + 20 (draws above b + 20 are clipped to it;
  AWD-LSTM clips at b + 40).
  """

  name = "vbptt"
  carries_state = True
  row_setting = "num_streams"

  def __init__(
    self,
    dataset: RaggedDataset,
    num_streams: int | None = None,
    base_length: int | None = None,
    chunk_shapes: Sequence[int] | None = None,
    p_base: float = 0.95,
    sigma: float = 5.0,
    min_length: int = 5,
    seed: int = 0,
    batch_multiple: int = 1,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed, batch_multiple)
    self.base_length = _positive_int(base_length, "base_length")
    if self.base_length < 2 * min_length:
      raise ConfigError(
        f"base_length must be >= {2 * min_length} (twice min_length), got {base_length}."
      )
    b = self.base_length
    shapes = chunk_shapes if chunk_shapes is not None else (b // 2 + 10, b, b + 10, b + 20)
    self.chunk_shapes = sorted({_positive_int(int(t), "chunk shape") for t in shapes})
    if self.chunk_shapes[-1] < b:
      raise ConfigError(
        f"the largest chunk shape ({self.chunk_shapes[-1]}) must be >= base_length ({b})."
      )
    self.p_base, self.sigma, self.min_length = float(p_base), float(sigma), int(min_length)
    # a step's mean length: base_length, or half of it with probability 1 - p_base
    mean_chunk = self.base_length * (self.p_base + (1 - self.p_base) / 2)
    self.num_streams = rows_per_step(
      num_streams, tokens_per_step, mean_chunk, len(dataset), "num_streams", self.name
    )
    _check_not_larger_than_data(
      self.num_streams,
      len(dataset),
      "num_streams",
      "sequences",
      f"Lower num_streams to at most {len(dataset)}.",
    )

  def batch_settings(self) -> dict:
    return dict(
      num_streams=self.num_streams, base_length=self.base_length, chunk_shapes=self.chunk_shapes
    )

  def draw_length(self, rng: np.random.Generator) -> int:
    """One chunk length, AWD-LSTM's rule, clipped to [min_length, largest shape]."""
    mean = self.base_length if rng.random() < self.p_base else self.base_length / 2
    return int(np.clip(round(rng.normal(mean, self.sigma)), self.min_length, self.chunk_shapes[-1]))

  def _plan(self, epoch, rng):
    placed, total = _lay_streams(self.dataset.lengths, self.num_streams, rng)
    starts, spans = [], []
    pos = 0
    while pos < total:
      n = self.draw_length(rng)
      starts.append(pos)
      spans.append(n)
      pos += n
    shapes = [self.chunk_shapes[bisect.bisect_left(self.chunk_shapes, n)] for n in spans]
    return _cut_chunks(
      self.dataset.lengths,
      self.num_streams,
      placed,
      starts,
      spans,
      shapes,
      [n / self.base_length for n in spans],
    )


class Relayout(Strategy):
  """Another strategy's batches, each holding the same sequences, laid out differently: one
  sequence per row padded to the longest (`layout="pad"`), or packed back to back into rows of
  `row_length` (`layout="pack"`). An ablation tool: which sequences share a step (composition)
  stays the source's, only where they sit in the batch (layout) changes, and since a batch's
  loss is sum(weights * loss) / sum(weights) over the same real steps, its gradient is the same
  to float32 rounding (tests/test_train.py checks whole training trajectories). Any difference
  between two strategies' training runs that survives relayout comes from their composition.

  One shape per run: [the most rows any batch needs, the layout's length]. The source must keep
  sequences whole (not tbptt or vbptt).
  """

  name = "relayout"

  def __init__(self, source: Strategy, layout: str = "pad", row_length: int | None = None):
    super().__init__(source.dataset, source.seed, source.batch_multiple)
    if source.carries_state:
      raise ConfigError(
        f"relayout needs whole sequences in each batch, and {source.name} cuts "
        f"them into chunks; use pad, bucket, pack or pad_batch_max as the source."
      )
    if layout not in ("pad", "pack"):
      raise ConfigError(f"relayout's layout must be 'pad' or 'pack', got {layout!r}.")
    self.source, self.layout = source, layout
    self.name = f"{source.name}_as_{layout}"
    longest = int(source.dataset.lengths.max())
    self.length = longest if row_length is None or layout == "pad" else int(row_length)
    _check_fits(source.dataset, self.length, "row length", "Raise row_length.")

  def batch_settings(self) -> dict:
    return dict(source=self.source.name, layout=self.layout, length=self.length)

  def _plan(self, epoch, rng):
    lengths = self.dataset.lengths
    members = [[seg.sequence for row in p.rows for seg in row] for p in self.source.plan(epoch)]
    if self.layout == "pad":
      rows = [[(i,) for i in m] for m in members]
    else:  # first-fit decreasing within the batch; ties broken by the epoch's rng
      rows = [
        [tuple(m[j] for j in b) for b in first_fit_decreasing(lengths[m], self.length, rng)]
        for m in members
      ]
    width = max(len(r) for r in rows)
    plans = []
    for batch_rows, plan in zip(rows, self.source.plan(epoch)):
      laid = []
      for row in batch_rows:
        pos, segs = 0, []
        for i in row:
          segs.append(Segment(int(i), 0, pos, int(lengths[i])))
          pos += int(lengths[i])
        laid.append(tuple(segs))
      plans.append(BatchPlan(width, self.length, tuple(laid), lr_scale=plan.lr_scale))
    return plans


STRATEGIES: dict[str, type[Strategy]] = {
  cls.name: cls for cls in (Pad, Bucket, TBPTT, VariableTBPTT, Pack, PadBatchMax)
}


def make_strategy(name: str, dataset: RaggedDataset, **kwargs) -> Strategy:
  """The strategy called `name`, built on `dataset` with its keyword arguments."""
  if name not in STRATEGIES:
    raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}.")
  return STRATEGIES[name](dataset, **kwargs)
