"""The planning algorithms behind the strategies (lstm_jax.batching): which sequences share a
row or a bucket, from their lengths alone, in numpy (and small compiled scans on the host) so an
epoch of millions of sequences plans in seconds.

- `optimal_boundaries`, `padded_steps`: bucket boundaries of least padding (Bucket).
- `best_fit_rows`, `first_fit_decreasing`, `Rows`: sequences packed into rows (Bucket's packed
  rows, Pack).
- `shuffle_rows`: each row's members in a random order (a keyed sort), millions of rows at once.
- `_lay_streams`: sequences laid end to end in the least-loaded of several streams (TBPTT).

Each takes a seeded numpy Generator and returns arrays; none knows the batch contract.
"""

from __future__ import annotations

import functools
import heapq
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.data import gather_steps
from lstm_jax.errors import ConfigError, DataError


def _positive_int(value: int, what: str = "batch_size") -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"{what} must be an integer >= 1, got {value!r}.")
  return int(value)


class Rows(Sequence[np.ndarray]):
  """Rows of sequences laid back to back: row r holds the sequences members[offsets[r]:
  offsets[r + 1]], in that order; `bucket[r]` is its bucket (`best_fit_rows`)."""

  def __init__(self, members: np.ndarray, offsets: np.ndarray, bucket: np.ndarray | None = None):
    self.members, self.offsets, self.bucket = members, offsets, bucket

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, r):
    if isinstance(r, slice):
      return [self[i] for i in range(*r.indices(len(self)))]
    return self.members[self.offsets[r] : self.offsets[r + 1]]

  def __iter__(self) -> Iterator[np.ndarray]:
    return (self[r] for r in range(len(self)))

  def select(self, which: np.ndarray) -> Rows:
    """The rows `which` (a boolean mask or indices), in order."""
    which = np.flatnonzero(which) if np.asarray(which).dtype == bool else np.asarray(which)
    counts = np.diff(self.offsets)[which]
    members = self.members[gather_steps(self.offsets[:-1][which], counts)]
    bucket = None if self.bucket is None else self.bucket[which]
    return Rows(members, np.concatenate([[0], np.cumsum(counts)]), bucket)


def _rows_from_assignment(items: np.ndarray, row_of: np.ndarray, num_rows: int) -> Rows:
  """Rows from each item's row, members in the order the items come."""
  by_row = np.argsort(row_of, kind="stable")
  counts = np.bincount(row_of, minlength=num_rows)
  offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)  # n < 2**31 sequences
  return Rows(items[by_row].astype(np.int32), offsets)


def shuffle_rows(rng: np.random.Generator, x: np.ndarray, starts, counts) -> None:
  """Shuffles each row x[starts[r]:starts[r] + counts[r]] in place (rows disjoint), each by its
  own uniform random permutation: a keyed sort. Every element draws one 64-bit key from `rng`
  (one `integers` call for all rows: `rng` advances by sum(counts) draws), and each row's
  elements are put in the order of their keys. The row's number goes in the high bits of one
  uint64 per element and the key's top bits in the rest, so one stable argsort orders every
  row at once: 10M sequences in about a second, for any bit generator, and nothing here
  depends on how numpy's own `shuffle` draws. Two equal keys in a row (odds ~ n**2 / 2**(65 -
  bits for the row number)) keep their places' order, the same on every machine.
  tests/test_batching.py holds it to: permutations within rows, the same for the same seed,
  and uniform over the n! orders of small rows.
  """
  starts, counts = np.asarray(starts, np.int64), np.asarray(counts, np.int64)
  rows = np.flatnonzero(counts > 1)  # a row of one stays, and draws nothing
  if not len(rows):
    return
  starts, counts = starts[rows], counts[rows]
  places = gather_steps(starts, counts)  # each row's places, row after row
  keys = rng.integers(np.iinfo(np.uint64).max, size=len(places), dtype=np.uint64, endpoint=True)
  shift = max(int(len(rows) - 1).bit_length(), 1)
  row_of = np.repeat(np.arange(len(rows), dtype=np.uint64), counts)
  if shift <= 32:  # the row's number above, the key's top 64 - shift bits below (in place)
    keys >>= np.uint64(shift)
    row_of <<= np.uint64(64 - shift)
    keys |= row_of
    del row_of
    order = np.argsort(keys, kind="stable")
  else:  # over 2**32 rows: two keys
    order = np.lexsort((keys, row_of))
  x[places] = x[places[order]]


def _positions_in_rows(seq_len: np.ndarray, row_start: np.ndarray, counts: np.ndarray):
  """Where each sequence starts in its row, the rows' members laid back to back: sequences
  row after row, row r's from row_start[r], counts[r] of them."""
  starts = np.cumsum(seq_len) - seq_len  # in the rows laid end to end
  return starts - np.repeat(starts[row_start], counts)


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


