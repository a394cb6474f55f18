"""Baselines anyone can recompute, on the runner's own held-out split.

For a byte-level language model, `byte_lm` measures in bits per byte, on the same held-out
sequences the strategies are evaluated on:

- unigram: the cross-entropy of the held-out bytes under the training split's byte frequencies
  (add-one smoothed), what a model that ignores context reaches;
- zlib -9, bz2 -9 and lzma (preset 9 extreme): 8 x compressed size / size of the held-out
  sequences concatenated;
- lzma primed: lzma given the training text first, i.e. compressed size of train + held-out
  minus that of train alone, which is what a compressor that has read the training data pays
  for the held-out bytes.

For classification, `classification` gives what a model that ignores its inputs reaches on
the held-out targets: the majority class of the training split (its accuracy) and the training
split's class frequencies, add-one smoothed (their cross-entropy, in nats: the loss to beat);
and `class_scores` says how a trained classifier did class by class (balanced accuracy, each
class's recall, the confusion matrix), which the runner reports for sequence-level labels.
`classic` runs 1-NN DTW and ROCKET (aeon, an optional extra) on the same split, for time-series
classification: what a recurrent model must beat to earn its cost.

All but `classic` from the Python standard library, deterministic, and independent of any
model. Their time must not grow with the corpus, so each side is a fixed-size sample: the
held-out split's first sequences up to `HELD_OUT_SAMPLE` bytes, the training split's up to
`TRAIN_SAMPLE` (whole sequences, in the split's order, itself a seeded random order of the
corpus). Smaller splits are
taken whole; when a sample is taken, the result says so (`sampled`) and the report names both
sizes.
"""

from __future__ import annotations

import bz2
import lzma
import time
import zlib
from typing import Any

import numpy as np

from lstm_jax.data import RaggedDataset

