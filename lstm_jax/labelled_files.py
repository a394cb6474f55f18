"""A user's labelled sequences from one file: the ragged `.npz` (`load_npz`) and the sktime /
aeon `.ts` format of the UCR/UEA archive (`load_ts`), each a `RaggedDataset` plus an identity
record (path, sha256, class names, what was inferred, stripped or dropped, a fingerprint).

A held-out file's labels are numbered by the training file's class names (`relabel_by_name`),
so a test file that lists a subset of the classes, or lists them in another order, scores
against the right classes. Exact copies can be dropped (`first_occurrences`) so that one never
falls on both sides of a split. Every fault in a file is one DataError naming the file, and the
line or array, and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lstm_jax.data import RaggedDataset
from lstm_jax.errors import DataError

_NPZ_ALIASES = dict(
  values=("values", "X", "x", "inputs"), lengths=("lengths",), targets=("targets", "labels", "y")
)


def load_npz(
  path: str,
  *,
  drop_duplicates: bool = False,
  key: str = "data.path",
  classes: Sequence[str] | None = None,
) -> tuple[RaggedDataset, dict]:
  """A ragged `.npz`: flat values (`values` or `X`), `lengths`, and labels (`targets`, `labels` or
  `y`): one per sequence (sequence-level) or one per step (step-level). Integer labels mean
  classification (num_classes = max + 1 unless the file says), float labels regression; integer
  1-D values are token ids (vocab_size = max + 1 unless the file says). An optional
  `class_names` array names class i.

  Args:
    path: the .npz file (np.savez(path, values=..., lengths=..., targets=...)).
    drop_duplicates: drop exact copies (inputs and targets), keeping the first.
    key: the setting named in a message about the path (the runner's config key).
    classes: the training file's class names (its `identity["classes"]`): this file's labels
      are numbered by them (`relabel_by_name`), as the runner does for a held-out file.

  Returns:
    (dataset, identity): the RaggedDataset and the file's record (path, sha256, fingerprint,
    class names, what was inferred or dropped).
  """
  p = Path(path)
  if not p.exists():
    raise DataError(f"no such file: {path}; set {key} to a ragged .npz.")
  if not p.is_file():
    raise DataError(f"{path} is not a file; set {key} to a ragged .npz (np.savez).")
  arrays, given = _read_npz(path, p)
  meta = {k: int(given[k]) for k in ("num_classes", "vocab_size") if k in given and given[k] >= 0}
  names = None
  if "class_names" in given:  # labels by name: a held-out file's ids are matched through them
    names = [str(c) for c in np.asarray(given["class_names"]).reshape(-1)]
    if len(set(names)) != len(names):
      raise DataError(f"{path}: its class_names repeat a name ({names[:10]}); name each once.")
    meta.setdefault("num_classes", len(names))
  values, lengths, targets = arrays["values"], arrays["lengths"], arrays["targets"]
  level = _npz_level(path, given, values, lengths, targets)

  def is_int(a):
    return np.issubdtype(a.dtype, np.integer)

  inferred = {}
  if is_int(targets) and "num_classes" not in meta:
    meta["num_classes"] = inferred["num_classes"] = _inferred_count(path, targets, "label")
  if is_int(values) and values.ndim == 1 and "vocab_size" not in meta:
    meta["vocab_size"] = inferred["vocab_size"] = _inferred_count(path, values, "token id")
  try:
    ds = RaggedDataset(values, lengths, targets, target_level=level, name=p.stem, **meta)
  except DataError as e:  # "sequence 150 ...": say which file
    raise DataError(f"{path}: {e}") from None
  dropped = 0
  if drop_duplicates:  # an exact copy could fall on both sides of the split
    keep = first_occurrences(ds)
    dropped = len(ds) - len(keep)
    ds = ds.subset(keep, name=ds.name) if dropped else ds
  identity = dict(
    source="npz",
    path=str(p.resolve()),
    target_level=level,
    **meta,
    **({"classes": names} if names is not None else {}),
    inferred=inferred,
    **({"duplicates_dropped": dropped} if drop_duplicates else {}),
    file_sha256=hashlib.sha256(p.read_bytes()).hexdigest()[:16],
  )
  if classes is not None:
    ds = _numbered_by(ds, identity, classes, path)
  identity["fingerprint"] = ds.fingerprint()
  return ds, identity


def _read_npz(path: str, p: Path) -> tuple[dict, dict]:
  """The .npz's values, lengths and labels (under any of their names), and the settings it
  gives (num_classes, vocab_size, target_level, class_names)."""
  fix = "write it with np.savez(path, values=..., lengths=..., targets=...)"
  try:
    with np.load(p, allow_pickle=False) as f:
      if not hasattr(f, "files"):
        raise DataError(f"{path} is a single .npy array, not an .npz archive; {fix}.")
      arrays = {}
      for key, names in _NPZ_ALIASES.items():
        found = [n for n in names if n in f.files]
        if not found:
          raise DataError(
            f"{path} has no {key} array (looked for {list(names)}; it has "
            f"{f.files}); a ragged .npz needs flat values, lengths and labels."
          )
        arrays[key] = _npz_array(path, f, found[0])
      given = {
        k: _npz_array(path, f, k)
        for k in ("num_classes", "vocab_size", "target_level", "class_names")
        if k in f
      }
  except DataError:
    raise
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
    # numpy falls back to unpickling what is not a zip archive and says to "allow_pickle":
    # advice a data file must not take, so it is not quoted
    said = "not a zip archive" if "pickle" in str(e) else " ".join(str(e).split())[:160]
    raise DataError(
      f"{path} is not a readable .npz (truncated, or another format: {said}); {fix}."
    ) from e
  return arrays, given


def _npz_level(path: str, given: dict, values, lengths, targets) -> str:
  """'sequence' or 'step': as the file says, else from the number of labels."""
  if lengths.size == 0:
    raise DataError(f"{path} holds no sequences (its lengths array is empty).")
  if "target_level" in given:
    return str(given["target_level"])
  if len(targets) == len(lengths) != len(values):
    return "sequence"
  if len(targets) == len(values):
    return "step"
  raise DataError(
    f"{path} has {len(targets)} labels for {len(lengths)} sequences of {len(values)} steps "
    f"in all: give one label per sequence ({len(lengths)}) or one per step ({len(values)}), "
    f"or say which with a target_level array ('sequence' or 'step')."
  )


def load_ts(
  path: str,
  *,
  drop_duplicates: bool = False,
  key: str = "data.path",
  classes: Sequence[str] | None = None,
) -> tuple[RaggedDataset, dict]:
  """A sktime / aeon `.ts` file (the UCR/UEA archive's format): univariate or multivariate,
  equal or unequal length, with class labels. Header lines start with `@` (`@classLabel true
  a b c` lists the labels, whose order gives their ids); after `@data`, one case a line: each
  dimension's values separated by commas, dimensions by colons, the label last. Trailing
  missing values (`?`, NaN: how the archive pads unequal lengths) are stripped and the cases
  stripped counted in `identity["nan_padding_stripped"]`; a missing value inside a series,
  and inf, are an error naming the line.

  Args:
    path: the .ts file.
    drop_duplicates: drop exact copies (inputs and label), keeping the first.
    key: the setting named in a message about the path (the runner's config key).
    classes: the training file's class names (its `identity["classes"]`): this file's labels
      numbered by those names (`relabel_by_name`), so a test file that lists a subset or
      another order scores against the right classes.

  Returns:
    (dataset, identity): the RaggedDataset (sequence labels) and the file's record (path,
    sha256, class names, dimensions, stripped padding, fingerprint).
  """
  p = Path(path)
  if not p.is_file():
    raise DataError(f"{path} is not a file; set {key} to a .ts file (sktime / aeon format).")
  labels: list[str] | None = None
  cases: list[np.ndarray] = []
  case_labels: list[str] = []
  in_data, first_line, stripped = False, 0, 0
  with open(p, encoding="utf-8", errors="replace") as f:
    for n, raw in enumerate(f, 1):
      line = raw.strip()
      if not line or line.startswith("#"):
        continue
      if not in_data:
        labels, in_data = _ts_header(path, n, line, labels)
        continue
      if labels is None:
        raise DataError(
          f"{path} has no @classLabel line before @data; lstm_jax reads classification .ts files."
        )
      case, label, cut = _ts_case(path, n, line, labels)
      if cases and case.shape[1] != cases[0].shape[1]:
        raise DataError(
          f"{path}:{n}: this case has {case.shape[1]} dimension(s), the first case (line "
          f"{first_line}) {cases[0].shape[1]}; every case needs the same dimensions."
        )
      first_line = first_line or n
      stripped += cut
      cases.append(case)
      case_labels.append(label)
  if labels is None:
    raise DataError(f"{path} has no @classLabel line; lstm_jax reads classification .ts files.")
  if not cases:
    raise DataError(f"{path} holds no cases after @data.")
  ids = {name: i for i, name in enumerate(labels)}
  ds = RaggedDataset(
    np.concatenate(cases).astype(np.float32),
    np.array([len(c) for c in cases]),
    np.array([ids[lab] for lab in case_labels]),
    target_level="sequence",
    num_classes=len(labels),
    name=p.stem,
  )
  identity = dict(
    source="ts",
    path=str(p.resolve()),
    classes=labels,
    dimensions=int(cases[0].shape[1]),
    file_sha256=hashlib.sha256(p.read_bytes()).hexdigest()[:16],
    **({"nan_padding_stripped": stripped} if stripped else {}),
  )
  if drop_duplicates:
    keep = first_occurrences(ds)
    identity["duplicates_dropped"] = len(ds) - len(keep)
    ds = ds.subset(keep, name=ds.name) if len(keep) < len(ds) else ds
  if classes is not None:
    ds = _numbered_by(ds, identity, classes, path)
  identity.update(sequences=len(ds), fingerprint=ds.fingerprint())
  return ds, identity


def _ts_header(path: str, n: int, line: str, labels: list[str] | None):
  """One header line of a .ts file: (the class labels so far, whether the data starts next)."""
  words = line.split()
  tag = words[0].lower()
  if tag == "@classlabel":
    if len(words) < 3 or words[1].lower() != "true":
      raise DataError(f"{path}:{n}: @classLabel must be 'true' with the labels listed.")
    labels = words[2:]
  elif tag == "@targetlabel" and words[1:2] == ["true"]:
    raise DataError(f"{path}: regression .ts files are not supported yet; use npz.")
  return labels, tag == "@data"


def _ts_case(path: str, n: int, line: str, labels: list[str]) -> tuple[np.ndarray, str, bool]:
  """One case line of a .ts file: (its steps x dimensions, its label, whether trailing missing
  values were stripped)."""
  *dims, label = line.split(":")
  label = label.strip()
  if not dims:
    raise DataError(
      f"{path}:{n}: the case has no label (a case is dimension:dimension:...:label, the "
      f"label after the last ':'); the line may be cut short."
    )
  if label not in labels:
    raise DataError(
      f"{path}:{n}: label {label[:40]!r} is not one of the @classLabel line's {labels[:10]}; "
      f"the line may be cut short, or its label misspelt."
    )
  try:  # "?" is the format's missing value: NaN here, kept only as trailing padding
    series = [
      np.array([np.nan if v.strip() == "?" else float(v) for v in d.split(",")], np.float64)
      for d in dims
    ]
  except ValueError as e:
    raise DataError(f"{path}:{n}: a value that is not a number ({e}).") from e
  if len({len(d) for d in series}) != 1:
    raise DataError(
      f"{path}:{n}: the case's {len(dims)} dimensions have lengths "
      f"{[len(d) for d in series]}; each dimension of a case needs the same length."
    )
  case = np.stack(series, axis=1)
  real = ~np.isnan(case).all(axis=1)
  end = int(np.flatnonzero(real)[-1]) + 1 if real.any() else 0
  if end == 0:
    raise DataError(f"{path}:{n}: the case holds only missing values (NaN or '?'); drop it.")
  cut = end < len(case)  # the archive pads unequal lengths with NaN at the end: not steps
  case = case[:end]
  if np.isnan(case).any():
    t = int(np.flatnonzero(np.isnan(case).any(axis=1))[0])
    raise DataError(
      f"{path}:{n}: a missing value (NaN or '?') at step {t}, inside the series (only "
      f"trailing padding is stripped); fill it first."
    )
  if not np.isfinite(case).all():
    raise DataError(f"{path}:{n}: a value is inf; clean or drop this case.")
  return case, label, cut


def _numbered_by(ds: RaggedDataset, identity: dict, classes: Sequence[str], path: str):
  if identity.get("classes") is None:
    raise DataError(
      f"{path} does not name its classes (an .npz needs a class_names array), so its labels "
      f"cannot be numbered by the names given; leave classes= unset."
    )
  ds, identity["class_ids"] = relabel_by_name(ds, list(classes), identity["classes"], path)
  return ds


def relabel_by_name(
  held_out: RaggedDataset, train_classes: Sequence[str], held_classes: Sequence[str], path: str
) -> tuple[RaggedDataset, dict[str, int]]:
  """A held-out file's labels in the training file's ids, matched by class name: each file
  numbers its classes in its own order, and a subset or reordering of the names would otherwise
  score every sequence against another class. Returns (the dataset, {name: training id}); a
  class the training data lacks is a DataError naming it."""
  mine, theirs = list(train_classes), list(held_classes)
  unknown = [c for c in theirs if c not in mine]
  if unknown:
    raise DataError(
      f"{path} has class(es) {unknown[:5]} that the training data ({mine[:10]}) lacks: the "
      f"model cannot predict them; drop those cases or add them to the training data."
    )
  ids = np.array([mine.index(c) for c in theirs], np.int64)
  mapping = {c: int(i) for c, i in zip(theirs, ids)}
  if np.array_equal(ids, np.arange(len(ids))) and len(theirs) == len(mine):
    return held_out, mapping
  if not dataclasses.is_dataclass(held_out) or type(held_out) is not RaggedDataset:
    raise DataError(f"{path}: classes matched by name need data in memory (a .ts or .npz file).")
  relabelled = dataclasses.replace(
    held_out, targets=ids[np.asarray(held_out.targets)], num_classes=len(mine)
  )
  return relabelled, mapping


def first_occurrences(ds: RaggedDataset) -> np.ndarray:
  """The indices of the sequences that are not exact copies (inputs and targets, byte for byte)
  of an earlier one, in order."""
  seen, keep = set(), []
  for i in range(len(ds)):
    x, y = ds.sequence(i)
    h = hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16)
    h.update(np.ascontiguousarray(y).tobytes())
    if h.digest() not in seen:
      seen.add(h.digest())
      keep.append(i)
  return np.asarray(keep, np.int64)


def _npz_array(path: str, f, name: str) -> np.ndarray:
  try:
    return f[name]
  except ValueError as e:  # object arrays need pickle, which a data file must not
    raise DataError(
      f"{path}: its {name!r} array holds Python objects ({e}); store numbers: flat values "
      f"with their lengths, not a list of arrays (np.concatenate them)."
    ) from e


def _inferred_count(path: str, ids: np.ndarray, what: str) -> int:
  """max + 1, unless the largest id stands far outside the rest (more than twice the next
  largest, plus 16): one stray label 999 among 0..2 would make a 1,000-class head."""
  top = int(ids.max())
  rest = ids[ids < top]
  if rest.size and top > 2 * int(rest.max()) + 16:
    key = "num_classes" if what == "label" else "vocab_size"
    n = int(np.sum(ids == top))
    raise DataError(
      f"{path}: {n} {what}{'s' * (n != 1)} {top}, far above all others (the next largest is "
      f"{int(rest.max())}), would make {key} {top + 1}; fix the stray {what}"
      f"{'s' * (n != 1)}, or store {key} in the .npz if that many is meant."
    )
  return top + 1
