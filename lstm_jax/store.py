"""An on-disk ragged store: a corpus larger than memory, memory-mapped and read where it lies.

A store is one directory (format version 1):

    meta.json    what the arrays are (below); written last, so a store without it is incomplete
    values.bin   the flat values, sequence after sequence, in the smallest dtype that holds them:
                 token ids <uint8 | uint16 | uint32>[num_values], or features
                 <float16 | float32>[num_values, F]
    offsets.bin  <int64>[num_records + 1]: record i is values[offsets[i]:offsets[i + 1]]
    targets.bin  only where targets are not derived from the values: per step
                 <int32>[num_values] classes or <float32>[num_values, D], aligned with
                 values.bin; or per record <int32>[num_records] or <float32>[num_records, D]

    checksums.bin  <uint32>[chunks]: the CRC-32 of each 64 KiB chunk of values.bin, then of
                 offsets.bin, then of targets.bin (version 2)

`meta.json` holds `format` ("lstm_jax.store"), `version` (2; version 1 stores, without
checksums, are still read), `values_dtype`, `num_features` (null for tokens), `targets`
("next_token", "step" or "sequence"), `targets_dtype`, `target_dim` (null for classes),
`num_classes`, `vocab_size`, `num_records`, `num_values`, `max_value` and `max_target` (the
largest token id and class id written), `name`, `digests` (each file's sha256), `fingerprint`
(sha256 of the identity fields and the digests, computed once as the store is written) and
`source` (what the store was made from).

Checked, without reading the store (so opening costs the same at any size): the metadata
against itself (dtypes that the vocabulary or targets imply, ids in range, the fingerprint
recomputed from the fields and digests, so an edited meta.json is refused), each file's size,
the offsets whole (they are read anyway), and a fixed sample of values and targets chunks
against their checksums. Every other chunk is checked the first time a batch reads it, once per
process: a store changed in place after it was written (between a preemption and the resume,
say) is refused, naming the file, before a batch of the changed data reaches a step.

Next-token targets are never stored: a record of n tokens is a training sequence of n - 1 steps
whose inputs are tokens[:-1] and whose targets are tokens[1:], read at batch assembly. So a
byte-level corpus costs one byte per byte on disk, and `open_store` reads nothing but the
offsets (8 bytes a record) until a batch needs its rows.

`StoreWriter` writes a store in one pass in bounded memory; `open_store` returns a
`StoredDataset`, a `RaggedDataset` over the memory map that every strategy, `loop.fit`, the
evaluator and the runner take as they take data in memory. A held-out split is an index list
over the same store (`StoredDataset.subset`, `split`), never a copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zlib

import numpy as np

from lstm_jax.data import RaggedDataset, gather_steps
from lstm_jax.store_writer import (  # noqa: F401 (the format and writer: named here too)
  _FILES,
  _FLUSH_BYTES,
  _SAMPLED_CHUNKS,
  CHUNK_BYTES,
  FORMAT,
  READABLE_VERSIONS,
  TARGET_KINDS,
  VERSION,
  StoreError,
  StoreSchema,
  StoreWriter,
  _check_meta,
  _ChunkHasher,
  _fingerprint,
  _identity_fields,
  _is_next_token,
  from_dataset,
  is_store,
  read_meta,
  token_dtype,
  write_store,
)


def _map(path: str, name: str, dtype, shape: tuple) -> np.ndarray:
  """The file `name` of the store at `path` as a read-only memory map of `shape`, after checking
  its size (a truncated or padded file is an error, not a silent misread)."""
  f = os.path.join(path, name)
  want = int(np.prod(shape)) * np.dtype(dtype).itemsize
  try:
    size = os.path.getsize(f)
  except OSError:
    raise StoreError(f"{f} is missing; write the store again with prepare_data.py.") from None
  if size != want:
    raise StoreError(
      f"{f} holds {size:,} bytes but meta.json describes {want:,} ({shape} of {np.dtype(dtype)});"
      f" the file is truncated or from another store: write the store again."
    )
  if want == 0:
    return np.zeros(shape, dtype)
  return np.memmap(f, dtype=dtype, mode="r", shape=shape)


def open_store(path: str | os.PathLike, *, verify: bool = True) -> StoredDataset:
  """The store at `path` as a `StoredDataset` (memory-mapped; reads only the offsets now).

  Args:
    path: a directory `write_store` or `prepare_store` wrote.
    verify: check the chunk checksums (version 2 stores): the offsets and a fixed sample now,
      every other chunk on its first read. False skips them (the metadata and sizes are still
      checked): for a store on storage you trust, where a first read should cost no hashing.

  Returns:
    A `StoredDataset`: a `RaggedDataset` over the memory map, which every strategy, `fit` and
    the runner take as they take data in memory. A damaged or unfinished store is an error.
  """
  path = os.fspath(path)
  meta = read_meta(path)
  try:
    _check_meta(path, meta)
    n, total = int(meta["num_records"]), int(meta["num_values"])
    f = meta["num_features"]
    value_shape = (total,) if f is None else (total, int(f))
    values = _map(path, "values.bin", np.dtype(meta["values_dtype"]), value_shape)
    offsets = _map(path, "offsets.bin", np.int64, (n + 1,))
    kind = meta["targets"]
    targets = None
    if kind != "next_token":
      rows = total if kind == "step" else n
      d = meta["target_dim"]
      targets = _map(
        path, "targets.bin", np.dtype(meta["targets_dtype"]), (rows,) if d is None else (rows, d)
      )
  except (KeyError, TypeError, ValueError) as e:
    if isinstance(e, StoreError):
      raise
    raise StoreError(f"{path}/meta.json lacks or garbles {e}; write the store again.") from None
  lengths = np.diff(offsets)  # the only thing read now: 8 bytes a record
  shortest = 2 if kind == "next_token" else 1
  if offsets[0] != 0 or offsets[-1] != total or (lengths < shortest).any():
    raise StoreError(
      f"{path}/offsets.bin does not describe {n:,} records of {total:,} values (damaged); "
      f"write the store again."
    )
  checks = None
  if verify:
    arrays = dict(values=values, offsets=offsets, targets=targets)
    checks = _Checksums.open(path, meta, arrays)
  return StoredDataset(
    values=values,
    lengths=lengths - 1 if kind == "next_token" else lengths,
    targets=targets,  # type: ignore[arg-type]  # None for next-token: the values, shifted
    target_level="sequence" if kind == "sequence" else "step",
    num_classes=meta["num_classes"],
    vocab_size=meta["vocab_size"],
    name=meta.get("name") or os.path.basename(path.rstrip("/")),
    store_path=path,
    store_meta=meta,
    record_offsets=offsets,
    records=None,
    checksums=checks,
  )


class _Checksums:
  """A version 2 store's chunk checksums, checked against the files' bytes: the offsets whole
  and a fixed sample of the rest at open, every other chunk the first time it is read (so each
  chunk is hashed once per process, and opening costs the same at any store size)."""

  @dataclasses.dataclass
  class _File:
    raw: np.ndarray  # the file's bytes (the memory map, viewed as uint8)
    row_bytes: int  # bytes per element along the first axis (a value, a target)
    hashes: np.ndarray  # <uint32>[chunks]: CRC-32s
    checked: np.ndarray  # <bool>[chunks]
    left: int  # chunks not checked yet

  def __init__(self, path: str, chunk: int, files: dict):
    self.path, self.chunk, self.files = path, chunk, files

  @classmethod
  def open(cls, path: str, meta: dict, arrays: dict) -> _Checksums | None:
    if meta["version"] < 2:
      return None
    info = meta["checksums"]
    chunk, counts = int(info["chunk_bytes"]), [int(info["chunks"][n]) for n in _FILES]
    hashes = _map(path, "checksums.bin", np.uint32, (sum(counts),))
    files, at = {}, 0
    for name, count in zip(_FILES, counts):
      a = arrays[name.split(".")[0]]
      a = np.zeros(0, np.uint8) if a is None else np.asarray(a)
      raw = a.reshape(-1).view(np.uint8)
      if count != -(-len(raw) // chunk):
        raise StoreError(
          f"{path}/checksums.bin has {count} checksums for {name}'s {len(raw):,} bytes; the "
          f"store is damaged: write it again."
        )
      row_bytes = a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
      files[name] = cls._File(raw, row_bytes, hashes[at : at + count], np.zeros(count, bool), count)
      at += count
    checks = cls(path, chunk, files)
    checks.verify("offsets.bin", np.arange(counts[1]))  # read whole at open anyway
    for name, count in (("values.bin", counts[0]), ("targets.bin", counts[2])):
      sample = np.linspace(0, count - 1, min(count, _SAMPLED_CHUNKS))
      checks.verify(name, np.unique(sample.astype(np.int64)))
    return checks

  def check(self, name: str, lo: np.ndarray, hi: np.ndarray) -> None:
    """Checks the chunks that hold elements [lo, hi) of each row, those not checked yet."""
    f = self.files[name]
    if not f.left or not len(lo):
      return
    first = np.asarray(lo, np.int64) * f.row_bytes // self.chunk
    last = (np.asarray(hi, np.int64) * f.row_bytes - 1) // self.chunk
    spans = [first, last]
    wide = last - first > 1  # rows spanning more than two chunks: the ones between too
    spans += [np.arange(a + 1, b) for a, b in zip(first[wide], last[wide])]
    ids = np.unique(np.concatenate(spans))
    self.verify(name, ids[~f.checked[ids]])

  def verify_all(self) -> None:
    """Checks every chunk not checked yet (reads the whole store once)."""
    for name, f in self.files.items():
      if f.left:
        self.verify(name, np.flatnonzero(~f.checked))

  def verify(self, name: str, ids: np.ndarray) -> None:
    f = self.files[name]
    for i in map(int, ids):
      lo, hi = i * self.chunk, min((i + 1) * self.chunk, len(f.raw))
      if zlib.crc32(f.raw[lo:hi]) != int(f.hashes[i]):
        raise StoreError(
          f"{self.path}/{name} changed after the store was written: its bytes {lo:,} to "
          f"{hi:,} differ from the checksum written with them. Restore the original files, or "
          f"write the store again (experiments/prepare_data.py) and start the run afresh."
        )
      if not f.checked[i]:
        f.checked[i] = True
        f.left -= 1


@dataclasses.dataclass(frozen=True, eq=False)
class StoredDataset(RaggedDataset):
  """A `RaggedDataset` over a store's memory map: the same contract, nothing copied.

  `values` and `targets` are the store's read-only maps (targets None when next-token targets
  are derived); `lengths` are the training sequences' lengths; `records` maps each sequence to
  its record in the store (None: all of them, in order), so a subset or split is an index
  list. Values are read when a batch gathers them (`gather`), converted there to the batch's
  dtypes (int32 ids, float32 features). `feature_shift` / `feature_scale` (features only)
  standardise at gather time: (x - shift) / scale, computed in float64.
  """

  _: dataclasses.KW_ONLY
  store_path: str = ""
  store_meta: dict = dataclasses.field(default_factory=dict)
  record_offsets: np.ndarray | None = None
  records: np.ndarray | None = None
  feature_shift: np.ndarray | None = None
  feature_scale: np.ndarray | None = None
  checksums: _Checksums | None = None  # shared by every subset: a chunk is checked once

  def __post_init__(self):
    object.__setattr__(self, "lengths", np.asarray(self.lengths, np.int64))

  @property
  def next_token(self) -> bool:
    return self.store_meta.get("targets") == "next_token"

  @property
  def num_steps(self) -> int:
    return int(self.lengths.sum())

  @property
  def offsets(self) -> np.ndarray:
    raise TypeError(
      "a stored dataset's sequences are not contiguous in its values; read them with "
      "gather(seq, start, n) or sequence(i)."
    )

  @property
  def num_features(self) -> int | None:
    return None if self.is_tokens else int(self.values.shape[1])

  @property
  def target_dim(self) -> int | None:
    return None if self.is_classification else int(self.store_meta["target_dim"])

  @property
  def max_target(self) -> int:
    """The largest class id (classification): from the metadata, without reading targets."""
    return int(self.num_classes or 0) - 1

  def check_unchanged_since(self, when: float) -> bool:
    """If any of the store's files was modified after `when` (seconds since the epoch: a run's
    start, before a resume), checks every chunk against its checksum (reads the store once),
    so a store changed in place since then is refused now, naming the file (`StoreError`),
    not met midway. Returns whether it checked (False: nothing modified, or a version 1 store
    without checksums)."""
    names = [*_FILES, "meta.json", "checksums.bin"]
    paths = [os.path.join(self.store_path, n) for n in names]
    newest = max(os.path.getmtime(p) for p in paths if os.path.exists(p))
    if newest <= when or self.checksums is None:
      return False
    self.checksums.verify_all()
    return True

  def _record_of(self, seq: np.ndarray) -> np.ndarray:
    seq = np.asarray(seq, np.int64)
    return seq if self.records is None else self.records[seq]

  def gather(self, seq, start, n):
    rec = self._record_of(seq)
    first = self.record_offsets[rec] + np.asarray(start, np.int64)
    n = np.asarray(n, np.int64)
    if self.checksums is not None:  # each chunk the rows read, once: before its data is used
      self.checksums.check("values.bin", first, first + n + self.next_token)
      if self.target_level == "step" and not self.next_token:
        self.checksums.check("targets.bin", first, first + n)
    src = gather_steps(first, n)
    if self.is_tokens:
      inputs = np.asarray(self.values[src], np.int32)
      self._check_range(inputs, self.vocab_size, "token id", rec, n)
    else:
      inputs = np.asarray(self.values[src], np.float32)
      if self.feature_scale is not None:
        inputs = ((inputs - self.feature_shift) / self.feature_scale).astype(np.float32)
    if self.target_level != "step":
      return inputs, None
    if self.next_token:
      return inputs, np.asarray(self.values[src + 1], np.int32)
    targets = np.asarray(self.targets[src])
    self._check_range(targets, self.num_classes, "class", rec, n)
    return inputs, targets

  def sequence_targets(self, seq) -> np.ndarray:
    rec = self._record_of(seq)
    if self.checksums is not None:
      self.checksums.check("targets.bin", rec, rec + 1)
    targets = np.asarray(self.targets[rec])
    self._check_range(targets, self.num_classes, "class", rec, np.ones(len(rec), np.int64))
    return targets

  def _check_range(self, ids: np.ndarray, limit, what: str, rec, n) -> None:
    """Ids outside [0, limit) (a version 1 store changed after writing: version 2 stores are
    checked by their checksums first) are one error naming the record, not a NaN loss."""
    if limit is None or not len(ids) or ids.ndim != 1:
      return
    if int(ids.min()) >= 0 and int(ids.max()) < int(limit):
      return
    at = int(np.flatnonzero((ids < 0) | (ids >= int(limit)))[0])
    row = int(np.searchsorted(np.cumsum(n), at, side="right"))
    raise StoreError(
      f"{self.store_path}: record {int(rec[row])} holds {what} {int(ids[at])}, outside [0, "
      f"{limit}) as meta.json gives it; the store was changed or damaged: write it again "
      f"(experiments/prepare_data.py)."
    )

  def sequence(self, i: int):
    x, y = self.gather(np.array([i]), np.zeros(1, np.int64), self.lengths[i : i + 1])
    return x, (y if self.target_level == "step" else self.sequence_targets(np.array([i]))[0])

  def subset(self, indices, name: str | None = None) -> StoredDataset:
    idx = np.asarray(indices, dtype=np.int64)
    return dataclasses.replace(
      self,
      lengths=self.lengths[idx],
      records=self._record_of(idx),
      name=self.name if name is None else name,
    )

  def standardized(self, shift: np.ndarray, scale: np.ndarray) -> StoredDataset:
    """The same sequences, their features standardised at gather time."""
    return dataclasses.replace(self, feature_shift=shift, feature_scale=scale)

  def fingerprint(self) -> str:
    """The store's fingerprint (from its metadata: no byte is hashed again) with the records
    this dataset selects and any standardisation."""
    h = hashlib.sha256(self.store_meta["fingerprint"].encode())
    if self.records is not None:
      h.update(np.ascontiguousarray(self.records).tobytes())
    for a in (self.feature_shift, self.feature_scale):
      if a is not None:
        h.update(np.asarray(a, np.float64).tobytes())
    return h.hexdigest()[:16]

  def save(self, path) -> None:
    raise TypeError("a stored dataset is already on disk; copy its store directory instead.")

  def grain_source(self) -> GrainSource:
    return GrainSource(self)


class GrainSource:
  """A dataset as a Grain random-access data source (`len` and `[i]`): record i is a dict of
  its `inputs` and `targets` (per step, or the sequence's one target), read from the store
  only when asked for. Grain's samplers, maps and batchers can then consume an lstm_jax store;
  lstm_jax's own strategies plan exact, fixed-shape batches from the same store."""

  def __init__(self, dataset: RaggedDataset):
    self.dataset = dataset

  def __len__(self) -> int:
    return len(self.dataset)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    if not 0 <= i < len(self.dataset):
      raise IndexError(f"record {i} of {len(self.dataset)}")
    x, y = self.dataset.sequence(i)
    return dict(inputs=x, targets=y)

  def __repr__(self) -> str:
    return f"GrainSource({self.dataset.name}, {len(self)} records)"
