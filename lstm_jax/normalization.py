"""Feature normalisations for ragged float data, fitted on the training split only.

    from lstm_jax import fit_normalizer, load_ts
    train, identity = load_ts("Train.ts")
    test, _ = load_ts("Test.ts", classes=identity["classes"])  # labels numbered by name
    norm = fit_normalizer(train, "global")      # the training split's statistics, once
    train, test = norm(train), norm(test)       # the same map on every split

The kinds (NORMALIZATIONS):
  none                the data as it is
  global              each feature by the training split's mean and standard deviation
  minmax              each feature to [0, 1] by the training split's minimum and maximum
  per_sequence        each sequence's features by its own mean and standard deviation
                      (z-normalisation, the usual time-series benchmark preprocessing)
  per_sequence_scale  the same, plus each feature's log standard deviation in the sequence as
                      extra features (the scale z-normalisation throws away)
The per-sequence kinds use each sequence's own statistics, so nothing crosses the split. A
constant feature is only centred. On a store (`open_store`) "global" is computed in two streamed
passes and applied as batches gather; the other kinds need the values in memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from lstm_jax.data import RaggedDataset
from lstm_jax.errors import ConfigError
from lstm_jax.store import StoredDataset

NORMALIZATIONS = ("none", "global", "per_sequence", "per_sequence_scale", "minmax")


@dataclasses.dataclass(frozen=True)
class Normalizer:
  """A normalisation fitted on a training split: `norm(dataset)` applies it to any split.

  Args (fields):
    kind: one of NORMALIZATIONS.
    record: what it was fitted to, JSON-ready (mean and std for global, min and span for
      minmax, the extra feature count for the per-sequence kinds), for a run's record.
    apply: the map itself (a RaggedDataset to a RaggedDataset).
  """

  kind: str
  record: dict
  apply: Callable[[RaggedDataset], RaggedDataset] = dataclasses.field(repr=False)

  def __call__(self, dataset: RaggedDataset) -> RaggedDataset:
    return self.apply(dataset)


def fit_normalizer(train: RaggedDataset, kind: str) -> Normalizer:
  """The normalisation `kind` fitted on the training split.

  Args:
    train: the training split (in memory, or a store for "global").
    kind: one of NORMALIZATIONS ("none", "global", "per_sequence", "per_sequence_scale",
      "minmax"; the module docstring says what each does).

  Returns:
    A `Normalizer`: `norm(split)` normalises any split by what was fitted; `norm.record` the
    statistics. ConfigError: an unknown kind, token data, or a kind a store cannot take.
  """
  if kind not in NORMALIZATIONS:
    raise ConfigError(f"normalize must be one of {NORMALIZATIONS}, got {kind!r}.")
  if kind == "none":
    return Normalizer(kind, dict(kind=kind), lambda ds: ds)
  if train.is_tokens:
    raise ConfigError(
      f"normalize={kind!r} applies to feature inputs; this data is token ids. Use normalize='none'."
    )
  if kind == "global":
    return _global(train)
  if isinstance(train, StoredDataset):  # its values are read only as batches gather
    raise ConfigError(
      f"normalize={kind!r} is not implemented for a store yet; use 'global' (applied as "
      f"batches are gathered) or normalise the data before writing the store."
    )
  if kind == "minmax":
    lo = train.values.astype(np.float64).min(0)
    span = train.values.astype(np.float64).max(0) - lo
    span = np.where(span > 0, span, 1.0)

    def scaled(ds):
      return dataclasses.replace(ds, values=((ds.values - lo) / span).astype(np.float32))

    return Normalizer(kind, dict(kind=kind, min=_rounded(lo), span=_rounded(span)), scaled)
  with_scale = kind == "per_sequence_scale"
  return Normalizer(
    kind,
    dict(kind=kind, extra_features=train.num_features if with_scale else 0),
    lambda ds: per_sequence(ds, with_scale=with_scale),
  )


def normalize(train: RaggedDataset, *held_out: RaggedDataset, kind: str) -> tuple:
  """Splits normalised by `kind`, fitted on the training split alone (`fit_normalizer`).

  Args:
    train: the training split, whose statistics are used.
    *held_out: any further splits (validation, test), normalised by the same map.
    kind: one of NORMALIZATIONS.

  Returns:
    (train, *held_out), normalised.
  """
  norm = fit_normalizer(train, kind)
  return tuple(norm(ds) for ds in (train, *held_out))


def _global(train: RaggedDataset) -> Normalizer:
  if isinstance(train, StoredDataset):  # streamed statistics, applied as batches gather
    mean, std = feature_statistics(train)
    std = np.where(std > 0, std, 1.0)
    record = dict(kind="global", mean=_rounded(mean), std=_rounded(std))
    return Normalizer("global", record, lambda ds: ds.standardized(mean, std))  # type: ignore[attr-defined]
  mean = train.values.astype(np.float64).mean(0)
  std = train.values.astype(np.float64).std(0)
  std = np.where(std > 0, std, 1.0)

  def scaled(ds):
    return dataclasses.replace(ds, values=((ds.values - mean) / std).astype(np.float32))

  return Normalizer("global", dict(kind="global", mean=_rounded(mean), std=_rounded(std)), scaled)


def _rounded(a) -> list[float]:
  return [round(float(v), 6) for v in a]


def per_sequence(dataset: RaggedDataset, *, with_scale: bool = False) -> RaggedDataset:
  """Each sequence's features at mean 0 and standard deviation 1 by its own statistics (float64
  sums, a constant feature only centred); with_scale: each feature's log standard deviation in
  the sequence appended as extra features, the same at every step."""
  x = dataset.values.astype(np.float64)
  starts = np.concatenate([[0], np.cumsum(dataset.lengths)[:-1]]).astype(np.int64)
  n = dataset.lengths.astype(np.float64)[:, None]
  mean = np.add.reduceat(x, starts, axis=0) / n
  var = np.add.reduceat(np.square(x), starts, axis=0) / n - np.square(mean)
  std = np.sqrt(np.maximum(var, 0.0))
  which = np.repeat(np.arange(len(dataset)), dataset.lengths)
  scale = np.where(std > 1e-12, std, 1.0)
  values = (x - mean[which]) / scale[which]
  if with_scale:
    values = np.concatenate([values, np.log(scale)[which]], axis=1)
  return dataclasses.replace(dataset, values=values.astype(np.float32))


def feature_statistics(dataset: RaggedDataset, block: int = 1 << 20) -> tuple:
  """Per-feature mean and standard deviation over every step, read `block` steps at a time in
  two passes (the mean, then the squared deviations from it), in float64: a store's statistics
  in bounded memory."""
  ends = np.cumsum(dataset.lengths)
  cuts = np.searchsorted(ends, np.arange(block, int(ends[-1]), block))
  groups = np.split(np.arange(len(dataset)), np.unique(cuts) + 1)

  def blocks():
    for g in groups:
      if len(g):
        x, _ = dataset.gather(g, np.zeros(len(g), np.int64), dataset.lengths[g])
        yield np.asarray(x, np.float64)

  n = dataset.num_steps
  mean = sum(x.sum(0) for x in blocks()) / n
  var = sum(np.square(x - mean).sum(0) for x in blocks()) / n
  return mean, np.sqrt(var)
