"""Ragged data sets: variable-length sequences stored without padding.

A `RaggedDataset` keeps every sequence's steps end to end in one flat array, plus each sequence's
length; nothing is padded until a batching strategy (`lstm_jax.batching`) cuts batches from it.

    values:  <float32>[num_steps, F] features, or <int32>[num_steps] token ids
    lengths: <int64>[num_sequences], each >= 1; sequence i is values[offsets[i]:offsets[i + 1]]
    targets: per step:     <int32>[num_steps] classes, or <float32>[num_steps, D] regression
             per sequence: <int32>[num_sequences] classes, or <float32>[num_sequences, D]

Classification targets need `num_classes`; token inputs need `vocab_size`. The constructor
validates everything and raises `DataError` (a `ValueError`) naming the sequence at fault.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Sequence

import numpy as np

from lstm_jax.errors import DataError

TARGET_LEVELS = ("step", "sequence")
_NPZ_KEYS = ("values", "lengths", "targets")


@dataclasses.dataclass(frozen=True, eq=False)
class RaggedDataset:
  """Variable-length sequences, stored flat (nothing padded until a strategy cuts batches).

  Args:
    values: <float32>[num_steps, F] features, or <int32>[num_steps] token ids, end to end.
    lengths: <int64>[num_sequences], each >= 1.
    targets: per step <int32>[num_steps] classes or <float32>[num_steps, D]; per sequence
      <int32>[num_sequences] or <float32>[num_sequences, D].
    target_level: "step" or "sequence".
    num_classes: the class count (classification targets).
    vocab_size: the vocabulary (token inputs).
    name: for messages and results.

  Invalid arrays raise `DataError` naming the sequence at fault (the module docstring has the
  layout). `split`, `subset`, `save` / `load` and `fingerprint` select, store and identify.
  """

  values: np.ndarray
  lengths: np.ndarray
  targets: np.ndarray
  _: dataclasses.KW_ONLY  # the arrays by position, every setting by name
  target_level: str = "step"
  num_classes: int | None = None
  vocab_size: int | None = None
  name: str = ""

  def __post_init__(self):
    def set_(k, v):
      return object.__setattr__(self, k, v)  # frozen dataclass: normalise in place

    set_("lengths", _check_lengths(self.lengths))
    set_("values", _check_values(self.values, self.lengths, self.vocab_size))
    set_("targets", _check_targets(self))

  # --- shape facts ---------------------------------------------------------------------------
  @property
  def num_sequences(self) -> int:
    return int(self.lengths.shape[0])

  def __len__(self) -> int:
    return self.num_sequences

  @property
  def num_steps(self) -> int:
    return int(self.values.shape[0])

  @functools.cached_property
  def offsets(self) -> np.ndarray:
    """<int64>[num_sequences + 1]: sequence i occupies values[offsets[i]:offsets[i + 1]]."""
    return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

  @property
  def is_tokens(self) -> bool:
    return self.vocab_size is not None

  @property
  def num_features(self) -> int | None:
    """F for feature inputs; None for token inputs."""
    return None if self.is_tokens else int(self.values.shape[1])

  @property
  def is_classification(self) -> bool:
    return self.num_classes is not None

  @property
  def target_dim(self) -> int | None:
    """D for regression targets; None for classification."""
    return None if self.is_classification else int(self.targets.shape[1])

  @property
  def max_target(self) -> int:
    """The largest class id among the targets (classification)."""
    return int(self.targets.max())

  @property
  def max_length(self) -> int:
    return int(self.lengths.max())

  def gather(self, seq: np.ndarray, start: np.ndarray, n: np.ndarray):
    """The steps [start, start + n) of each sequence in `seq`, end to end: (inputs, per-step
    targets, or None for sequence-level targets). What a batch is assembled from."""
    src = gather_steps(self.offsets[seq] + start, n)
    return self.values[src], self.targets[src] if self.target_level == "step" else None

  def sequence_targets(self, seq: np.ndarray) -> np.ndarray:
    """The sequence-level targets of the sequences `seq`."""
    return self.targets[seq]

  def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of sequence i; targets are per step or the sequence's one target."""
    o = self.offsets
    x = self.values[o[i] : o[i + 1]]
    y = self.targets[o[i] : o[i + 1]] if self.target_level == "step" else self.targets[i]
    return x, y

  # --- selection and splitting ---------------------------------------------------------------
  def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> RaggedDataset:
    """The sequences at `indices`, in that order."""
    idx = np.asarray(indices, dtype=np.int64)
    steps = gather_steps(self.offsets[idx], self.lengths[idx])
    targets = self.targets[steps] if self.target_level == "step" else self.targets[idx]
    return dataclasses.replace(
      self,
      values=self.values[steps],
      lengths=self.lengths[idx],
      targets=targets,
      name=self.name if name is None else name,
    )

  def split(self, eval_fraction: float, seed: int) -> tuple[RaggedDataset, RaggedDataset]:
    """A seeded (train, eval) split by whole sequences; eval gets round(eval_fraction * N)."""
    if not 0.0 < eval_fraction < 1.0:
      raise DataError(
        f"eval_fraction must be in (0, 1), got {eval_fraction}; "
        f"pass e.g. 0.1 to hold out a tenth of the sequences."
      )
    n_eval = int(round(eval_fraction * self.num_sequences))
    if n_eval == 0 or n_eval == self.num_sequences:
      raise DataError(
        f"eval_fraction={eval_fraction} of {self.num_sequences} sequences leaves an "
        f"empty {'eval' if n_eval == 0 else 'train'} split; use more sequences or a "
        f"different fraction."
      )
    perm = np.random.default_rng(seed).permutation(self.num_sequences)
    return (
      self.subset(np.sort(perm[n_eval:]), name=f"{self.name}:train"),
      self.subset(np.sort(perm[:n_eval]), name=f"{self.name}:eval"),
    )

  # --- identity, saving and loading ----------------------------------------------------------
  def fingerprint(self) -> str:
    """sha256 (first 16 hex digits) of the arrays and metadata: the data's identity in results."""
    h = hashlib.sha256()
    for a in (self.values, self.lengths, self.targets):
      h.update(str((a.dtype.str, a.shape)).encode())
      h.update(np.ascontiguousarray(a).tobytes())
    h.update(repr((self.target_level, self.num_classes, self.vocab_size)).encode())
    return h.hexdigest()[:16]

  def save(self, path: str | os.PathLike) -> None:
    """Writes an uncompressed `.npz` holding the arrays and metadata."""
    meta = dict(
      target_level=self.target_level,
      name=self.name,
      num_classes=-1 if self.num_classes is None else self.num_classes,
      vocab_size=-1 if self.vocab_size is None else self.vocab_size,
    )
    np.savez(
      path,
      values=self.values,
      lengths=self.lengths,
      targets=self.targets,
      **{k: np.asarray(v) for k, v in meta.items()},  # type: ignore[arg-type]  # numpy stub
    )

  @classmethod
  def load(cls, path: str | os.PathLike) -> RaggedDataset:
    """Reads what `save` wrote (or any `.npz` with values, lengths and targets arrays)."""
    if not os.path.exists(path):
      raise DataError(f"no such dataset file: {path}")
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in _NPZ_KEYS if k not in f.files]
      if missing:
        raise DataError(
          f"{path} lacks the array(s) {missing}; a ragged .npz needs {list(_NPZ_KEYS)} "
          f"(values flat end to end, one length per sequence)."
        )

      def opt(k, d):
        return f[k].item() if k in f.files else d

      num_classes, vocab = int(opt("num_classes", -1)), int(opt("vocab_size", -1))
      return cls(
        values=f["values"],
        lengths=f["lengths"],
        targets=f["targets"],
        target_level=str(opt("target_level", "step")),
        name=str(opt("name", "")),
        num_classes=None if num_classes < 0 else num_classes,
        vocab_size=None if vocab < 0 else vocab,
      )