_LZMA: dict[str, Any] = dict(format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
HELD_OUT_SAMPLE = 1 << 20  # bytes of held-out text the baselines score (1 MiB)
TRAIN_SAMPLE = 8 << 20  # bytes of training text (unigram counts, lzma's priming): 8 MiB


def text_bytes(dataset: RaggedDataset) -> int:
  """Bytes of text a byte-level dataset holds: each sequence's steps plus its first byte."""
  return dataset.num_steps + len(dataset)


def sequence_bytes(dataset: RaggedDataset, limit: int | None = None) -> bytes:
  """A byte-level dataset's sequences, whole and concatenated: each sequence's inputs and its
  last target (the next-token layout holds every byte but the first as a target). With a
  `limit`, only the first sequences whose text fits in it (at least one)."""
  sizes = dataset.lengths + 1
  n = len(dataset)
  if limit is not None:
    n = max(1, int(np.searchsorted(np.cumsum(sizes), limit, side="right")))
  parts = []
  for i in range(n):
    x, y = dataset.sequence(i)
    parts.append(np.asarray(x, np.uint8).tobytes() + np.asarray(y[-1:], np.uint8).tobytes())
  return b"".join(parts)


def byte_lm(train: RaggedDataset, held_out: RaggedDataset) -> dict[str, Any]:
  """The baselines above, in bits per byte of the held-out sample."""
  train_text = sequence_bytes(train, TRAIN_SAMPLE)
  text = sequence_bytes(held_out, HELD_OUT_SAMPLE)
  counts = np.bincount(np.frombuffer(train_text, np.uint8), minlength=256) + 1.0
  log_p = np.log2(counts / counts.sum())
  held = np.frombuffer(text, np.uint8)
  per_byte = 8.0 / len(text)
  primed = len(lzma.compress(train_text + text, **_LZMA)) - len(lzma.compress(train_text, **_LZMA))
  out: dict[str, Any] = dict(
    unigram=float(-log_p[held].mean()),
    zlib=per_byte * len(zlib.compress(text, 9)),
    bz2=per_byte * len(bz2.compress(text, 9)),
    lzma=per_byte * len(lzma.compress(text, **_LZMA)),
    lzma_primed=per_byte * primed,
    held_out_bytes=len(text),
  )
  if len(text) < text_bytes(held_out) or len(train_text) < text_bytes(train):
    out["sampled"] = dict(
      held_out_of=text_bytes(held_out), train_bytes=len(train_text), train_of=text_bytes(train)
    )
  return out


def class_targets(dataset: RaggedDataset, limit: int) -> tuple[np.ndarray, int]:
  """The class targets of the dataset's first sequences, whole, up to `limit` targets (at least
  one sequence): one per sequence, or one per step for step-level labels (next-token targets
  too, derived as a store derives them). Read through `gather`, so an on-disk store is read
  only that far. Returns (the targets, how many the whole dataset holds)."""
  seq_level = dataset.target_level == "sequence"
  sizes = np.ones(len(dataset), np.int64) if seq_level else np.asarray(dataset.lengths, np.int64)
  total = int(sizes.sum())
  n = max(1, int(np.searchsorted(np.cumsum(sizes), limit, side="right")))
  seq = np.arange(min(n, len(dataset)), dtype=np.int64)
  if seq_level:
    return np.asarray(dataset.sequence_targets(seq)).reshape(-1), total
  _, targets = dataset.gather(seq, np.zeros(len(seq), np.int64), dataset.lengths[seq])
  return np.asarray(targets).reshape(-1), total


def classification(train: RaggedDataset, held_out: RaggedDataset) -> dict:
  """The majority-class accuracy and the class priors' cross-entropy (nats) on the held-out
  targets, both from the training split's class counts (one target per sequence, or per step
  for step-level labels, as the loss weighs them; any number of classes, next-token targets
  included). Fixed-size samples as for `byte_lm`: `TRAIN_SAMPLE` training targets,
  `HELD_OUT_SAMPLE` held-out ones, so the time does not grow with the corpus."""
  n = int(train.num_classes or 0)
  train_targets, train_total = class_targets(train, TRAIN_SAMPLE)
  held, held_total = class_targets(held_out, HELD_OUT_SAMPLE)
  counts = np.bincount(train_targets.astype(np.int64), minlength=n)[:n].astype(np.float64)
  majority = int(np.argmax(counts))
  prior = (counts + 1.0) / (counts.sum() + n)
  out = dict(
    kind="classification",
    classes=n,
    majority_class=majority,
    majority_accuracy=float(np.mean(held == majority)),
    prior_loss=float(-np.mean(np.log(prior[np.clip(held, 0, n - 1)]))),
    held_out_targets=int(held.size),
  )
  if held.size < held_total or train_targets.size < train_total:
    out["sampled"] = dict(
      held_out_of=held_total, train_targets=int(train_targets.size), train_of=train_total
    )
  return out


def class_scores(targets, predicted, num_classes: int) -> dict:
  """How a classifier did class by class on held-out targets (one per sequence, or one per
  step): accuracy, balanced accuracy (the mean of the recalls of the classes present, so
  always answering the majority class scores 1 / classes present, not its share), each class's
  recall (None for a class absent from the targets) and the confusion matrix,
  counts[true][predicted]."""
  targets, predicted = np.asarray(targets).reshape(-1), np.asarray(predicted).reshape(-1)
  if targets.shape != predicted.shape:
    raise ValueError(f"{targets.size} targets against {predicted.size} predictions")
  n = int(num_classes)
  confusion = np.zeros((n, n), np.int64)
  np.add.at(confusion, (targets, predicted), 1)
  return scores_from_confusion(confusion)


def scores_from_confusion(confusion) -> dict:
  """`class_scores` from a confusion matrix counts[true][predicted] (one accumulated batch by
  batch, say)."""
  confusion = np.asarray(confusion, np.int64)
  n = confusion.shape[0]
  support = confusion.sum(axis=1)
  recall = [float(confusion[c, c] / support[c]) if support[c] else None for c in range(n)]
  present = [r for r in recall if r is not None]
  return dict(
    accuracy=float(np.trace(confusion) / max(int(support.sum()), 1)),
    balanced_accuracy=float(np.mean(present)) if present else None,
    recall=recall,
    support=support.tolist(),
    confusion=confusion.tolist(),
  )


CLASSIC_INSTALL = "pip install 'lstm_jax[baselines]' (aeon)"


def classic(
  train: RaggedDataset,
  test: RaggedDataset,
  *,
  dtw_window: float | None = None,
  rocket_kernels: int = 10_000,
  seed: int = 0,
) -> dict:
  """The time-series classification baselines a recurrent model must beat, on the same split:
  1-nearest-neighbour DTW (unequal lengths as they are; `dtw_window`: the Sakoe-Chiba band as
  a fraction of the length, None for the full window) and ROCKET (`rocket_kernels` random
  convolution kernels and a ridge classifier; it takes equal lengths, so every series is
  zero-padded at its end to the longest), both from aeon (an optional extra). Each series'
  features are as the rows see them (normalised alike). Sequence-level class labels and
  feature inputs only.

  Returns:
    {"dtw": {accuracy, seconds, window}, "rocket": {accuracy, seconds, kernels, input},
    "train_sequences", "test_sequences"}, or {"skipped": why} without aeon.
  """
  try:
    from aeon.classification.convolution_based import RocketClassifier  # noqa: PLC0415
    from aeon.classification.distance_based import (  # noqa: PLC0415
      KNeighborsTimeSeriesClassifier,
    )
  except ImportError:
    return dict(skipped=f"aeon is not installed: {CLASSIC_INSTALL}")
  if train.is_tokens or train.target_level != "sequence" or not train.is_classification:
    return dict(skipped="classic baselines take feature inputs with sequence-level classes")

  def series(ds):  # (channels, time) each, as aeon takes unequal lengths
    xs = [np.asarray(ds.sequence(i)[0], np.float64).T for i in range(len(ds))]
    return xs, np.asarray(ds.sequence_targets(np.arange(len(ds)))).reshape(-1)

  (x_train, y_train), (x_test, y_test) = series(train), series(test)
  out: dict[str, Any] = dict(train_sequences=len(x_train), test_sequences=len(x_test))
  t0 = time.perf_counter()
  params = {"window": dtw_window} if dtw_window is not None else None
  knn = KNeighborsTimeSeriesClassifier(distance="dtw", distance_params=params, n_neighbors=1)
  knn.fit(x_train, y_train)
  out["dtw"] = dict(
    accuracy=float(np.mean(knn.predict(x_test) == y_test)),
    seconds=time.perf_counter() - t0,
    window=dtw_window,
  )
  longest = max(x.shape[1] for x in x_train + x_test)

  def padded(xs):
    return np.stack([np.pad(x, ((0, 0), (0, longest - x.shape[1]))) for x in xs])

  t0 = time.perf_counter()
  rocket = RocketClassifier(n_kernels=rocket_kernels, random_state=seed)
  rocket.fit(padded(x_train), y_train)
  out["rocket"] = dict(
    accuracy=float(np.mean(rocket.predict(padded(x_test)) == y_test)),
    seconds=time.perf_counter() - t0,
    kernels=rocket_kernels,
    input=f"zero-padded at the end to {longest} steps",
  )
  return out
