"""Batching strategies: each cuts a `RaggedDataset` into fixed-shape `Batch`es (one contract).

| name            | shapes emitted              | carry across batches   | padding                 |
| --------------- | --------------------------- | ---------------------- | ----------------------- |
| `pad`           | one: [B, T_max]             | no                     | to the longest sequence |
| `bucket`        | one per bucket [B_k, T_k]   | no                     | to the bucket boundary  |
| `tbptt`         | one: [B, K]                 | yes, gradient stopped  | only at the data's end  |
| `pack`          | one: [B, T]                 | no; resets inside rows | only at row ends        |
| `pad_batch_max` | one per distinct batch max  | no                     | to the batch's longest  |

A strategy first *plans* an epoch (which steps of which sequence go where), so it can list the
shapes it will emit (`shapes()`) and its padding (`stats()`) before anything runs; `batches(epoch)`
then assembles numpy `Batch`es from the plan. A plan needs only the lengths, and is held as
arrays (`EpochPlan`: a table of segments, or for truncated BPTT the streams' layout, from which
each batch's segments are cut when it is asked for), a few tens of bytes per sequence, so an
epoch of millions of sequences plans in seconds. Shuffling is seeded by
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
from typing import ClassVar, Iterator, Sequence

import numpy as np

from lstm_jax.data import RaggedDataset, gather_steps
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.planning import (  # noqa: F401 (optimal_boundaries, padded_steps: re-exported)
  Rows,
  _balanced,
  _lay_streams,
  _positions_in_rows,
  _positive_int,
  best_fit_rows,
  first_fit_decreasing,
  optimal_boundaries,
  padded_steps,
  shuffle_rows,
)
from lstm_jax.plans import (  # noqa: F401 (the contract and plans: named here too)
  SEQUENCE,
  Batch,
  BatchPlan,
  EpochPlan,
  Segment,
  StreamPlan,
  StreamPosition,
  _segment_sums,
  _table,
  assemble,
)


class Strategy(abc.ABC):
  """Turns a ragged dataset into a stream of fixed-shape batches. Subclasses implement `_plan`
  (one epoch's batches, from a generator seeded by the strategy's seed and the epoch); `plan`
  caches it and widens it to `batch_multiple`.

  Args:
    dataset: the sequences (a `RaggedDataset` or a store's `StoredDataset`).
    seed: seeds each epoch's plan (an epoch's batches are a function of seed and epoch).
    batch_multiple: rows per batch rounded up to a multiple of it (the data-parallel device
      count), so every device gets the same rows.
  """

  name: ClassVar[str]
  carries_state: ClassVar[bool] = False  # True: hand the LSTM carry from batch to batch
  row_setting: ClassVar[str] = "batch_size"  # the setting for rows per batch (errors name it)

  @property
  def right_padded(self) -> bool:
    """True when every row holds at most one sequence, whole, from step 0 (padding after it):
    the layout the fused cuDNN LSTM takes as `seq_lengths` (`assemble(right_padded=True)`,
    `backend.step_backend`). pad, pad_batch_max and bucket without pack_rows; a packed or
    chunked layout (resets inside rows) is not."""
    return False

  def __init__(self, dataset: RaggedDataset, *, seed: int = 0, batch_multiple: int = 1):
    if not isinstance(dataset, RaggedDataset):
      raise DataError(f"{self.name} needs a RaggedDataset, got {type(dataset).__name__}.")
    self.dataset = dataset
    self.seed = int(seed)
    self.batch_multiple = _positive_int(batch_multiple, "batch_multiple")
    self._plans: dict[int, EpochPlan] = {}

  @abc.abstractmethod
  def _plan(self, epoch: int, rng: np.random.Generator) -> EpochPlan:
    """The batches of one epoch, in order."""

  def plan(self, epoch: int = 0) -> EpochPlan:
    if epoch not in self._plans:
      plans = self._plan(epoch, np.random.default_rng([self.seed, 0, epoch]))
      if self.batch_multiple > 1:  # composed first, then widened: the same batches anywhere
        plans = plans.widened(self.batch_multiple)
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
        real += int(plans.real_tokens[i])
        last = i + 1 == len(plans)
        yield plans[i], StreamPosition(epoch + last, 0 if last else i + 1, real)
      epoch, index = epoch + 1, 0

  def batches(self, epoch: int = 0) -> Iterator[Batch]:
    for p in self.plan(epoch):
      yield assemble(self.dataset, p, self.right_padded)

  def shapes(self, num_epochs: int = 1) -> list[tuple[int, int]]:
    """The distinct (B, T) this strategy emits over `num_epochs` epochs: one compile each."""
    return sorted({s for e in range(num_epochs) for s in self.plan(e).shapes()})

  def batch_settings(self) -> dict:
    """The settings this strategy resolved (derived from tokens_per_step where unset), as
    JSON values: what a report prints beside the row."""
    return {}

  def stats(self, epoch: int = 0) -> dict:
    plans = self.plan(epoch)
    real = int(plans.real_tokens.sum())
    computed = int(plans.computed_tokens.sum())
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


def rows_within_data(
  given: int | None,
  tokens_per_step: int | None,
  tokens_per_row: float,
  available: int,
  what: str,
  strategy: str,
  unit: str = "sequences",
  fix: str = "",
) -> int:
  """Every strategy's prologue: the rows per batch (`rows_per_step`: `given`, or derived from
  `tokens_per_step`), refused if wider than the `available` rows the data can fill (`unit`
  names them; `fix` is added to the default advice)."""
  rows = rows_per_step(given, tokens_per_step, tokens_per_row, available, what, strategy)
  _check_not_larger_than_data(
    rows, available, what, unit, f"Lower {what} to at most {available}{fix}."
  )
  return rows


def _sequences_per_batch(
  dataset: RaggedDataset, batch_size: int | None, tokens_per_step: int | None, strategy: str
) -> int:
  """Whole sequences per batch (pad, pad_batch_max): set, or derived from tokens_per_step and
  the mean length; never more than the data holds."""
  return rows_within_data(
    batch_size, tokens_per_step, dataset.lengths.mean(), len(dataset), "batch_size", strategy
  )


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
) -> EpochPlan:
  """Whole sequences in `order`, batch_size per batch, padded to `length` (None: batch's max)."""
  order = np.asarray(order, np.int64)
  n = len(order)
  offsets = np.append(np.arange(0, n, batch_size, dtype=np.int64), n)
  seq_len = lengths[order]
  zeros = np.zeros(n, np.int64)
  segments = _table(np.arange(n, dtype=np.int64) % batch_size, order, zeros, zeros, seq_len)
  num = len(offsets) - 1
  t = np.maximum.reduceat(seq_len, offsets[:-1]) if length is None else np.full(num, length)
  return EpochPlan(np.full(num, batch_size), t[:num], segments, offsets)


def _packed_batches(
  rows: Rows, lengths: np.ndarray, batch_size: int, length: int, rng: np.random.Generator
) -> EpochPlan:
  """Rows of sequences laid back to back, `batch_size` rows per batch: the rows in a shuffled
  order, each row's members in a shuffled order (Pack, and Bucket with packed rows)."""
  order = rng.permutation(len(rows))
  counts = np.diff(rows.offsets)[order]
  row_start = np.concatenate([[0], np.cumsum(counts)])
  members = rows.members[gather_steps(rows.offsets[:-1][order], counts)]
  shuffle_rows(rng, members, row_start[:-1], counts)  # each row, in the epoch's row order
  seq_len = lengths[members]
  pos = _positions_in_rows(seq_len, row_start[:-1], counts)
  slot = np.repeat((np.arange(len(rows)) % batch_size).astype(np.int32), counts)  # its row
  segments = _table(slot, members, 0, pos, seq_len)
  firsts = np.arange(0, len(rows), batch_size)
  offsets = np.append(row_start[firsts], len(members))
  return EpochPlan(
    np.full(len(firsts), batch_size), np.full(len(firsts), length), segments, offsets
  )


class Pad(Strategy):
  """Every batch padded to one length: the data's longest sequence, or `max_length`.

  Args:
    dataset: the sequences (a `RaggedDataset` or a store's `StoredDataset`).
    batch_size: sequences per batch; None: derived from `tokens_per_step`.
    max_length: the padded length; None: the longest sequence (a longer one is an error).
    seed: seeds the shuffles (an epoch's order is a function of seed and epoch).
    batch_multiple: rows per batch rounded to a multiple of it (the data-parallel device count).
    tokens_per_step: real tokens per optimizer step, from which the rows per batch are derived
      (with the data's lengths) when they are not given: equal work per step across strategies.

  `plan(epoch)` returns the epoch's `EpochPlan` (one `BatchPlan` per optimizer step, as arrays);
  `batches(epoch)` yields its `Batch`es; `shapes()` lists every (B, T) it emits (one compile
  each).
  """

  name = "pad"
  right_padded = True

  def __init__(
    self,
    dataset: RaggedDataset,
    *,
    batch_size: int | None = None,
    max_length: int | None = None,
    seed: int = 0,
    batch_multiple: int = 1,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed=seed, batch_multiple=batch_multiple)
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

  Args:
    dataset: the sequences.
    batch_size: sequences per batch; None: derived from `tokens_per_step`.
    seed: seeds the shuffles (an epoch's order is a function of seed and epoch).
    batch_multiple: rows per batch rounded to a multiple of it (the data-parallel device count).
    tokens_per_step: real tokens per optimizer step, from which the rows per batch are derived
      (with the data's lengths) when they are not given: equal work per step across strategies.

  `plan(epoch)` returns the epoch's `EpochPlan` (one `BatchPlan` per optimizer step, as arrays);
  `batches(epoch)` yields its `Batch`es; `shapes()` lists every (B, T) it emits (one compile
  each).
  """

  name = "pad_batch_max"
  right_padded = True

  def __init__(
    self,
    dataset: RaggedDataset,
    *,
    batch_size: int | None = None,
    seed: int = 0,
    batch_multiple: int = 1,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed=seed, batch_multiple=batch_multiple)
    self.batch_size = _sequences_per_batch(dataset, batch_size, tokens_per_step, self.name)

  def batch_settings(self) -> dict:
    return dict(batch_size=self.batch_size)

  def _plan(self, epoch, rng):
    return _fixed_batches(
      rng.permutation(len(self.dataset)), self.dataset.lengths, self.batch_size, None
    )


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

  Args:
    dataset: the sequences.
    batch_size: rows per batch, the same in every bucket.
    boundaries: the buckets' padded lengths, increasing (the last >= the longest sequence).
    num_buckets: how many buckets `optimal_boundaries` chooses when `boundaries` is None.
    tokens_per_batch: a budget of computed tokens per batch (B_k = budget // T_k).
    pack_rows: several sequences per row, back to back (see above).
    seed: seeds the shuffles (an epoch's order is a function of seed and epoch).
    batch_multiple: rows per batch rounded to a multiple of it (the data-parallel device count).
    tokens_per_step: real tokens per optimizer step, from which the rows per batch are derived
      (with the data's lengths) when they are not given: equal work per step across strategies.

  `plan(epoch)` returns the epoch's `EpochPlan` (one `BatchPlan` per optimizer step, as arrays);
  `batches(epoch)` yields its `Batch`es; `shapes()` lists every (B, T) it emits (one compile
  each).
  """

  name = "bucket"
  row_setting = "tokens_per_batch"

  def __init__(  # noqa: PLR0913 (a strategy's settings)
    self,
    dataset: RaggedDataset,
    *,
    batch_size: int | None = None,
    boundaries: Sequence[int] | None = None,
    num_buckets: int | None = None,
    tokens_per_batch: int | None = None,
    batch_multiple: int = 1,
    seed: int = 0,
    pack_rows: bool = False,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed=seed, batch_multiple=batch_multiple)
    if batch_size is not None and tokens_per_batch is not None:
      raise ConfigError(
        "bucket takes at most one of batch_size or tokens_per_batch (neither: "
        "tokens_per_step, real tokens per step, sets the batch sizes)."
      )
    if (boundaries is None) == (num_buckets is None):
      raise ConfigError("bucket needs exactly one of boundaries or num_buckets.")
    if boundaries is None:
      boundaries = optimal_boundaries(dataset.lengths, int(num_buckets or 0))
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
    # each sequence's bucket (int16: a plan costs bytes per sequence); kept for plain rows
    bucket_of = np.searchsorted(self.boundaries, dataset.lengths).astype(np.int16)
    self.pack_rows = bool(pack_rows)
    self.bucket_of = None if self.pack_rows else bucket_of
    self.rows = None
    row_bucket, row_real = bucket_of, dataset.lengths  # a row per sequence, or packed:
    if self.pack_rows:
      self.rows = best_fit_rows(
        dataset.lengths, self.boundaries, np.random.default_rng([self.seed, 1])
      )
      row_bucket = np.asarray(self.rows.bucket)  # best_fit_rows sets each row's bucket
      row_real = _segment_sums(dataset.lengths[self.rows.members], self.rows.offsets)
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

  @property
  def right_padded(self) -> bool:
    return not self.pack_rows

  def _plan(self, epoch, rng):
    plans = []
    lengths = self.dataset.lengths
    for k, (b, t) in enumerate(zip(self.batch_sizes, self.boundaries)):
      if not self.pack_rows:
        members = rng.permutation(np.flatnonzero(self.bucket_of == k))
        plans.append(_fixed_batches(members, lengths, b, t))
        continue
      plans.append(_packed_batches(self.rows.select(self.rows.bucket == k), lengths, b, t, rng))
    plan = EpochPlan.concatenate(plans)
    return plan.reordered(rng.permutation(len(plan)))


class Pack(Strategy):
  """Whole sequences packed into rows of `row_length` (first-fit decreasing), reset at each start.

  No carry crosses rows. `row_length` defaults to the longest sequence (the runner's config sets
  a fixed one, so a long document is refused rather than widening every row). `batch_size`
  (rows per batch) is set, or derived from `tokens_per_step` and the rows' mean fill. The packing
  is fixed at construction (seeded); each epoch shuffles the rows and the order within each row.

  Args:
    dataset: the sequences.
    batch_size: rows per batch; None: derived from `tokens_per_step`.
    row_length: the rows' length; None: the longest sequence.
    seed: seeds the shuffles (an epoch's order is a function of seed and epoch).
    batch_multiple: rows per batch rounded to a multiple of it (the data-parallel device count).
    tokens_per_step: real tokens per optimizer step, from which the rows per batch are derived
      (with the data's lengths) when they are not given: equal work per step across strategies.

  `plan(epoch)` returns the epoch's `EpochPlan` (one `BatchPlan` per optimizer step, as arrays);
  `batches(epoch)` yields its `Batch`es; `shapes()` lists every (B, T) it emits (one compile
  each).
  """

  name = "pack"

  def __init__(
    self,
    dataset: RaggedDataset,
    *,
    batch_size: int | None = None,
    row_length: int | None = None,
    seed: int = 0,
    batch_multiple: int = 1,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed=seed, batch_multiple=batch_multiple)
    self.length = dataset.max_length if row_length is None else int(row_length)
    _check_fits(
      dataset,
      self.length,
      "pack row length",
      "Raise row_length (in the runner: --config.strategy.pack.row_length=N, or =None for "
      "the longest sequence), or use 'tbptt', which splits long sequences.",
    )
    self.bins = first_fit_decreasing(
      dataset.lengths, self.length, np.random.default_rng([self.seed, 1])
    )  # packing: its own stream
    self.batch_size = rows_within_data(
      batch_size,
      tokens_per_step,
      dataset.num_steps / len(self.bins),
      len(self.bins),
      "batch_size",
      self.name,
      unit=f"packed rows of {self.length} steps",
      fix=", or shorten row_length",
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

  Args:
    dataset: the sequences.
    chunk_length: steps per chunk (backpropagated through per train step). Required.
    num_streams: rows; None: derived from `tokens_per_step`.
    seed: seeds the shuffles (an epoch's order is a function of seed and epoch).
    batch_multiple: rows per batch rounded to a multiple of it (the data-parallel device count).
    tokens_per_step: real tokens per optimizer step, from which the rows per batch are derived
      (with the data's lengths) when they are not given: equal work per step across strategies.

  `plan(epoch)` returns the epoch's `EpochPlan` (one `BatchPlan` per optimizer step, as arrays);
  `batches(epoch)` yields its `Batch`es; `shapes()` lists every (B, T) it emits (one compile
  each).
  """

  name = "tbptt"
  carries_state = True
  row_setting = "num_streams"

  def __init__(
    self,
    dataset: RaggedDataset,
    *,
    chunk_length: int,
    num_streams: int | None = None,
    seed: int = 0,
    batch_multiple: int = 1,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed=seed, batch_multiple=batch_multiple)
    if not isinstance(chunk_length, (int, np.integer)) or chunk_length < 1:
      raise ConfigError(
        f"chunk_length must be an integer >= 1, got {chunk_length!r}; it is the "
        f"number of steps backpropagated through per train step."
      )
    self.chunk_length = int(chunk_length)
    self.num_streams = rows_within_data(
      num_streams, tokens_per_step, self.chunk_length, len(dataset), "num_streams", self.name
    )

  def batch_settings(self) -> dict:
    return dict(num_streams=self.num_streams, chunk_length=self.chunk_length)

  def _plan(self, epoch, rng):
    lengths = self.dataset.lengths
    layout, total = _lay_streams(lengths, self.num_streams, rng)
    k = self.chunk_length
    starts = np.arange(0, total, k, dtype=np.int64)
    spans = np.full(len(starts), k)
    return StreamPlan(lengths, self.num_streams, layout, starts, spans, spans)


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

  Args:
    dataset: the sequences.
    base_length: the chunk length drawn around (AWD-LSTM's bptt). Required.
    num_streams: rows; None: derived from `tokens_per_step`.
    chunk_shapes: the padded chunk lengths (at most that many compiles); None: the defaults.
    p_base: the probability of drawing around base_length rather than base_length / 2.
    sigma: the normal's spread around it.
    min_length: the shortest chunk drawn.
    seed: seeds the shuffles (an epoch's order is a function of seed and epoch).
    batch_multiple: rows per batch rounded to a multiple of it (the data-parallel device count).
    tokens_per_step: real tokens per optimizer step, from which the rows per batch are derived
      (with the data's lengths) when they are not given: equal work per step across strategies.

  `plan(epoch)` returns the epoch's `EpochPlan` (one `BatchPlan` per optimizer step, as arrays);
  `batches(epoch)` yields its `Batch`es; `shapes()` lists every (B, T) it emits (one compile
  each).
  """

  name = "vbptt"
  carries_state = True
  row_setting = "num_streams"

  def __init__(  # noqa: PLR0913 (a strategy's settings)
    self,
    dataset: RaggedDataset,
    *,
    base_length: int,
    num_streams: int | None = None,
    chunk_shapes: Sequence[int] | None = None,
    p_base: float = 0.95,
    sigma: float = 5.0,
    min_length: int = 5,
    seed: int = 0,
    batch_multiple: int = 1,
    tokens_per_step: int | None = None,
  ):
    super().__init__(dataset, seed=seed, batch_multiple=batch_multiple)
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
    self.num_streams = rows_within_data(
      num_streams, tokens_per_step, mean_chunk, len(dataset), "num_streams", self.name
    )

  def batch_settings(self) -> dict:
    return dict(
      num_streams=self.num_streams, base_length=self.base_length, chunk_shapes=self.chunk_shapes
    )

  def draw_length(self, rng: np.random.Generator) -> int:
    """One chunk length, AWD-LSTM's rule, clipped to [min_length, largest shape]."""
    mean = self.base_length if rng.random() < self.p_base else self.base_length / 2
    return min(max(round(rng.normal(mean, self.sigma)), self.min_length), self.chunk_shapes[-1])

  def _plan(self, epoch, rng):
    lengths = self.dataset.lengths
    layout, total = _lay_streams(lengths, self.num_streams, rng)
    spans = []
    pos, draw = 0, self.draw_length
    while pos < total:  # a draw a step: ~1 us each, 150k steps for 10M sequences
      n = draw(rng)
      spans.append(n)
      pos += n
    spans = np.asarray(spans, np.int64)
    starts = np.cumsum(spans) - spans
    shapes = np.asarray(self.chunk_shapes)[np.searchsorted(self.chunk_shapes, spans)]
    lr_scale = spans / self.base_length
    return StreamPlan(lengths, self.num_streams, layout, starts, spans, shapes, lr_scale)


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
    super().__init__(source.dataset, seed=source.seed, batch_multiple=source.batch_multiple)
    if source.carries_state:
      raise ConfigError(
        f"relayout needs whole sequences in each batch, and {source.name} cuts "
        f"them into chunks; use pad, bucket, pack or pad_batch_max as the source."
      )
    if layout not in ("pad", "pack"):
      raise ConfigError(f"relayout's layout must be 'pad' or 'pack', got {layout!r}.")
    self.source, self.layout = source, layout
    self.name = f"{source.name}_as_{layout}"  # type: ignore[misc]  # named by its source
    longest = int(source.dataset.lengths.max())
    self.length = longest if row_length is None or layout == "pad" else int(row_length)
    _check_fits(source.dataset, self.length, "row length", "Raise row_length.")

  def batch_settings(self) -> dict:
    return dict(source=self.source.name, layout=self.layout, length=self.length)

  @property
  def right_padded(self) -> bool:
    return self.layout == "pad"

  def _plan(self, epoch, rng):
    lengths = self.dataset.lengths
    source = self.source.plan(epoch)
    batches = []  # per batch: Rows of its sequences
    for i in range(len(source)):
      m = source.batch_segments(i)[:, SEQUENCE]
      if self.layout == "pad":
        batches.append(Rows(m, np.arange(len(m) + 1)))
      else:  # first-fit decreasing within the batch; ties broken by the epoch's rng
        bins = first_fit_decreasing(lengths[m], self.length, rng)
        batches.append(Rows(m[bins.members], bins.offsets))
    width = max(len(r) for r in batches)
    segments = []
    for rows in batches:
      seq_len = lengths[rows.members]
      counts = np.diff(rows.offsets)
      pos = _positions_in_rows(seq_len, rows.offsets[:-1], counts)
      row = np.repeat(np.arange(len(rows), dtype=np.int64), counts)
      segments.append(_table(row, rows.members, np.zeros_like(pos), pos, seq_len))
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in segments])])
    return EpochPlan(
      np.full(len(source), width),
      np.full(len(source), self.length),
      np.concatenate(segments),
      offsets,
      source.lr_scale,
    )


STRATEGIES: dict[str, type[Strategy]] = {
  cls.name: cls for cls in (Pad, Bucket, TBPTT, VariableTBPTT, Pack, PadBatchMax)
}


def make_strategy(name: str, dataset: RaggedDataset, **kwargs) -> Strategy:
  """The strategy called `name`, built on `dataset` with its keyword arguments."""
  if name not in STRATEGIES:
    raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}.")
  return STRATEGIES[name](dataset, **kwargs)


def held_out_strategies(
  dataset: RaggedDataset,
  *,
  tokens_per_batch: int,
  num_buckets: int,
  chunk_length: int = 0,
  batch_multiple: int = 1,
  seed: int = 0,
) -> list[Strategy]:
  """The batches of an exact forward pass over `dataset` (evaluation, predictions) in memory
  bounded by `chunk_length`, whatever the documents: sequences of up to `chunk_length` steps
  whole, in length buckets (`Bucket`, `tokens_per_batch` a batch); longer ones cut into chunks
  of `chunk_length` steps with the state carried from chunk to chunk (`TBPTT`'s layout, with
  `tokens_per_batch // chunk_length` streams): for a forward pass, the same computation as the
  whole sequence. chunk_length 0: every sequence whole (a bidirectional model needs that: its
  backward direction starts from the end).

  Returns:
    One strategy, or two (the short sequences' buckets, then the long ones' chunks), each over
    a subset of `dataset`; their metrics add up to the whole set's.
  """
  lengths = np.asarray(dataset.lengths)
  long = np.flatnonzero(lengths > chunk_length) if chunk_length else np.zeros(0, np.int64)

  def buckets(ds):
    return Bucket(
      ds,
      tokens_per_batch=tokens_per_batch,
      num_buckets=num_buckets,
      batch_multiple=batch_multiple,
      seed=seed,
    )

  if not len(long):
    return [buckets(dataset)]
  short = np.flatnonzero(lengths <= chunk_length)
  parts = [buckets(dataset.subset(short))] if len(short) else []
  streams = max(1, min(len(long), tokens_per_batch // chunk_length))
  chunks = TBPTT(
    dataset.subset(long),
    chunk_length=chunk_length,
    num_streams=streams,
    seed=seed,
    batch_multiple=batch_multiple,
  )
  return parts + [chunks]