def from_sequences(
  inputs: Sequence[np.ndarray],
  targets: Sequence | np.ndarray,
  *,
  target_level: str = "step",
  num_classes: int | None = None,
  vocab_size: int | None = None,
  name: str = "",
) -> RaggedDataset:
  """Builds a `RaggedDataset` from a list of per-sequence arrays.

  Args:
    inputs: per sequence, [L_i, F] features or [L_i] token ids.
    targets: per sequence, its [L_i] / [L_i, D] step targets, or one target (target_level
      "sequence").
    target_level: "step" or "sequence".
    num_classes, vocab_size, name: as `RaggedDataset`'s.

  Returns:
    The `RaggedDataset`, validated.
  """
  if len(inputs) == 0:
    raise DataError("the dataset is empty: no sequences were given; pass at least one sequence.")
  lengths = np.array([len(x) for x in inputs], dtype=np.int64)
  if (lengths == 0).any():
    raise DataError(
      f"sequence {int(np.argmax(lengths == 0))} is empty (length 0); every sequence "
      f"needs at least one step: drop empty sequences before building the dataset."
    )
  values = np.concatenate([np.asarray(x) for x in inputs])
  if target_level == "step":
    targets = np.concatenate([np.asarray(t) for t in targets])
  else:
    targets = np.asarray(targets)
  return RaggedDataset(
    values,
    lengths,
    targets,
    target_level=target_level,
    num_classes=num_classes,
    vocab_size=vocab_size,
    name=name,
  )


