"""Normalisations (lstm_jax.normalization): statistics from the training split only, the same map on
every split; the per-sequence kinds use each sequence's own statistics; a store's global
statistics are streamed."""

import numpy as np
import pytest

from helpers import ragged_features
from lstm_jax import fit_normalizer, next_token_dataset, normalize
from lstm_jax.data import RaggedDataset
from lstm_jax.errors import ConfigError


def _data(n, rng):
  lengths = rng.integers(3, 12, size=n)
  values = rng.normal(size=(int(lengths.sum()), 2)) * rng.uniform(1, 50, size=2) + 7.0
  return RaggedDataset(
    values.astype(np.float32), lengths, np.zeros(n, np.int64), target_level="sequence",
    num_classes=2,
  )  # fmt: skip


def test_global_uses_the_training_split_statistics_only():
  train_ds = ragged_features([4, 6, 5], num_features=3, seed=0)
  eval_ds = ragged_features([7, 2], num_features=3, seed=1)
  norm = fit_normalizer(train_ds, "global")
  scaled_train, scaled_eval = norm(train_ds), norm(eval_ds)
  np.testing.assert_allclose(scaled_train.values.mean(0), 0.0, atol=1e-6)
  np.testing.assert_allclose(scaled_train.values.std(0), 1.0, atol=1e-5)
  mean, std = np.array(norm.record["mean"]), np.array(norm.record["std"])
  np.testing.assert_allclose(scaled_eval.values, (eval_ds.values - mean) / std, atol=1e-5)
  assert scaled_eval.values.std(0).round(3).tolist() != [1.0, 1.0, 1.0]  # not its own statistics
  assert scaled_train.fingerprint() != train_ds.fingerprint()
  tokens = next_token_dataset([np.arange(5, dtype=np.int32)], vocab_size=8)
  with pytest.raises(ConfigError, match="normalize='global' applies to feature inputs"):
    fit_normalizer(tokens, "global")
  with pytest.raises(ConfigError, match=r"normalize must be one of \('none', 'global'"):
    fit_normalizer(train_ds, "zscore")


def test_per_sequence_minmax_and_none():
  """per_sequence: each sequence's features at mean 0 and standard deviation 1 by its own
  statistics (both splits alike, nothing crosses them); per_sequence_scale: the same plus the
  log scale as extra features, constant along the sequence; minmax: the training split's range
  mapped to [0, 1], the same map for eval; none: the data as it is."""
  rng = np.random.default_rng(2)
  train_ds, eval_ds = _data(20, rng), _data(7, rng)
  for kind in ("per_sequence", "per_sequence_scale"):
    tr, ev = normalize(train_ds, eval_ds, kind=kind)
    assert fit_normalizer(train_ds, kind).record["kind"] == kind
    assert tr.num_features == (4 if kind.endswith("scale") else 2)
    for ds, raw in ((tr, train_ds), (ev, eval_ds)):
      for i in range(len(ds)):
        x, _ = ds.sequence(i)
        assert np.allclose(x[:, :2].mean(0), 0, atol=1e-5)
        assert np.allclose(x[:, :2].std(0), 1, atol=1e-4)
        if kind.endswith("scale"):
          want = np.log(raw.sequence(i)[0].astype(np.float64).std(0))
          assert np.allclose(x[:, 2:], want, atol=1e-4)  # the same at every step
  norm = fit_normalizer(train_ds, "minmax")
  tr, ev = norm(train_ds), norm(eval_ds)
  assert np.allclose(tr.values.min(0), 0) and np.allclose(tr.values.max(0), 1)
  lo, span = np.array(norm.record["min"]), np.array(norm.record["span"])
  assert np.allclose(ev.values, (eval_ds.values - lo) / span, atol=1e-4)
  (same,) = normalize(train_ds, kind="none")
  assert same is train_ds


def test_a_stores_global_statistics_are_streamed_and_equal_the_in_memory_ones(tmp_path):
  from lstm_jax import open_store
  from lstm_jax.normalization import feature_statistics
  from lstm_jax.store import from_dataset

  rng = np.random.default_rng(3)
  ds = _data(40, rng)
  from_dataset(ds, tmp_path / "s")
  stored = open_store(tmp_path / "s")
  mean, std = feature_statistics(stored, block=17)  # many blocks, sequences split across none
  assert np.allclose(mean, ds.values.astype(np.float64).mean(0))
  assert np.allclose(std, ds.values.astype(np.float64).std(0))
  norm = fit_normalizer(stored, "global")
  assert norm.record == fit_normalizer(ds, "global").record
  x, _ = norm(stored).sequence(3)
  assert np.allclose(x, fit_normalizer(ds, "global")(ds).sequence(3)[0], atol=1e-5)
  with pytest.raises(ConfigError, match="normalize='minmax' is not implemented for a store"):
    fit_normalizer(stored, "minmax")
