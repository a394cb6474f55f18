"""Parquet and Arrow files as records for a store (`prepare_data --source parquet|arrow`),
read a record batch at a time through pyarrow (the optional extra `lstm_jax[parquet]`), so
memory holds one batch, never the file.

A file (or a directory of `*.parquet` / `*.arrow` files, read in name order: the shards a data
pipeline or Hugging Face `datasets` writes) has one row per sequence:

- the sequence column (`column`; default "tokens", else "text"): a list of non-negative
  integer token ids (any integer list type), or a string (its UTF-8 bytes);
- optionally a label column (`label_column`; default "label" when there is one): an integer
  class, a class name (a string: classes numbered by sorted name), a float, or a fixed-size
  list of floats (a regression target).

Arrow files are Arrow IPC, in the file (random access, Feather v2) or the stream format (what
`datasets` caches). `rows(...)` yields (values, label, where) with `where` naming the file and
row, so a bad row is named in one line, as the other sources do.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lstm_jax.errors import DataError

INSTALL_HINT = "pip install 'lstm_jax[parquet]' (pyarrow)"
SUFFIXES = {"parquet": ".parquet", "arrow": ".arrow"}
BATCH_ROWS = 1024  # rows a record batch holds when reading Parquet


def _pyarrow():
  try:
    import pyarrow as pa
    import pyarrow.ipc  # noqa: F401
    import pyarrow.parquet  # noqa: F401
  except ImportError:
    raise DataError(
      f"the parquet and arrow sources read through pyarrow: {INSTALL_HINT}."
    ) from None
  return pa


def files_of(kind: str, path: Path) -> list[Path]:
  """The file, or a directory's `*.parquet` / `*.arrow` files in name order."""
  if path.is_dir():
    found = sorted(p for p in path.glob(f"*{SUFFIXES[kind]}") if p.is_file())
    if not found:
      raise DataError(
        f"{path} holds no *{SUFFIXES[kind]} files; point --path at one file or a directory of them."
      )
    return found
  return [path]


def _batches(kind: str, path: Path, columns: list[str] | None):
  """The file's schema and its record batches (one at a time), `columns` only (None: all)."""
  pa = _pyarrow()
  try:
    if kind == "parquet":
      # pre_buffer=False: with pyarrow's default (True) iter_batches keeps every row group's
      # buffers it has read until the file is done, so memory grows to the file's size
      # (measured: 1.6 GB of anonymous memory for a 1.5 GB file; tests/test_columnar.py)
      f = pa.parquet.ParquetFile(path, pre_buffer=False)
      schema = f.schema_arrow
      return schema, f.iter_batches(batch_size=BATCH_ROWS, columns=columns)
    source = pa.memory_map(str(path))
    try:
      reader = pa.ipc.open_file(source)
      batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:  # not the file format: the stream format
      reader = pa.ipc.open_stream(pa.memory_map(str(path)))
      batches = iter(reader)
    schema = reader.schema
    if columns is not None:
      batches = (b.select(columns) for b in batches)
    return schema, batches
  except (pa.ArrowInvalid, OSError) as e:
    what = "Parquet" if kind == "parquet" else "Arrow IPC (file or stream)"
    raise DataError(f"{path} cannot be read as {what}: {str(e).splitlines()[0]}.") from None


def _pick_columns(
  kind: str, path: Path, schema, column: str | None, label_column: str | None
) -> tuple[str, str | None]:
  pa = _pyarrow()
  names = list(schema.names)
  if column is None:
    column = next((c for c in ("tokens", "text") if c in names), None)
    if column is None:
      raise DataError(
        f"{path} has no column 'tokens' or 'text' (it has {names}); name the sequence column "
        f"with --column."
      )
  elif column not in names:
    raise DataError(f"{path} has no column {column!r} (it has {names}); set --column.")
  if label_column is None:
    label_column = "label" if "label" in names else None
  elif label_column not in names:
    raise DataError(f"{path} has no column {label_column!r} (it has {names}); set --label_column.")
  t = schema.field(column).type
  is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
  ok = (
    (is_list and pa.types.is_integer(t.value_type))
    or pa.types.is_string(t)
    or (pa.types.is_large_string(t))
  )
  if not ok:
    raise DataError(
      f"{path}: column {column!r} is {t}; a sequence column is a list of integer token ids or "
      f"a string (text)."
    )
  if label_column is not None:
    t = schema.field(label_column).type
    floats = pa.types.is_floating(t) or (
      (pa.types.is_list(t) or pa.types.is_fixed_size_list(t)) and pa.types.is_floating(t.value_type)
    )
    if not (
      pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or floats
    ):
      raise DataError(
        f"{path}: label column {label_column!r} is {t}; a label is an integer class, a class "
        f"name (string), a float or a list of floats."
      )
  return column, label_column


def rows(kind: str, path: Path, column: str | None = None, label_column: str | None = None):
  """Yields (values, label, where) for every row of every file: values int64 token ids or uint8
  UTF-8 bytes, label a Python int, str, float or list of floats, or None."""
  pa = _pyarrow()
  chosen = None
  for f in files_of(kind, path):
    schema, _ = _batches(kind, f, None)
    picked = _pick_columns(kind, f, schema, column, label_column)
    if chosen is not None and picked != chosen:
      raise DataError(
        f"{f} has columns {picked}, where the files before it had {chosen}; give every file "
        f"the same columns."
      )
    chosen = picked
    seq_col, lab_col = picked
    _, batches = _batches(kind, f, [seq_col] + ([lab_col] if lab_col else []))
    row = 0
    for batch in batches:
      seqs = batch.column(0)
      labels = batch.column(1).to_pylist() if lab_col else [None] * len(batch)
      text = pa.types.is_string(seqs.type) or pa.types.is_large_string(seqs.type)
      if seqs.null_count:
        bad = row + int(np.flatnonzero(np.asarray(seqs.is_null()))[0])
        raise DataError(f"{f}: row {bad} has no {seq_col!r} (null); every row needs a sequence.")
      items: Iterator[np.ndarray]
      if text:
        items = (np.frombuffer(s.encode("utf-8"), np.uint8) for s in seqs.to_pylist())
      else:
        inner = seqs.flatten()
        if inner.null_count:
          k = int(np.flatnonzero(np.asarray(inner.is_null()))[0])
          raise DataError(
            f"{f}: a token id in {seq_col!r} near row {row} is null (item {k} of the batch's "
            f"ids); every id must be an integer."
          )
        flat = np.asarray(inner.to_numpy(zero_copy_only=False), np.int64)
        offsets = np.asarray(seqs.offsets) if hasattr(seqs, "offsets") else None
        if offsets is None:  # a fixed-size list
          width = seqs.type.list_size
          offsets = np.arange(len(seqs) + 1) * width
        offsets = offsets - offsets[0]
        if len(flat) and (flat.min() < 0 or flat.max() > (1 << 32) - 1):
          k = int(np.flatnonzero((flat < 0) | (flat > (1 << 32) - 1))[0])
          bad = row + int(np.searchsorted(offsets, k, side="right")) - 1
          raise DataError(
            f"{f}: row {bad}: token id {int(flat[k])} is outside [0, 4,294,967,295]; "
            f"{seq_col!r} must hold non-negative integer ids below 2**32."
          )
        items = (flat[offsets[i] : offsets[i + 1]] for i in range(len(seqs)))
      for i, (values, label) in enumerate(zip(items, labels)):
        yield values, label, f"{f}: row {row + i}"
      row += len(batch)
