"""Synthetic tasks with a known answer, where a wrong mask shows up in the metric.

- `adding_problem`: each step has (value, marker); exactly two steps are marked; the target, read
  at the sequence's last real step, is the sum of the two marked values (regression). Predicting
  the mean (1.0) scores MSE = 1/6, the trivial baseline. markers="halves" with one fixed length T
  is the published form (one marker in each half of the sequence, as in Hochreiter &
  Schmidhuber 1997's variant used by Le et al. 2015 and Arjovsky et al. 2016): the first marked
  value must be held for T/2 steps or more.
- `running_parity`: each step has a bit; the target at step t is the parity of bits 0..t
  (per-step classification, 2 classes). Guessing scores 50%.

Lengths come from `sample_lengths`: uniform, log-normal (clipped) or an explicit list.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from lstm_jax.data import RaggedDataset
from lstm_jax.errors import ConfigError

ADDING_BASELINE_MSE = 1.0 / 6.0  # Var(U1 + U2) for U ~ Uniform(0, 1): the loss of predicting 1.0


@dataclasses.dataclass(frozen=True)
class LengthDistribution:
  """How sequence lengths are drawn.

  kind: "uniform" (integers in [min_length, max_length]), "lognormal" (exp(N(log median,
  sigma)) rounded and clipped to [min_length, max_length]), or "list" (cycled through `values`).
  """

  kind: str = "uniform"
  min_length: int = 1
  max_length: int = 64
  median: float = 32.0
  sigma: float = 1.0
  values: tuple[int, ...] = ()

  def __post_init__(self):
    if self.kind not in ("uniform", "lognormal", "list"):
      raise ConfigError(
        f"unknown length distribution {self.kind!r}; use 'uniform', 'lognormal' or 'list'."
      )
    if self.kind == "list":
      if not self.values or min(self.values) < 1:
        raise ConfigError(f"a 'list' length distribution needs lengths >= 1, got {self.values!r}.")
    elif not 1 <= self.min_length <= self.max_length:
      raise ConfigError(
        f"need 1 <= min_length <= max_length, got {self.min_length}, {self.max_length}."
      )


def sample_lengths(dist: LengthDistribution, n: int, rng: np.random.Generator) -> np.ndarray:
  """<int64>[n] lengths drawn from `dist`."""
  if dist.kind == "uniform":
    return rng.integers(dist.min_length, dist.max_length + 1, size=n).astype(np.int64)
  if dist.kind == "lognormal":
    raw = np.exp(rng.normal(np.log(dist.median), dist.sigma, size=n))
    return np.clip(np.round(raw), dist.min_length, dist.max_length).astype(np.int64)
  return np.resize(np.asarray(dist.values, dtype=np.int64), n)


ADDING_MARKERS = ("anywhere", "halves")


def adding_problem(
  num_sequences: int,
  lengths: LengthDistribution | Sequence[int],
  seed: int = 0,
  markers: str = "anywhere",
) -> RaggedDataset:
  """The adding problem: values [L, 2] = (uniform value, marker); the target is the sum of the
  two marked values.

  markers: "anywhere" (two distinct steps, uniformly) or "halves" (one uniformly in the first
    floor(L/2) steps, one uniformly in the rest: the published form)."""
  if markers not in ADDING_MARKERS:
    raise ConfigError(f"unknown adding-problem markers {markers!r}; use one of {ADDING_MARKERS}.")
  rng = np.random.default_rng(seed)
  lens = _lengths(lengths, num_sequences, rng)
  if (lens < 2).any():
    raise ConfigError("the adding problem needs lengths >= 2 (two marked steps); raise min_length.")
  total = int(lens.sum())
  values = np.zeros((total, 2), np.float32)
  values[:, 0] = rng.uniform(0.0, 1.0, size=total)
  starts = np.cumsum(lens) - lens
  if markers == "anywhere":
    # Two distinct positions: the first uniformly, the second uniformly among the rest.
    first = (rng.uniform(size=num_sequences) * lens).astype(np.int64)
    second = (rng.uniform(size=num_sequences) * (lens - 1)).astype(np.int64)
    second = second + (second >= first)
  else:
    half = lens // 2
    first = (rng.uniform(size=num_sequences) * half).astype(np.int64)
    second = half + (rng.uniform(size=num_sequences) * (lens - half)).astype(np.int64)
  values[starts + first, 1] = 1.0
  values[starts + second, 1] = 1.0
  targets = values[starts + first, 0] + values[starts + second, 0]
  return RaggedDataset(
    values,
    lens,
    targets[:, None].astype(np.float32),
    target_level="sequence",
    name=f"adding(n={num_sequences},seed={seed}"
    + (f",markers={markers})" if markers != "anywhere" else ")"),
  )


def running_parity(
  num_sequences: int, lengths: LengthDistribution | Sequence[int], seed: int = 0
) -> RaggedDataset:
  """Running parity: values [L, 1] bits; target at step t = XOR of bits 0..t (2 classes)."""
  rng = np.random.default_rng(seed)
  lens = _lengths(lengths, num_sequences, rng)
  bits = rng.integers(0, 2, size=int(lens.sum())).astype(np.int64)
  starts = np.cumsum(lens) - lens
  csum = np.cumsum(bits)
  before = np.repeat(csum[starts] - bits[starts], lens)  # ones before each sequence's start
  targets = ((csum - before) % 2).astype(np.int32)
  return RaggedDataset(
    bits[:, None].astype(np.float32),
    lens,
    targets,
    target_level="step",
    num_classes=2,
    name=f"parity(n={num_sequences},seed={seed})",
  )


def _lengths(lengths, n: int, rng: np.random.Generator) -> np.ndarray:
  if isinstance(lengths, LengthDistribution):
    return sample_lengths(lengths, n, rng)
  return sample_lengths(
    LengthDistribution(kind="list", values=tuple(int(x) for x in lengths)), n, rng
  )
