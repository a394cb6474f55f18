"""The store's format and its writer (lstm_jax.store reads it, and names everything here too):
the format's constants, `StoreWriter` (records appended in bounded memory, checksummed in
chunks, written to a partial directory renamed into place when it closes), `write_store` and
`from_dataset` over it, and `read_meta`, the metadata's reader and checks. The format itself is
described in lstm_jax.store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
import zlib
from typing import Any, Callable, Iterable

import numpy as np

from lstm_jax.data import RaggedDataset
from lstm_jax.errors import DataError
from lstm_jax.files import DirectoryWriter, write_json_atomically

FORMAT, VERSION = "lstm_jax.store", 2
READABLE_VERSIONS = (1, 2)
TARGET_KINDS = ("next_token", "step", "sequence")
_FILES = ("values.bin", "offsets.bin", "targets.bin")
_FLUSH_BYTES = 8 << 20  # the writer's buffer: bounded memory whatever the corpus
# Checksummed chunks: small enough that a batch's first read of a record hashes little more than
# the record (about 20 us a chunk), large enough that the checksums are 1/16384 of the store.
CHUNK_BYTES = 64 << 10
_SAMPLED_CHUNKS = 8  # checked at open, spread over each file: catches a rewrite at once


class StoreError(DataError):
  """A store is missing, incomplete, damaged or of another format."""


def token_dtype(vocab_size: int) -> np.dtype:
  """The smallest unsigned dtype that holds ids 0..vocab_size - 1."""
  for dt in (np.uint8, np.uint16, np.uint32):
    if vocab_size <= np.iinfo(dt).max + 1:
      return np.dtype(dt)
  raise DataError(f"vocab_size {vocab_size:,} does not fit 32-bit token ids.")


# --- writing -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class StoreSchema:
  """What a store holds, as its meta.json records it; checked when built.

  Args:
    vocab_size: token inputs: the vocabulary (the values' dtype follows from it). Exactly one of
      vocab_size and num_features.
    num_features: feature inputs: floats per step.
    targets: "next_token" (tokens only: derived, nothing stored), "step" (one target per step,
      given with each record) or "sequence" (one per record).
    num_classes: classification targets: the classes. Step or sequence targets need
      num_classes or target_dim.
    target_dim: regression targets: floats per target.
    values_dtype: feature values' dtype, "float32" (default) or "float16" (half the disk).
  """

  vocab_size: int | None = None
  num_features: int | None = None
  targets: str = "next_token"
  num_classes: int | None = None
  target_dim: int | None = None
  values_dtype: str | None = None

  def __post_init__(self) -> None:
    if (self.vocab_size is None) == (self.num_features is None):
      raise DataError("a store holds token ids (vocab_size=...) or features (num_features=...).")
    if self.targets not in TARGET_KINDS:
      raise DataError(f"targets must be one of {TARGET_KINDS}, got {self.targets!r}.")
    if self.targets == "next_token" and self.vocab_size is None:
      raise DataError("next-token targets need token inputs (vocab_size=...).")
    if self.targets != "next_token" and (self.num_classes is None) == (self.target_dim is None):
      raise DataError(f"{self.targets}-level targets need num_classes=... or target_dim=....")
    if self.vocab_size is None:
      dtype = np.dtype(self.values_dtype or "float32")
      if dtype not in (np.float16, np.float32):
        raise DataError(f"feature values are float16 or float32, got {self.values_dtype!r}.")

  @classmethod
  def of(cls, dataset: RaggedDataset) -> StoreSchema:
    """The schema that holds `dataset` (next-token byte or token LMs are recognised when
    targets are inputs shifted by one, and kept as `next_token`)."""
    next_token = _is_next_token(dataset)
    return cls(
      vocab_size=dataset.vocab_size,
      num_features=dataset.num_features,
      targets="next_token" if next_token else dataset.target_level,
      num_classes=None if next_token else dataset.num_classes,
      target_dim=None if next_token or dataset.is_classification else dataset.target_dim,
    )


class StoreWriter:
  """Writes a store record by record, in one pass and bounded memory (an 8 MB buffer).

  What it holds is its `StoreSchema` (token ids or features, the targets' kind), checked when
  the schema is built: `StoreWriter(path, StoreSchema(vocab_size=256))`.

  The store is written into `path + ".partial"`, under a lock (a second writer of the same
  path is refused, naming the first), and swapped in whole by `close()` (`files.DirectoryWriter`):
  a killed writer never leaves something that looks like a store, and `overwrite=True` replaces
  only a store (never a file or another directory), keeping the old one until the new one is
  complete. Each bad record raises a `DataError` naming it (`add(..., where=...)` says where it
  came from); an exception (a full disk, Ctrl-C) removes the partial store.
  """

  def __init__(
    self,
    path: str | os.PathLike,
    schema: StoreSchema,
    *,
    name: str = "",
    source: dict | None = None,
    overwrite: bool = False,
  ):
    if not isinstance(schema, StoreSchema):
      raise DataError(
        f"StoreWriter takes a StoreSchema (what the store holds), got {type(schema).__name__}; "
        f"for example StoreWriter(path, StoreSchema(vocab_size=256))."
      )
    self.schema = schema
    self.vocab_size, self.num_features = schema.vocab_size, schema.num_features
    self.targets, self.num_classes = schema.targets, schema.num_classes
    self.target_dim = schema.target_dim
    if schema.vocab_size is not None:
      self.values_dtype = token_dtype(int(schema.vocab_size))
    else:
      self.values_dtype = np.dtype(schema.values_dtype or "float32")
    self.targets_dtype = np.dtype(np.int32 if schema.num_classes is not None else np.float32)
    self._directory = DirectoryWriter(
      path,
      replaceable=is_store,
      names=(*_FILES, "checksums.bin", "meta.json"),
      overwrite=overwrite,
      error=StoreError,
      flag="overwrite=True (prepare_data.py --overwrite)",
    )
    self.path, self.partial = self._directory.path, self._directory.partial
    self.name, self.source = name or os.path.basename(self.path), source or {}
    self._files: dict = {}
    try:
      self._files = {f: open(os.path.join(self.partial, f), "wb") for f in _FILES}
    except BaseException:
      self.abort()
      raise
    self._hash = {f: hashlib.sha256() for f in _FILES}
    self._chunks = {f: _ChunkHasher() for f in _FILES}
    self.max_value, self.max_target = -1, -1
    self._buffers: dict[str, list[bytes]] = {f: [] for f in _FILES}
    self._buffered = 0
    self.num_records, self.num_values, self.bytes_in = 0, 0, 0
    self.max_length = 0
    self._write("offsets.bin", np.zeros(1, np.int64))
    self._closed = False

  def _write(self, name: str, array: np.ndarray) -> None:
    b = np.ascontiguousarray(array).tobytes()
    self._buffers[name].append(b)
    self._buffered += len(b)
    if self._buffered >= _FLUSH_BYTES:
      self.flush()

  def flush(self) -> None:
    for name, parts in self._buffers.items():
      if parts:
        data = b"".join(parts)
        self._files[name].write(data)
        self._hash[name].update(data)
        self._chunks[name].update(data)
        parts.clear()
    self._buffered = 0

  def add(self, values, target=None, where: str | None = None) -> None:
    """Appends one record: its values ([n] token ids or [n, F] features) and, for step or
    sequence targets, its target(s). `where` names the record in errors (a file, a line)."""
    at = where or f"record {self.num_records}"
    v = np.asarray(values)
    n = len(v) if v.ndim else 0
    if self.targets == "next_token" and n < 2:
      raise DataError(f"{at} has {n} token(s); next-token prediction needs at least 2: drop it.")
    if n == 0:
      raise DataError(f"{at} is empty; every sequence needs at least one step: drop it.")
    if self.vocab_size is not None:
      if v.ndim != 1 or not (np.issubdtype(v.dtype, np.integer) or v.dtype == bool):
        raise DataError(
          f"{at}: token ids must be a 1-D integer array, got dtype {v.dtype} shape {v.shape}."
        )
      lo, hi = int(v.min()), int(v.max())
      if lo < 0 or hi >= self.vocab_size:
        bad = lo if lo < 0 else hi
        raise DataError(
          f"{at}: token {bad} is out of range [0, {self.vocab_size}); raise vocab_size or fix "
          f"the tokenizer."
        )
      self.max_value = max(self.max_value, hi)
    else:
      if v.ndim != 2 or v.shape[1] != self.num_features:
        raise DataError(
          f"{at}: features must be [steps, {self.num_features}], got shape {v.shape}."
        )
      if not np.issubdtype(v.dtype, np.floating) or not np.isfinite(v).all():
        raise DataError(f"{at}: features must be finite floats (dtype {v.dtype}); clean it.")
    self._write("values.bin", v.astype(self.values_dtype, copy=False))
    if self.targets != "next_token":
      self._write("targets.bin", self._check_target(target, n, at))
    self.num_records += 1
    self.num_values += n
    self.bytes_in += v.nbytes
    self.max_length = max(self.max_length, n)
    self._write("offsets.bin", np.array([self.num_values], np.int64))

  def add_many(self, values, lengths, where: str | None = None) -> None:
    """Appends many token or feature records at once (no targets: next-token stores, or a
    writer whose targets come with `add`): `values` end to end, `lengths` each record's.
    Checked as a whole; an error names the first bad record by its number in the store."""
    v, lengths = np.asarray(values), np.asarray(lengths, np.int64)
    if self.targets != "next_token":
      raise DataError("add_many writes records without targets; use add(values, target).")
    if lengths.ndim != 1 or int(lengths.sum()) != len(v):
      raise DataError(
        f"{where or 'add_many'}: the lengths add up to {int(lengths.sum())}, "
        f"but {len(v)} values were given."
      )
    short = np.flatnonzero(lengths < 2)
    if len(short):
      i = self.num_records + int(short[0])
      raise DataError(
        f"record {i} has {int(lengths[short[0]])} token(s); next-token "
        f"prediction needs at least 2: drop it."
      )
    if len(v):
      lo, hi = int(v.min()), int(v.max())
      if lo < 0 or hi >= self.vocab_size:  # type: ignore[operator]  # set for token stores
        bad = np.flatnonzero((v < 0) | (v >= self.vocab_size))[0]
        i = self.num_records + int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
        raise DataError(
          f"record {i}: token {int(v[bad])} is out of range [0, {self.vocab_size}); raise "
          f"vocab_size or fix the tokenizer."
        )
      self.max_value = max(self.max_value, hi)
    self._write("values.bin", v.astype(self.values_dtype, copy=False))
    self._write("offsets.bin", self.num_values + np.cumsum(lengths))
    self.num_records += len(lengths)
    self.num_values += len(v)
    self.bytes_in += v.nbytes
    self.max_length = max(self.max_length, int(lengths.max(initial=0)))

  def _check_target(self, target, n: int, at: str) -> np.ndarray:
    t = np.asarray(target)
    rows = n if self.targets == "step" else 1
    if self.num_classes is not None:
      t = t.reshape(-1) if self.targets == "step" else t.reshape(1)
      if len(t) != rows or not np.issubdtype(t.dtype, np.integer):
        raise DataError(
          f"{at}: {self.targets}-level class targets must be {rows} integer(s), got "
          f"{np.asarray(target).dtype} of shape {np.shape(target)}."
        )
      if t.min() < 0 or t.max() >= self.num_classes:
        bad = int(t.min() if t.min() < 0 else t.max())
        raise DataError(
          f"{at}: label {bad} is out of range [0, {self.num_classes}); raise num_classes or "
          f"fix the labels."
        )
      self.max_target = max(self.max_target, int(t.max()))
    else:
      dim = int(self.target_dim or 0)  # set for float targets
      t = t.reshape(rows, dim) if t.size == rows * dim else t
      if t.shape != (rows, self.target_dim) or not np.issubdtype(t.dtype, np.floating):
        raise DataError(
          f"{at}: regression targets must be floats of shape ({rows}, {self.target_dim}), got "
          f"{t.dtype} of shape {t.shape}."
        )
      if not np.isfinite(t).all():
        raise DataError(f"{at}: NaN or inf in the regression targets; clean it.")
    return t.astype(self.targets_dtype)

  def meta(self) -> dict:
    return dict(
      format=FORMAT,
      version=VERSION,
      values_dtype=self.values_dtype.name,
      num_features=self.num_features,
      targets=self.targets,
      targets_dtype=None if self.targets == "next_token" else self.targets_dtype.name,
      target_dim=self.target_dim,
      num_classes=self.vocab_size if self.targets == "next_token" else self.num_classes,
      vocab_size=self.vocab_size,
      num_records=self.num_records,
      num_values=self.num_values,
      max_length=self.max_length,
      max_value=self.max_value if self.vocab_size is not None else None,
      max_target=self.max_target if self.num_classes is not None else None,
      name=self.name,
      source=self.source,
    )

  def close(self) -> dict:
    """Finishes the files, writes meta.json (with the fingerprint) and puts the store at
    `path`. Returns the metadata."""
    if self._closed:
      raise StoreError(f"the writer of {self.path} is already closed.")
    if self.num_records == 0:
      self.abort()
      raise DataError(f"no records were written to {self.path}; the source held no sequence.")
    self.flush()
    for f in self._files.values():
      f.flush()
      os.fsync(f.fileno())
      f.close()
    chunks = [self._chunks[name].finish() for name in _FILES]
    with open(os.path.join(self.partial, "checksums.bin"), "wb") as f:
      f.write(np.concatenate(chunks).tobytes())
      f.flush()
      os.fsync(f.fileno())
    meta = self.meta()
    counts = {name: len(c) for name, c in zip(_FILES, chunks)}
    meta["checksums"] = dict(chunk_bytes=CHUNK_BYTES, chunks=counts)
    meta["digests"] = {name: self._hash[name].hexdigest() for name in _FILES}
    meta["fingerprint"] = _fingerprint(meta)
    meta["written"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_json_atomically(os.path.join(self.partial, "meta.json"), meta, indent=1)
    self._directory.commit()
    self._closed = True
    return meta

  def abort(self) -> None:
    """Removes what was written (the store was not finished); an old store at `path` stays."""
    for f in self._files.values():
      with contextlib.suppress(OSError):
        f.close()
    self._directory.abort()
    self._closed = True

  def __enter__(self) -> StoreWriter:
    return self

  def __exit__(self, kind, value, tb) -> None:
    if kind is None:
      self.close()
    elif not self._closed:
      self.abort()


def is_store(path: str) -> bool:
  """Whether `path` is a directory whose meta.json carries the store's format marker (a store
  of any version, complete or damaged in its data): what `--overwrite` may replace."""
  try:
    with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(meta, dict) and meta.get("format") == FORMAT


class _ChunkHasher:
  """The CRC-32 of each CHUNK_BYTES chunk of a stream of bytes (CRC-32: about 3 GB/s here, 4x
  blake2b, and certain to catch any change of up to 32 bits in a row; the checksums catch
  accidents, the sha256 digests behind the fingerprint identify the data)."""

  def __init__(self):
    self.done: list[int] = []
    self.crc, self.filled = 0, 0

  def update(self, data: bytes) -> None:
    view, at = memoryview(data), 0
    while at < len(view):
      take = min(CHUNK_BYTES - self.filled, len(view) - at)
      self.crc = zlib.crc32(view[at : at + take], self.crc)
      at, self.filled = at + take, self.filled + take
      if self.filled == CHUNK_BYTES:
        self.done.append(self.crc)
        self.crc, self.filled = 0, 0

  def finish(self) -> np.ndarray:
    if self.filled:
      self.done.append(self.crc)
      self.crc, self.filled = 0, 0
    return np.array(self.done, np.uint32)


def _fingerprint(meta: dict) -> str:
  """The store's identity: its defining metadata and its files' sha256 digests."""
  h = hashlib.sha256(json.dumps(_identity_fields(meta), sort_keys=True).encode())
  for name in _FILES:
    h.update(bytes.fromhex(meta["digests"][name]))
  return h.hexdigest()[:16]


def _identity_fields(meta: dict) -> dict:
  """The metadata that defines the data (not when or from what it was written)."""
  keep = (
    "format",
    "version",
    "values_dtype",
    "num_features",
    "targets",
    "targets_dtype",
    "target_dim",
    "num_classes",
    "vocab_size",
    "num_records",
    "num_values",
  )
  return {k: meta.get(k) for k in keep}


def write_store(
  path: str | os.PathLike,
  records: Iterable[tuple[Any, Any, str | None]],
  schema: StoreSchema,
  *,
  progress: Callable[[StoreWriter], None] | None = None,
  name: str = "",
  source: dict | None = None,
  overwrite: bool = False,
) -> dict:
  """Writes records as a store at `path`, in one streaming pass.

  Args:
    path: the store's directory (written as `path.partial`, renamed when complete).
    records: (values, target or None, where) triples: a sequence's values, its target (None
      for next-token targets), and where it came from (named in an error about it).
    schema: what the store holds (`StoreSchema`: tokens or features, the targets' kind).
    progress: called with the writer after each record.
    name, source, overwrite: the `StoreWriter`'s: the store's name (default: its directory's),
      where its data came from (recorded in meta.json), whether to replace a store there.

  Returns:
    The store's metadata (meta.json): counts, dtypes, fingerprint, source.
  """
  with StoreWriter(path, schema, name=name, source=source, overwrite=overwrite) as writer:
    for values, target, where in records:
      writer.add(values, target, where)
      if progress is not None:
        progress(writer)
    writer.flush()
  return read_meta(path)


def from_dataset(
  dataset: RaggedDataset,
  path: str | os.PathLike,
  *,
  progress: Callable[[StoreWriter], None] | None = None,
  source: dict | None = None,
  overwrite: bool = False,
  name: str | None = None,
) -> dict:
  """Writes an in-memory `RaggedDataset` as a store (`StoreSchema.of`: next-token byte or token
  LMs are recognised when targets are inputs shifted by one and kept as `next_token`); `name`
  defaults to the dataset's, the rest as `write_store`."""
  schema = StoreSchema.of(dataset)
  next_token = schema.targets == "next_token"
  o = dataset.offsets

  def records():
    for i in range(len(dataset)):
      x = dataset.values[o[i] : o[i + 1]]
      if next_token:
        yield np.append(x, dataset.targets[o[i + 1] - 1]), None, f"sequence {i}"
      else:
        step = dataset.target_level == "step"
        yield x, dataset.targets[o[i] : o[i + 1]] if step else dataset.targets[i], f"sequence {i}"

  return write_store(
    path,
    records(),
    schema,
    progress=progress,
    name=dataset.name if name is None else name,
    source=source,
    overwrite=overwrite,
  )


def _is_next_token(ds: RaggedDataset) -> bool:
  """Token inputs whose step targets are the next input of the same sequence."""
  if not (ds.is_tokens and ds.target_level == "step" and ds.num_classes == ds.vocab_size):
    return False
  inner = np.ones(ds.num_steps, bool)
  inner[ds.offsets[1:] - 1] = False  # each sequence's last target has no next input
  return bool(np.array_equal(ds.targets[:-1][inner[:-1]], ds.values[1:][inner[:-1]]))


# --- reading -------------------------------------------------------------------------------------
def read_meta(path: str | os.PathLike) -> dict:
  path = os.fspath(path)
  meta_path = os.path.join(path, "meta.json")
  if os.path.lexists(path) and not os.path.isdir(path):
    raise StoreError(
      f"{path} is a file, not a store; a store is the directory prepare_data.py writes: set the "
      f"path to that directory."
    )
  if not os.path.isdir(path):
    left = [p for p in (path + ".replaced", path + ".partial") if is_store(p)]
    if left:
      raise StoreError(
        f"no store at {path}, but an interrupted prepare_data.py --overwrite left a complete one "
        f"at {left[0]}: rename it to {path}, or run prepare_data.py again (which puts the "
        f"previous store back first)."
      )
    raise StoreError(
      f"no store at {path}; write one with: python experiments/prepare_data.py --out {path} ..."
    )
  if not os.path.exists(meta_path):
    hint = " (a writer did not finish)" if path.endswith(".partial") else ""
    raise StoreError(
      f"{path} has no meta.json{hint}, so it is not a complete store; write it again with "
      f"experiments/prepare_data.py."
    )
  try:
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise StoreError(
      f"{meta_path} cannot be read ({type(e).__name__}: {e}); write the store again with "
      f"experiments/prepare_data.py."
    ) from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise StoreError(f"{meta_path} is not an lstm_jax store's metadata (format {FORMAT!r}).")
  if meta.get("version") not in READABLE_VERSIONS:
    raise StoreError(
      f"{path} is store format version {meta.get('version')}; this lstm_jax reads versions "
      f"{list(READABLE_VERSIONS)}. Write it again with this version's experiments/prepare_data.py."
    )
  return meta


def _check_meta(path: str, meta: dict) -> None:
  """meta.json against itself: the dtypes its vocabulary and targets imply, the ids written
  within range, and (version 2) the fingerprint recomputed from the fields and digests. An
  edited meta.json would otherwise read the same bytes as other numbers."""
  where = os.path.join(path, "meta.json")
  fix = "write the store again with experiments/prepare_data.py"
  kind, vocab, classes = meta["targets"], meta["vocab_size"], meta["num_classes"]
  if kind not in TARGET_KINDS:
    raise StoreError(f"{where}: targets {kind!r} is not one of {TARGET_KINDS}; {fix}.")
  if vocab is not None:
    want = token_dtype(int(vocab)).name
    if meta["values_dtype"] != want or meta["num_features"] is not None:
      raise StoreError(
        f"{where}: values_dtype {meta['values_dtype']!r} does not go with vocab_size {vocab} "
        f"(token ids are {want}); the metadata was edited or damaged: {fix}."
      )
  elif meta["values_dtype"] not in ("float16", "float32") or not int(meta["num_features"]) > 0:
    raise StoreError(
      f"{where}: features are float16 or float32 with num_features >= 1, not "
      f"{meta['values_dtype']!r} with {meta['num_features']!r}; {fix}."
    )
  if kind == "next_token" and (vocab is None or classes != vocab):
    raise StoreError(f"{where}: next-token targets need num_classes == vocab_size; {fix}.")
  if kind != "next_token":
    want = "int32" if meta["target_dim"] is None else "float32"
    if meta["targets_dtype"] != want or (classes is None) == (meta["target_dim"] is None):
      raise StoreError(
        f"{where}: targets_dtype {meta['targets_dtype']!r} with num_classes {classes} and "
        f"target_dim {meta['target_dim']} do not go together; {fix}."
      )
  for key, limit, what in (("max_value", vocab, "token id"), ("max_target", classes, "class")):
    top = meta.get(key)
    if top is not None and limit is not None and not -1 <= int(top) < int(limit):
      raise StoreError(
        f"{where}: the largest {what} written is {top}, outside [0, {limit}); the metadata "
        f"was edited: {fix}."
      )
  if meta["version"] >= 2 and _fingerprint(meta) != meta.get("fingerprint"):
    raise StoreError(
      f"{where} was changed after the store was written (its fields no longer match its "
      f"fingerprint {meta.get('fingerprint')}); {fix}."
    )