def next_token_dataset(
  token_sequences: Sequence[np.ndarray], vocab_size: int, name: str = ""
) -> RaggedDataset:
  """Language modelling: inputs tokens[:-1], targets tokens[1:].

  Args:
    token_sequences: per sequence, its [L_i] token ids (L_i >= 2).
    vocab_size: ids are in [0, vocab_size).
    name: for messages and results.

  Returns:
    A `RaggedDataset` of token inputs with step-level next-token targets.
  """
  short = [i for i, s in enumerate(token_sequences) if len(s) < 2]
  if short:
    raise DataError(
      f"{len(short)} sequence(s) have fewer than 2 tokens (first: index {short[0]}); "
      f"next-token prediction needs at least 2: drop them first."
    )
  seqs = [np.asarray(s, dtype=np.int32) for s in token_sequences]
  return from_sequences(
    [s[:-1] for s in seqs],
    [s[1:] for s in seqs],
    target_level="step",
    num_classes=vocab_size,
    vocab_size=vocab_size,
    name=name,
  )


def gather_steps(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Flat step indices of the sequences starting at `starts` with `lengths`, end to end."""
  dest_starts = np.cumsum(lengths) - lengths
  return np.repeat(starts - dest_starts, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


# --- validation ----------------------------------------------------------------------------------
def _check_lengths(lengths) -> np.ndarray:
  lengths = np.asarray(lengths)
  if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
    raise DataError(
      f"lengths must be a 1-D integer array, got dtype {lengths.dtype} shape {lengths.shape}."
    )
  if lengths.shape[0] == 0:
    raise DataError("the dataset is empty: it has no sequences; pass at least one sequence.")
  if (lengths < 0).any():
    i = int(np.argmax(lengths < 0))
    raise DataError(
      f"sequence {i} has a negative length ({int(lengths[i])}); lengths count steps "
      f"and must be >= 1."
    )
  if (lengths == 0).any():
    i = int(np.argmax(lengths == 0))
    raise DataError(
      f"sequence {i} is empty (length 0); every sequence needs at least one step: "
      f"drop empty sequences before building the dataset."
    )
  return lengths.astype(np.int64)


def _sequence_of_step(lengths: np.ndarray, step: int) -> tuple[int, int]:
  """(sequence index, step within it) of a flat step index."""
  ends = np.cumsum(lengths)
  i = int(np.searchsorted(ends, step, side="right"))
  return i, int(step - (ends[i] - lengths[i]))


def _check_values(values, lengths: np.ndarray, vocab_size: int | None) -> np.ndarray:
  values = np.asarray(values)
  total = int(lengths.sum())
  if values.shape[:1] != (total,):
    raise DataError(
      f"values has {values.shape[0] if values.ndim else 0} steps but the lengths add "
      f"up to {total}; values must hold every sequence's steps end to end."
    )
  if vocab_size is not None:
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
      raise DataError(
        f"token inputs (vocab_size={vocab_size}) must be a 1-D integer array, got "
        f"dtype {values.dtype} shape {values.shape}."
      )
    bad = (values < 0) | (values >= vocab_size)
    if bad.any():
      i, t = _sequence_of_step(lengths, int(np.argmax(bad)))
      raise DataError(
        f"token {int(values[np.argmax(bad)])} at step {t} of sequence {i} is out of "
        f"range [0, {vocab_size}); raise vocab_size or fix the tokenizer."
      )
    return values.astype(np.int32)
  if not np.issubdtype(values.dtype, np.floating):
    raise DataError(
      f"feature inputs must be floating point, got dtype {values.dtype}; cast with "
      f".astype(np.float32), or pass vocab_size=... if these are token ids."
    )
  if values.ndim != 2:
    raise DataError(
      f"feature inputs must be 2-D [steps, features], got shape {values.shape}; "
      f"use values[:, None] for one feature per step."
    )
  finite = np.isfinite(values).all(axis=1)
  if not finite.all():
    i, t = _sequence_of_step(lengths, int(np.argmin(finite)))
    kind = "NaN" if np.isnan(values[np.argmin(finite)]).any() else "inf"
    raise DataError(
      f"{kind} in the inputs at step {t} of sequence {i}; clean or drop that "
      f"sequence (e.g. np.nan_to_num) before building the dataset."
    )
  return values.astype(np.float32)


def _check_targets(ds: RaggedDataset) -> np.ndarray:
  if ds.target_level not in TARGET_LEVELS:
    raise DataError(f"target_level must be one of {TARGET_LEVELS}, got {ds.target_level!r}.")
  targets = np.asarray(ds.targets)
  n = ds.num_steps if ds.target_level == "step" else ds.num_sequences
  what = "steps" if ds.target_level == "step" else "sequences"
  if targets.ndim == 0 or targets.shape[0] != n:
    raise DataError(
      f"{ds.target_level}-level targets must have one row per {what[:-1]} ({n}), got "
      f"shape {targets.shape}; per-step targets must be as long as the inputs."
    )
  if ds.num_classes is not None:
    if not np.issubdtype(targets.dtype, np.integer) or targets.ndim != 1:
      raise DataError(
        f"classification targets (num_classes={ds.num_classes}) must be a 1-D "
        f"integer array, got dtype {targets.dtype} shape {targets.shape}; give one "
        f"integer class id per {'sequence' if ds.target_level == 'sequence' else 'step'}"
        f" (not one-hot rows: use targets.argmax(-1))."
      )
    bad = (targets < 0) | (targets >= ds.num_classes)
    if bad.any():
      j = int(np.argmax(bad))
      where = (
        "step %d of sequence %d" % _sequence_of_step(ds.lengths, j)[::-1]
        if ds.target_level == "step"
        else f"sequence {j}"
      )
      raise DataError(
        f"label {int(targets[j])} at {where} is out of range [0, {ds.num_classes}); "
        f"raise num_classes or fix the labels."
      )
    return targets.astype(np.int32)
  if not np.issubdtype(targets.dtype, np.floating):
    raise DataError(
      f"regression targets must be floating point, got dtype {targets.dtype}; for "
      f"class labels pass num_classes=..."
    )
  if targets.ndim == 1:
    targets = targets[:, None]
  if targets.ndim != 2:
    raise DataError(f"regression targets must be [{what}, D], got shape {targets.shape}.")
  if not np.isfinite(targets).all():
    raise DataError("NaN or inf in the regression targets; clean or drop those sequences.")
  return targets.astype(np.float32)