def _balanced(rows: int, most: int) -> int:
  """The batch size that splits `rows` into as many batches as `most` rows each would need, but
  evenly, so no batch is left mostly empty."""
  if rows == 0:
    return most
  batches = -(-rows // most)
  return -(-rows // batches)


def _length_groups(lengths: np.ndarray, rng: np.random.Generator):
  """The sequences longest first (ties in a random order from `rng`), and the runs of equal
  length in that order: (order, run starts, run ends)."""
  tie = rng.permutation(len(lengths))  # each sequence's random rank among equals
  by_tie = np.empty_like(tie)
  by_tie[tie] = np.arange(len(tie))  # the sequences in increasing rank: no sort needed
  # then a stable sort by decreasing length (a radix sort for int16 keys): the order of
  # lexsort((tie, -lengths)), in linear time
  top = int(lengths.max(initial=0))
  key = (top - lengths).astype(np.int16 if top - lengths.min(initial=0) < 2**15 else np.int64)
  order = by_tie[np.argsort(key[by_tie], kind="stable")]  # int16 gathered: less to read
  per = np.bincount(lengths)[::-1]  # sequences of each length, longest first
  ends = np.cumsum(per[per > 0])
  return order, ends - per[per > 0], ends


class _Stacks:
  """Rows by free space: for each free value a stack of row ids (numpy chunks, pushed in order),
  and how many each holds. Of rows with equal free space, the one that reached it last is on
  top (best-fit's tie rule)."""

  def __init__(self, top: int):
    self.chunks: list[list[np.ndarray]] = [[] for _ in range(top + 1)]
    self.count = np.zeros(top + 1, np.int64)

  def push(self, free: int, rows: np.ndarray) -> None:
    if free > 0 and len(rows):
      self.chunks[free].append(rows)
      self.count[free] += len(rows)

  def pop(self, free: int, k: int) -> np.ndarray:
    """The top k rows of stack `free`, top first."""
    out, chunks = [], self.chunks[free]
    self.count[free] -= k
    while k:
      c = chunks[-1]
      if len(c) <= k:
        out.append(c[::-1])
        chunks.pop()
        k -= len(c)
      else:
        out.append(c[: len(c) - k - 1 : -1])
        chunks[-1] = c[: len(c) - k]
        k = 0
    return np.concatenate(out)


def best_fit_rows(lengths: np.ndarray, boundaries: Sequence[int], rng: np.random.Generator) -> Rows:
  """Rows of bucket lengths, each holding sequences back to back (`Rows`, with each row's bucket).

  Best-fit decreasing over bins of several capacities: sequences, longest first (ties broken by
  `rng`), go into the open row with the least free space that still fits them (of rows with
  equal free space, the one that reached it last); when none fits, a new row opens at the
  smallest boundary >= the sequence's length. Long sequences so open the long rows and short
  ones fill their ends; every row is a bucket shape, so the compiles do not change.

  Sequences of equal length are placed as one group, which gives the same rows as placing them
  one at a time: the best-fitting row keeps taking them until they no longer fit, then the next
  best. Rows are kept in stacks by free space, so a group visits only the rows it fills.
  """
  lengths = np.asarray(lengths, np.int64)
  bounds = np.asarray(boundaries, np.int64)
  order, g_start, g_end = _length_groups(lengths, rng)
  stacks = _Stacks(int(bounds[-1]))
  bucket, row_of = [], np.empty(len(lengths), np.int64)  # row_of: each sequence's, in `order`
  rows = 0
  for g0, g1 in zip(g_start.tolist(), g_end.tolist()):
    need, left, at = int(lengths[order[g0]]), g1 - g0, g0
    pushes = []  # (free after, rows), in the order the rows were filled
    for f in (np.flatnonzero(stacks.count[need:]) + need).tolist():  # least free space first
      per = f // need
      k = min(int(stacks.count[f]), -(-left // per))
      got = stacks.pop(f, k)
      take = np.full(k, per)
      take[-1] = min(per, left - per * (k - 1))
      row_of[at : at + int(take.sum())] = np.repeat(got, take)
      at, left = at + int(take.sum()), left - int(take.sum())
      pushes.append((f - per * need, got[:-1]))
      pushes.append((f - int(take[-1]) * need, got[-1:]))
      if not left:
        break
    if left:  # new rows at the smallest boundary that holds the length
      k = int(np.searchsorted(bounds, need))
      cap, per = int(bounds[k]), int(bounds[k]) // need
      new = -(-left // per)
      ids = rows + np.arange(new)
      take = np.full(new, per)
      take[-1] = left - per * (new - 1)
      row_of[at:g1] = np.repeat(ids, take)
      bucket.append(np.full(new, k, np.int16))
      pushes.append((cap - per * need, ids[:-1]))
      pushes.append((cap - int(take[-1]) * need, ids[-1:]))
      rows += new
    for free, ids in pushes:
      stacks.push(free, ids)
  out = _rows_from_assignment(order, row_of, rows)
  out.bucket = np.concatenate(bucket) if bucket else np.zeros(0, np.int16)
  return out


def first_fit_decreasing(lengths: np.ndarray, capacity: int, rng: np.random.Generator) -> Rows:
  """Bins (`Rows`) packing `lengths` into `capacity` by first-fit decreasing.

  Ties in length are broken by `rng`. Sequences of equal length are placed as one group, which
  gives the same bins as placing them one at a time: the leftmost bin with room keeps taking
  them until it is full for that length, then the next; the rest open new bins. The work grows
  with (distinct lengths x bins), so millions of sequences pack in about a second.
  """
  lengths = np.asarray(lengths, np.int64)
  if len(lengths) and lengths.max() > capacity:
    raise DataError(f"a sequence of {int(lengths.max())} steps does not fit a bin of {capacity}.")
  order, g_start, g_end = _length_groups(lengths, rng)
  n = len(lengths)
  free = np.zeros(n, np.int64)
  bin_of = np.empty(n, np.int64)
  bins = 0
  for g0, g1 in zip(g_start, g_end):
    need, m = int(lengths[order[g0]]), int(g1 - g0)
    fits = np.flatnonzero(free[:bins] >= need)
    room = free[fits] // need
    before = np.cumsum(room) - room  # items the bins to the left take first
    take = np.clip(m - before, 0, room)
    used, take = fits[take > 0], take[take > 0]
    placed = int(take.sum())
    bin_of[g0 : g0 + placed] = np.repeat(used, take)
    free[used] -= take * need
    left = m - placed
    if left:
      per_bin = capacity // need
      new = -(-left // per_bin)
      counts = np.full(new, per_bin)
      counts[-1] = left - per_bin * (new - 1)
      bin_of[g0 + placed : g1] = np.repeat(bins + np.arange(new), counts)
      free[bins : bins + new] = capacity - counts * need
      bins += new
  return _rows_from_assignment(order, bin_of, bins)


def _lay_streams(lengths: np.ndarray, num_streams: int, rng: np.random.Generator):
  """Shuffled sequences laid end to end, each in the stream with the least work so far (ties:
  the lowest stream). Returns ((each sequence's stream, its position in the stream, the
  sequences by stream then position), the longest stream's length)."""
  order = rng.permutation(len(lengths))
  laid = lengths[order]
  # the greedy rule keeps every load <= total / streams + the longest: the keys fit int32
  most = int(lengths.sum()) // num_streams + int(lengths.max(initial=0)) + 1
  if (most + 1) * num_streams < 2**31:  # a compiled scan on the host, a block at a time
    size = min(_LAY_BLOCK, max(1024, 1 << (len(laid) - 1).bit_length()))  # few sizes compile
    s, p = np.empty(len(laid), np.int32), np.empty(len(laid), np.int32)
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      keys = jnp.arange(num_streams, dtype=jnp.int32)  # every load 0
      for a in range(0, len(laid), size):
        n = min(size, len(laid) - a)
        block = np.zeros(size, np.int32)  # zero-length sequences at the end change nothing
        block[:n] = laid[a : a + n]
        keys, bs, bp = _lay_scan(keys, jnp.asarray(block), num_streams)
        bs, bp = jax.device_get((bs, bp))
        s[a : a + n], p[a : a + n] = bs[:n], bp[:n]
      loads = np.asarray(keys) // num_streams
  else:  # keys past int32: the same rule, one sequence at a time
    heap, s_list, p_list = list(range(num_streams)), [], []
    for n in laid.tolist():  # heap entries load * num_streams + stream: ties go to the lowest
      load, stream_k = divmod(heap[0], num_streams)
      s_list.append(stream_k)
      p_list.append(load)
      heapq.heapreplace(heap, heap[0] + n * num_streams)
    s, p = np.asarray(s_list, np.int64), np.asarray(p_list, np.int64)
    loads = np.asarray([v // num_streams for v in heap])
  stream, position = np.empty(len(laid), np.int64), np.empty(len(laid), np.int64)
  stream[order], position[order] = s, p
  # positions grow in laying order within a stream, so a stable sort by stream orders both
  key = np.asarray(s, np.int16 if num_streams < 2**15 else np.int32)  # int16: a radix sort
  by_stream = order[np.argsort(key, kind="stable")]
  return (stream, position, by_stream), int(np.max(loads))


_LAY_BLOCK = 1 << 20  # sequences per call of the compiled scan: one compile per stream count


@functools.partial(jax.jit, static_argnums=2)
def _lay_scan(keys: jax.Array, laid: jax.Array, num_streams: int):
  """The least-loaded rule over one block of sequences. Each stream is one int32 key, load *
  num_streams + stream, so the least key is the least load and, among equal loads, the lowest
  stream (the heap's order), found by a plain min: 2.7x faster on the CPU than an argmin over
  the loads (128 streams: 127 against 340 ns a sequence). Returns (keys after, each sequence's
  stream, its position)."""

  def place(keys, n):
    k = keys.min()
    s = k % num_streams
    return keys.at[s].add(n * num_streams), (s, k // num_streams)

  keys, (stream, position) = jax.lax.scan(place, keys, laid)
  return keys, stream, position
