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
from lstm_jax.normalization import fit_normalizer


def normalizer(train_ds: RaggedDataset, kind: str):
  """(the map config.data.normalize applies to each split, fitted once on the training split,
  the record for the data's identity): `lstm_jax.normalization.fit_normalizer`, its errors naming
  the config key."""
  try:
    norm = fit_normalizer(train_ds, kind)
  except ConfigError as e:
    said = str(e).replace("Use normalize=", "Set config.data.normalize=")
    raise ConfigError(f"config.data.{said}") from None
  return norm.apply, norm.record


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
    budget = int(cfg.eval.max_tokens)
    kept = max(1, int(np.searchsorted(np.cumsum(eval_ds.lengths), budget, "right")))
    identity["eval_capped"] = dict(sequences=kept, of=len(eval_ds), max_tokens=cfg.eval.max_tokens)
    eval_ds = eval_ds.subset(np.arange(kept), name=eval_ds.name)
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
  per_class = []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    per_class.append(members[: min(len(members) - 1, int(round(fraction * len(members))))])
  held = np.sort(np.concatenate(per_class))
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
  held_out, held_identity["class_ids"] = sources.relabel_by_name(held_out, mine, theirs, path)
  return held_out


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
