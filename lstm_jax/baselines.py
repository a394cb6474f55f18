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

All from the Python standard library, deterministic, and independent of any model.
"""

from __future__ import annotations

import bz2
import lzma
import zlib

import numpy as np

from lstm_jax.data import RaggedDataset

_LZMA = dict(format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)


def sequence_bytes(dataset: RaggedDataset) -> bytes:
  """A byte-level dataset's sequences, whole and concatenated: each sequence's inputs and its
  last target (the next-token layout holds every byte but the first as a target)."""
  parts = []
  for i in range(len(dataset)):
    x, y = dataset.sequence(i)
    parts.append(np.asarray(x, np.uint8).tobytes() + np.asarray(y[-1:], np.uint8).tobytes())
  return b"".join(parts)


def byte_lm(train: RaggedDataset, held_out: RaggedDataset) -> dict[str, float]:
  """The baselines above, in bits per byte of the held-out sequences."""
  train_text, text = sequence_bytes(train), sequence_bytes(held_out)
  counts = np.bincount(np.frombuffer(train_text, np.uint8), minlength=256) + 1.0
  log_p = np.log2(counts / counts.sum())
  held = np.frombuffer(text, np.uint8)
  per_byte = 8.0 / len(text)
  primed = len(lzma.compress(train_text + text, **_LZMA)) - len(lzma.compress(train_text, **_LZMA))
  return dict(
    unigram=float(-log_p[held].mean()),
    zlib=per_byte * len(zlib.compress(text, 9)),
    bz2=per_byte * len(bz2.compress(text, 9)),
    lzma=per_byte * len(lzma.compress(text, **_LZMA)),
    lzma_primed=per_byte * primed,
    held_out_bytes=len(text),
  )
