"""Baselines (lstm_jax.baselines): the byte-level ones recomputed here from the standard
library, on the bytes the runner evaluates; the classification ones by hand; and what the
report says about them."""

import bz2
import collections
import lzma
import math
import zlib

import numpy as np
import pytest

from lstm_jax import baselines
from lstm_jax.data import next_token_dataset
from lstm_jax.runner import report


def _bytes_dataset(chunks):
  return next_token_dataset([np.frombuffer(c, np.uint8) for c in chunks], vocab_size=256)


TRAIN = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n".encode() for i in range(60)]
HELD = [f"def g{i}(y):\n    return y * {i} - {i % 5}\n".encode() for i in range(12)]


def test_every_baseline_equals_its_direct_recomputation():
  got = baselines.byte_lm(_bytes_dataset(TRAIN), _bytes_dataset(HELD))
  train, text = b"".join(TRAIN), b"".join(HELD)
  assert baselines.sequence_bytes(_bytes_dataset(HELD)) == text  # the whole sequences

  def bits(n):
    return 8 * n / len(text)

  xz = dict(format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
  assert got["zlib"] == pytest.approx(bits(len(zlib.compress(text, 9))))
  assert got["bz2"] == pytest.approx(bits(len(bz2.compress(text, 9))))
  assert got["lzma"] == pytest.approx(bits(len(lzma.compress(text, **xz))))
  primed = len(lzma.compress(train + text, **xz)) - len(lzma.compress(train, **xz))
  assert got["lzma_primed"] == pytest.approx(bits(primed))
  counts = collections.Counter(train)
  total = len(train) + 256  # add-one smoothing over the 256 byte values
  unigram = -sum(math.log2((counts[b] + 1) / total) for b in text) / len(text)
  assert got["unigram"] == pytest.approx(unigram)
  assert got["held_out_bytes"] == len(text)
  # text much like the training text: having read it makes lzma far cheaper
  assert got["lzma_primed"] < 0.6 * got["lzma"]
  assert "sampled" not in got


def test_a_large_corpus_is_scored_on_fixed_size_samples(monkeypatch):
  """The baselines read at most HELD_OUT_SAMPLE / TRAIN_SAMPLE bytes, whole sequences from the
  front of each split, so their time does not grow with the corpus; the result says so."""
  monkeypatch.setattr(baselines, "HELD_OUT_SAMPLE", 200)
  monkeypatch.setattr(baselines, "TRAIN_SAMPLE", 700)
  got = baselines.byte_lm(_bytes_dataset(TRAIN), _bytes_dataset(HELD))
  sizes = np.cumsum([len(c) for c in HELD])
  text = b"".join(HELD[: int(np.searchsorted(sizes, 200, side="right"))])
  train = b"".join(TRAIN[: int(np.searchsorted(np.cumsum([len(c) for c in TRAIN]), 700, "right"))])
  assert got["held_out_bytes"] == len(text) <= 200 and len(train) <= 700
  xz = dict(format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
  assert got["zlib"] == pytest.approx(8 * len(zlib.compress(text, 9)) / len(text))
  primed = len(lzma.compress(train + text, **xz)) - len(lzma.compress(train, **xz))
  assert got["lzma_primed"] == pytest.approx(8 * primed / len(text))
  assert got["sampled"] == dict(
    held_out_of=len(b"".join(HELD)), train_bytes=len(train), train_of=len(b"".join(TRAIN))
  )
  line = report.baseline_lines(got)[0]
  assert f"a sample of {len(text):,} of the {len(b''.join(HELD)):,} held-out bytes" in line


def test_report_sets_the_best_row_against_the_baselines():
  b = dict(unigram=4.4, zlib=2.35, bz2=2.07, lzma=2.16, lzma_primed=1.27, held_out_bytes=122009)
  assert "122,009 held-out bytes" in baselines_text(b) and "bz2 -9 2.070" in baselines_text(b)
  rows = [
    dict(
      strategy="tbptt",
      eval_metric=2.10,
      metric="bits_per_byte",
      eval_loss=1.456,
      tokens_per_second=1.0,
      padding_fraction=0.0,
      compiles=dict(train=1, eval=1),
      wall_seconds=1.0,
      compile_seconds=0.1,
    )
  ]
  text = "\n".join(report.reading(rows, b))
  assert (
    "the best row, tbptt, ends at 2.100 bits per byte: better than byte unigram (training "
    "frequencies), zlib -9, lzma -9e; not yet as good as bz2 -9 (2.070), lzma primed with the "
    "training text (1.270)."
  ) in text


def baselines_text(b):
  return "\n".join(report.baseline_lines(b))


def test_classification_baselines_and_the_majority_class_warning():
  """A classification report has a majority-class and a class-prior baseline, and a
  row that ends at the majority class's accuracy is called out (it learnt only the counts)."""
  import math

  from lstm_jax.data import RaggedDataset
  from lstm_jax.runner import report

  def sequences(labels):
    n = len(labels)
    values = np.zeros((3 * n, 2), np.float32)
    return RaggedDataset(
      values, np.full(n, 3), np.array(labels), target_level="sequence", num_classes=3
    )

  got = baselines.classification(sequences([0, 0, 0, 1, 1, 2]), sequences([0, 1, 1, 1]))
  assert got["majority_class"] == 0 and got["majority_accuracy"] == 0.25
  prior = np.array([4, 3, 2]) / 9  # add-one smoothed training counts
  want = -(math.log(prior[0]) + 3 * math.log(prior[1])) / 4
  assert abs(got["prior_loss"] - want) < 1e-12 and got["held_out_targets"] == 4
  rows = [
    dict(strategy="pad", metric="accuracy", eval_metric=0.25),
    dict(strategy="bucket", metric="accuracy", eval_metric=0.75),
  ]
  lines = report.class_baseline_lines(rows, got)
  assert "majority class (0) has accuracy 0.250" in lines[0]
  assert lines[2].startswith("**Warning**: pad ended at the majority-class baseline")
  assert len(report.class_baseline_lines(rows[1:], got)) == 2  # no warning for bucket alone


def test_class_scores_by_hand():
  """Balanced accuracy, recall per class and the confusion matrix, counted by hand:
  true 0,0,0,1,1,2 against predicted 0,0,1,1,1,0, four classes (class 3 never occurs)."""
  got = baselines.class_scores([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 0], 4)
  assert got["confusion"] == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
  assert got["support"] == [3, 2, 1, 0]
  assert got["recall"] == [2 / 3, 1.0, 0.0, None]
  assert got["accuracy"] == 4 / 6
  assert got["balanced_accuracy"] == (2 / 3 + 1.0 + 0.0) / 3
  # always the majority class: accuracy its share, balanced accuracy 1 / classes present
  majority = baselines.class_scores([0, 0, 0, 1, 1, 2], [0] * 6, 4)
  assert majority["accuracy"] == 0.5 and majority["balanced_accuracy"] == 1 / 3
  with pytest.raises(ValueError, match="6 targets against 5 predictions"):
    baselines.class_scores([0] * 6, [0] * 5, 2)


def _two_shapes(n=24, seed=0):
  """Rising against falling series of 8 to 30 steps, two features: any classifier of shapes
  tells them apart."""
  from lstm_jax.data import RaggedDataset

  rng = np.random.default_rng(seed)
  xs, ys = [], []
  for i in range(n):
    t = int(rng.integers(8, 31))
    ramp = np.linspace(0, 1, t) * (1 if i % 2 else -1)
    xs.append(np.stack([ramp, ramp**2], axis=1) + rng.normal(scale=0.05, size=(t, 2)))
    ys.append(i % 2)
  lengths = np.array([len(x) for x in xs])
  return RaggedDataset(
    np.concatenate(xs).astype(np.float32),
    lengths,
    np.array(ys),
    target_level="sequence",
    num_classes=2,
    name="shapes",
  )


def test_classic_baselines_run_dtw_and_rocket_on_the_same_split():
  """1-NN DTW on unequal lengths and ROCKET on zero-padded series (aeon), with their accuracy,
  seconds and settings; skipped with a reason (not an error) without aeon."""
  pytest.importorskip("aeon.classification", reason="optional: pip install 'lstm_jax[baselines]'")
  train, test = _two_shapes(24, seed=0), _two_shapes(12, seed=1)
  out = baselines.classic(train, test, dtw_window=0.2, rocket_kernels=200, seed=0)
  assert out["train_sequences"] == 24 and out["test_sequences"] == 12
  assert out["dtw"]["accuracy"] == 1.0 and out["dtw"]["window"] == 0.2
  assert out["rocket"]["accuracy"] >= 0.9 and out["rocket"]["kernels"] == 200
  assert out["rocket"]["input"] == "zero-padded at the end to 30 steps"
  assert out["dtw"]["seconds"] > 0 and out["rocket"]["seconds"] > 0


def test_classic_baselines_say_why_they_are_skipped(monkeypatch):
  import sys

  from lstm_jax.runner import report

  monkeypatch.setitem(sys.modules, "aeon.classification.convolution_based", None)
  out = baselines.classic(_two_shapes(), _two_shapes(seed=1))
  assert out == {"skipped": f"aeon is not installed: {baselines.CLASSIC_INSTALL}"}
  (line, _) = report.classic_baseline_lines([], out)
  assert line.startswith("*Classic baselines* (1-NN DTW, ROCKET): skipped (aeon is not installed")
  classic = dict(
    dtw=dict(accuracy=0.95, seconds=5.0, window=None),
    rocket=dict(accuracy=0.97, seconds=16.0, kernels=10_000, input="zero-padded"),
    train_sequences=216,
    test_sequences=370,
    split="test",
  )
  rows = [dict(strategy="pad", test_metric=0.962), dict(strategy="bucket", test_metric=0.973)]
  text = " ".join(report.classic_baseline_lines(rows, classic))
  assert "1-NN DTW (full window) accuracy **0.950**" in text
  assert "Rows above DTW: pad, bucket; above ROCKET: bucket (test accuracy" in text
