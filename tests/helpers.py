"""The tests' shared helpers: small ragged datasets, exact comparisons, config overrides, the
environment for runner subprocesses and the smoke run, a user's own cell. Tests import them
from here (`from helpers import ...`); tests/conftest.py holds only pytest's hooks, fixtures and
the environment every test process starts with."""

import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax.data import RaggedDataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"  # the scripts tests run as subprocesses
# The XLA flags of every test process and subprocess: see tests/conftest.py.
TEST_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"


def ragged_features(lengths, num_features=3, seed=0, target_level="step") -> RaggedDataset:
  """Random float features with per-step (or per-sequence) 2-dim regression targets."""
  rng = np.random.default_rng(seed)
  lengths = np.asarray(lengths, np.int64)
  total = int(lengths.sum())
  values = rng.normal(size=(total, num_features)).astype(np.float32)
  n = total if target_level == "step" else len(lengths)
  targets = rng.normal(size=(n, 2)).astype(np.float32)
  return RaggedDataset(values, lengths, targets, target_level=target_level, name="random")


def identity_dataset(lengths, target_level="step") -> RaggedDataset:
  """values[:, 0] = sequence index, values[:, 1] = step within the sequence: every step unique."""
  lengths = np.asarray(lengths, np.int64)
  seq = np.repeat(np.arange(len(lengths)), lengths)
  step = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  values = np.stack([seq, step], axis=1).astype(np.float32)
  if target_level == "step":
    targets = (seq * 1000 + step).astype(np.int32)
    num_classes = int(targets.max()) + 1
  else:
    targets = np.arange(len(lengths), dtype=np.int32)
    num_classes = len(lengths)
  return RaggedDataset(
    values, lengths, targets, target_level=target_level, num_classes=num_classes, name="identity"
  )


def override(cfg, **changes):
  """`cfg` (a ConfigDict or a plain dict) with each dotted key ("model.hidden_size") set."""
  for key, value in changes.items():
    *path, last = key.split(".")
    node = cfg
    for part in path:
      node = node[part]
    node[last] = value
  return cfg


def max_rel_err(a, b) -> float:
  """max |a - b| / max |b| over a pytree: a relative error robust to entries near zero."""
  errs = jax.tree.map(
    lambda x, y: float(
      np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))
      / max(float(np.max(np.abs(np.asarray(y)))), 1e-30)
    ),
    a,
    b,
  )
  return max(jax.tree.leaves(errs))


def subprocess_env(devices: int | None = 1) -> dict:
  """The environment for a test's runner subprocess (smoke, resume, sharding runs): CPU, `devices`
  forced host devices (None: not forced), TEST_XLA_FLAGS, XLA's optimizations mostly off and the
  session's compilation cache (as Flax's example tests do). Those runs check behaviour and
  numbers between runs made the same way, not the speed or shape of the compiled code; the
  page-fault probe, which does, keeps XLA's defaults."""
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    JAX_NUMPY_RANK_PROMOTION="raise",
    JAX_DISABLE_MOST_OPTIMIZATIONS="1",
    JAX_COMPILATION_CACHE_DIR=os.environ["LSTM_JAX_TEST_CACHE"],
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  env["XLA_FLAGS"] = TEST_XLA_FLAGS
  if devices is not None and devices > 1:
    env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
  return env


def run_smoke(
  workdir, devices: int = 1, *extra: str, check: bool = True, calibrate: bool = False
) -> subprocess.CompletedProcess:
  """The runner's smoke preset through the real command line, in a subprocess (with `check`,
  asserting that it succeeds). The cost model's calibration (config.predict_costs) runs only
  with `calibrate`: in the one shared smoke run, whose report shows the predictions."""
  if not calibrate:
    extra = ("--config.predict_costs=False", *extra)
  env = subprocess_env(devices)
  proc = subprocess.run(
    [
      sys.executable,
      str(ROOT / "experiments" / "compare_strategies.py"),
      "--config",
      f"{ROOT / 'configs' / 'compare.py'}:smoke",
      "--workdir",
      str(workdir),
      *extra,
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=env,
  )
  assert proc.returncode == 0 or not check, proc.stderr[-3000:]
  return proc


def four_strategies(name: str):
  """(data, strategy) for a compile-count test of another front end or cell: 30 sequences of
  10 lengths under pad (1 shape), bucket (3), tbptt (1) or pack (1)."""
  from lstm_jax import batching

  ds = ragged_features([3, 9, 4, 17, 6, 11, 5, 2, 14, 8] * 3, num_features=3, seed=1)
  make = {
    "pad": lambda: batching.Pad(ds, batch_size=8),
    "bucket": lambda: batching.Bucket(ds, batch_size=8, boundaries=[6, 12, 18]),
    "tbptt": lambda: batching.TBPTT(ds, num_streams=4, chunk_length=6),
    "pack": lambda: batching.Pack(ds, batch_size=4, row_length=30),
  }
  return ds, make[name]()


class HalfCell(nn.RNNCellBase):
  """A user's cell: h = tanh(W x + U h + b) starting from (and reset to) h = 0.5, not zero, so
  a reset that restored zeros instead of the cell's initial carry would show."""

  features: int

  @nn.compact
  def __call__(self, carry, x):
    h = jnp.tanh(nn.Dense(self.features, name="i")(x) + nn.Dense(self.features, name="h")(carry))
    return h, h

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    del rng
    return jnp.full(input_shape[:-1] + (self.features,), 0.5, jnp.float32)

  @property
  def num_feature_axes(self) -> int:
    return 1
