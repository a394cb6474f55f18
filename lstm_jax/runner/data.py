"""The runner's data: the sources a config names, normalised and split.

`split_data(config)` is the one entry: it loads `config.data` (`sources.load_source`), subsamples,
splits (a given held-out file, or a seeded random fraction), matches a held-out file's labels to
the training file's by class name, caps the held-out split (`config.eval.max_sequences`,
`max_tokens`), normalises every split by the training split's statistics, and records the data's
identity (sources, fingerprints, what was dropped, stripped or inferred) for the run's settings
and report.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from lstm_jax import sources
from lstm_jax.data import RaggedDataset
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.runner import config
from lstm_jax.store import StoredDataset


def standardize(train_ds: RaggedDataset, eval_ds: RaggedDataset):
  """Both splits' features scaled by the training split's per-feature mean and standard
  deviation (a constant feature is only centred). Returns (train, eval, the statistics)."""
  scaled, stats = _standardizer(train_ds)
  return scaled(train_ds), scaled(eval_ds), stats


def _standardizer(train_ds: RaggedDataset):
  """(the map that standardises a split by the training split's statistics, the statistics)."""
  if train_ds.is_tokens:
    raise ConfigError(
      "config.data.normalize='global' applies to feature inputs; this data is token ids. Set "
      "config.data.normalize='none'."
    )
  if isinstance(train_ds, StoredDataset):  # on disk: streamed, applied when batches gather
    mean, std = feature_statistics(train_ds)
    std = np.where(std > 0, std, 1.0)
    stats = dict(mean=[round(float(m), 6) for m in mean], std=[round(float(s), 6) for s in std])
    return (lambda ds: ds.standardized(mean, std)), stats
  mean = train_ds.values.astype(np.float64).mean(0)
  std = train_ds.values.astype(np.float64).std(0)
  std = np.where(std > 0, std, 1.0)

  def scaled(ds):
    values = ((ds.values - mean) / std).astype(np.float32)
    return dataclasses.replace(ds, values=values)

  stats = dict(mean=[round(float(m), 6) for m in mean], std=[round(float(s), 6) for s in std])
  return scaled, stats


NORMALIZATIONS = config.NORMALIZATIONS


def normalize(train_ds: RaggedDataset, eval_ds: RaggedDataset, kind: str):
  """(train, eval, the record for the data's identity) with the features normalised by `kind`:
    global              each feature by the training split's mean and standard deviation
                        (`standardize`)
    minmax              each feature to [0, 1] by the training split's minimum and maximum
    per_sequence        each sequence's features by its own mean and standard deviation
                        (z-normalisation, the usual time-series benchmark preprocessing)
    per_sequence_scale  the same, plus each feature's log standard deviation in the sequence as
                        extra features (the scale z-normalisation throws away)
  Statistics come from the training split only; the per-sequence kinds use each sequence's own,
  so nothing crosses the split. A constant feature is only centred."""
  apply, record = normalizer(train_ds, kind)
  return apply(train_ds), apply(eval_ds), record


def normalizer(train_ds: RaggedDataset, kind: str):
  """(the map `normalize` applies to each split, computed once from the training split, the
  record for the data's identity): for any number of held-out splits (eval, test)."""
  if kind == "global":
    scaled, stats = _standardizer(train_ds)
    return scaled, dict(kind=kind, **stats)
  if train_ds.is_tokens:
    raise ConfigError(
      f"config.data.normalize={kind!r} applies to feature inputs; this data is token ids. Set "
      f"config.data.normalize='none'."
    )
  if isinstance(train_ds, StoredDataset):
    raise ConfigError(
      f"config.data.normalize={kind!r} is not implemented for a store yet; use 'global' (applied "
      f"as batches are gathered) or normalise the data before writing the store."
    )
  if kind == "minmax":
    lo = train_ds.values.astype(np.float64).min(0)
    span = train_ds.values.astype(np.float64).max(0) - lo
    span = np.where(span > 0, span, 1.0)

    def scaled(ds):
      return dataclasses.replace(ds, values=((ds.values - lo) / span).astype(np.float32))

    stats = dict(min=[round(float(v), 6) for v in lo], span=[round(float(v), 6) for v in span])
    return scaled, dict(kind=kind, **stats)
  with_scale = kind == "per_sequence_scale"
  return (
    lambda ds: _per_sequence(ds, with_scale),
    dict(kind=kind, extra_features=train_ds.num_features if with_scale else 0),
  )


def _per_sequence(ds: RaggedDataset, with_scale: bool) -> RaggedDataset:
  x = ds.values.astype(np.float64)
  starts = np.concatenate([[0], np.cumsum(ds.lengths)[:-1]]).astype(np.int64)
  n = ds.lengths.astype(np.float64)[:, None]
  mean = np.add.reduceat(x, starts, axis=0) / n
  var = np.add.reduceat(np.square(x), starts, axis=0) / n - np.square(mean)
  std = np.sqrt(np.maximum(var, 0.0))
  which = np.repeat(np.arange(len(ds)), ds.lengths)
  scale = np.where(std > 1e-12, std, 1.0)
  values = (x - mean[which]) / scale[which]
  if with_scale:
    values = np.concatenate([values, np.log(scale)[which]], axis=1)
  return dataclasses.replace(ds, values=values.astype(np.float32))


def feature_statistics(dataset: RaggedDataset, block: int = 1 << 20) -> tuple:
  """Per-feature mean and standard deviation over every step, read `block` steps at a time in
  two passes (the mean, then the squared deviations from it), in float64."""
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


def split_data(cfg: ml_collections.ConfigDict, with_test: bool = False):
  """(train, eval, identity): the data, subsampled, split (given or random) and normalised by
  the training split's statistics. with_test: (train, eval, test, identity), test being
  config.data.test_path's data (None if unset), checked and normalised as eval is, kept
  apart: each row is scored on it once, at its end."""
  dataset, identity = sources.load_source(cfg.data)
  test_raw = None
  if with_test and cfg.data.test_path:
    test_raw, identity["test_source"] = sources.load_source(
      ml_collections.ConfigDict(dict(cfg.data.to_dict(), path=cfg.data.test_path, max_sequences=0)),
      key="data.test_path",
    )
  if cfg.data.max_sequences and len(dataset) > cfg.data.max_sequences:  # (byte sources did it)
    keep = sources.subsample_indices(len(dataset), cfg.data.max_sequences, cfg.data.split_seed)
    dataset = dataset.subset(keep, name=dataset.name)
    identity["subsampled_to"] = int(cfg.data.max_sequences)
  if test_raw is not None:
    test_raw = by_class_name(test_raw, identity, identity["test_source"], cfg.data.test_path)
  if cfg.data.eval_path:  # a given split: the held-out data from its own file or directory
    held_out, identity["eval_source"] = sources.load_source(
      ml_collections.ConfigDict(dict(cfg.data.to_dict(), path=cfg.data.eval_path, max_sequences=0)),
      key="data.eval_path",
    )
    held_out = by_class_name(held_out, identity, identity["eval_source"], cfg.data.eval_path)
    train_ds, eval_ds = given_split(dataset, held_out, cfg.data.eval_path)
    identity["split"] = f"given: {cfg.data.eval_path}"
  elif cfg.data.test_path and dataset.target_level == "sequence" and dataset.is_classification:
    # a validation split carved from the training file, class by class: what selects the model
    # that the test file scores (its classes in the same shares as the training file's)
    train_ds, eval_ds = stratified_split(dataset, cfg.data.eval_fraction, cfg.data.split_seed)
    identity["split"] = (
      f"validation: {cfg.data.eval_fraction:g} of each class held out (split_seed "
      f"{cfg.data.split_seed})"
    )
  else:
    train_ds, eval_ds = dataset.split(cfg.data.eval_fraction, seed=cfg.data.split_seed)
    identity["split"] = (
      f"random: {cfg.data.eval_fraction:g} held out (split_seed {cfg.data.split_seed})"
    )
  test_ds = None
  if test_raw is not None:
    test_ds = held_apart_split(train_ds, test_raw, cfg.data.test_path)
  kind = cfg.data.normalize
  if kind != "none":  # the training split's statistics, computed once, applied to every split
    apply, identity["normalized"] = normalizer(train_ds, kind)
    train_ds, eval_ds = apply(train_ds), apply(eval_ds)
    test_ds = apply(test_ds) if test_ds is not None else None
    if kind == "global":
      identity["standardized"] = {k: v for k, v in identity["normalized"].items() if k != "kind"}
  if cfg.eval.max_sequences and len(eval_ds) > cfg.eval.max_sequences:
    eval_ds = eval_ds.subset(np.arange(cfg.eval.max_sequences), name=eval_ds.name)
  if cfg.eval.max_tokens and eval_ds.num_steps > cfg.eval.max_tokens:  # whole sequences, >= 1
    keep = max(1, int(np.searchsorted(np.cumsum(eval_ds.lengths), cfg.eval.max_tokens, "right")))
    identity["eval_capped"] = dict(sequences=keep, of=len(eval_ds), max_tokens=cfg.eval.max_tokens)
    eval_ds = eval_ds.subset(np.arange(keep), name=eval_ds.name)
  identity.update(
    train_sequences=len(train_ds),
    train_steps=train_ds.num_steps,
    eval_sequences=len(eval_ds),
    eval_steps=eval_ds.num_steps,
    train_fingerprint=train_ds.fingerprint(),
    eval_fingerprint=eval_ds.fingerprint(),
  )
  if test_ds is not None:
    identity.update(
      test_sequences=len(test_ds),
      test_steps=test_ds.num_steps,
      test_fingerprint=test_ds.fingerprint(),
    )
  if with_test:
    return train_ds, eval_ds, test_ds, identity
  return train_ds, eval_ds, identity


def stratified_split(
  dataset: RaggedDataset, fraction: float, seed: int
) -> tuple[RaggedDataset, RaggedDataset]:
  """(train, validation) with round(fraction * n_c) of each class c's sequences held out, chosen
  by a generator seeded with `seed` (a class of one sequence stays in training)."""
  if not 0.0 < fraction < 1.0:
    raise ConfigError(f"config.data.eval_fraction must be in (0, 1), got {fraction}.")
  labels = np.asarray(dataset.sequence_targets(np.arange(len(dataset)))).reshape(-1)
  rng = np.random.default_rng(seed)
  held = []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    held.append(members[: min(len(members) - 1, int(round(fraction * len(members))))])
  held = np.sort(np.concatenate(held))
  if not len(held):
    raise DataError(
      f"config.data.eval_fraction={fraction} holds out no sequence of {len(dataset)}; raise it."
    )
  train = np.setdiff1d(np.arange(len(dataset)), held)
  return (
    dataset.subset(train, name=f"{dataset.name}:train"),
    dataset.subset(held, name=f"{dataset.name}:validation"),
  )


def by_class_name(
  held_out: RaggedDataset, train_identity: dict, held_identity: dict, path: str
) -> RaggedDataset:
  """A held-out file's labels in the training file's ids, matched by class name where the files
  name their classes (a `.ts` file's @classLabel line, an .npz's `class_names`): each file
  numbers its classes in its own order, and a subset or reordering of the names would
  otherwise score every sequence against another class. A class the training data lacks is
  an error naming it; the mapping is recorded in `held_identity["class_ids"]`."""
  mine, theirs = train_identity.get("classes"), held_identity.get("classes")
  if mine is None and theirs is None:
    return held_out
  if mine is None or theirs is None:
    named, unnamed = ("config.data.path", path) if theirs is None else (path, "config.data.path")
    raise DataError(
      f"{named} names its classes but {unnamed} does not, so labels cannot be matched by name; "
      f"give both as .ts files, or both as .npz with a class_names array (or neither)."
    )
  unknown = [c for c in theirs if c not in mine]
  if unknown:
    raise DataError(
      f"{path} has class(es) {unknown[:5]} that the training data ({mine[:10]}) lacks: the "
      f"model cannot predict them; drop those cases or add them to the training data."
    )
  ids = np.array([mine.index(c) for c in theirs], np.int64)
  held_identity["class_ids"] = {c: int(i) for c, i in zip(theirs, ids)}
  if np.array_equal(ids, np.arange(len(ids))) and len(theirs) == len(mine):
    return held_out
  if not dataclasses.is_dataclass(held_out) or type(held_out) is not RaggedDataset:
    raise DataError(f"{path}: classes matched by name need data in memory (a .ts or .npz file).")
  return dataclasses.replace(
    held_out, targets=ids[np.asarray(held_out.targets)], num_classes=len(mine)
  )


def held_apart_split(train: RaggedDataset, test: RaggedDataset, test_path: str) -> RaggedDataset:
  """The test split (`config.data.test_path`): the same kind of data as the training split, with
  its class count and vocabulary (a class or token the training data lacks is an error: the
  model could not predict it)."""
  test = given_split(train, test, test_path, key="test_path")[1]
  for key in ("num_classes", "vocab_size"):
    mine, theirs = getattr(train, key), getattr(test, key)
    if mine is not None and theirs is not None and theirs > mine:
      raise DataError(
        f"config.data.test_path {test_path} has {key} {theirs}, more than the training data's "
        f"{mine}: the model cannot predict ids it never saw; store {key}={theirs} with the "
        f"training data, or drop those sequences from the test split."
      )
    if mine is not None and theirs != mine and dataclasses.is_dataclass(test):
      test = dataclasses.replace(test, **{key: mine})
  return test


def given_split(
  train: RaggedDataset, held_out: RaggedDataset, eval_path: str, key: str = "eval_path"
) -> tuple[RaggedDataset, RaggedDataset]:
  """(train, eval) for a given split: checked to be the same kind of data, with one class
  count and vocabulary (the larger of the two, as inferred from each)."""
  kinds = {
    "token or feature inputs": (train.is_tokens, held_out.is_tokens),
    "features per step": (train.num_features, held_out.num_features),
    "label level (sequence or step)": (train.target_level, held_out.target_level),
    "classification or regression": (train.is_classification, held_out.is_classification),
  }
  for what, (a, b) in kinds.items():
    if a != b:
      raise DataError(
        f"config.data.{key} {eval_path} holds other data than config.data.path ({what}: "
        f"{b!r} there, {a!r} in the training data); give both in the same form."
      )
  shared = {}
  for key in ("num_classes", "vocab_size"):
    counts = [getattr(ds, key) for ds in (train, held_out)]
    if counts[0] is not None and counts[0] != counts[1]:
      shared[key] = max(counts)
  if shared:
    if not all(
      dataclasses.is_dataclass(ds) and type(ds) is RaggedDataset for ds in (train, held_out)
    ):
      raise DataError(
        f"config.data.{key} {eval_path} and config.data.path give different "
        f"{', '.join(shared)}; store the same num_classes and vocab_size with both."
      )
    train, held_out = (dataclasses.replace(ds, **shared) for ds in (train, held_out))
  return train, held_out
