"""Ragged datasets (validation, saving, splitting) and the synthetic tasks' known answers."""

import numpy as np
import pytest

from helpers import identity_dataset, ragged_features
from lstm_jax import tasks
from lstm_jax.data import RaggedDataset, from_sequences, next_token_dataset
from lstm_jax.errors import ConfigError, DataError


def _values(n, f=2):
  return np.zeros((n, f), np.float32)


# --- bad input: one test per case, each message names the problem ----------------------------
def test_empty_sequence():
  with pytest.raises(DataError, match=r"sequence 1 is empty \(length 0\).*drop empty sequences"):
    RaggedDataset(_values(5), np.array([2, 0, 3]), np.zeros(5, np.float32))


def test_empty_sequence_from_list():
  with pytest.raises(DataError, match=r"sequence 2 is empty"):
    from_sequences([_values(2), _values(1), _values(0)], [np.zeros(2), np.zeros(1), np.zeros(0)])


def test_empty_dataset():
  with pytest.raises(DataError, match="the dataset is empty"):
    RaggedDataset(_values(0), np.zeros(0, np.int64), np.zeros(0, np.float32))
  with pytest.raises(DataError, match="the dataset is empty"):
    from_sequences([], [])


def test_negative_length():
  with pytest.raises(DataError, match=r"sequence 1 has a negative length \(-2\)"):
    RaggedDataset(_values(1), np.array([3, -2]), np.zeros(1, np.float32))


@pytest.mark.parametrize("bad,kind", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_non_finite_inputs(bad, kind):
  values = _values(6)
  values[4, 1] = bad
  with pytest.raises(DataError, match=rf"{kind} in the inputs at step 1 of sequence 1"):
    RaggedDataset(values, np.array([3, 3]), np.zeros(6, np.float32))


def test_labels_out_of_range():
  with pytest.raises(DataError, match=r"label 5 at step 2 of sequence 1 is out of range \[0, 3\)"):
    RaggedDataset(_values(6), np.array([3, 3]), np.array([0, 1, 2, 0, 1, 5]), num_classes=3)
  with pytest.raises(DataError, match=r"label -1 at sequence 0 is out of range"):
    RaggedDataset(
      _values(6), np.array([3, 3]), np.array([-1, 1]), target_level="sequence", num_classes=3
    )


def test_targets_length_differs_from_inputs():
  with pytest.raises(DataError, match=r"step-level targets must have one row per step \(6\)"):
    RaggedDataset(_values(6), np.array([3, 3]), np.zeros(5, np.float32))


def test_values_do_not_match_lengths():
  with pytest.raises(DataError, match="values has 5 steps but the lengths add up to 6"):
    RaggedDataset(_values(5), np.array([3, 3]), np.zeros(5, np.float32))


def test_wrong_dtype_of_features():
  with pytest.raises(DataError, match=r"must be floating point.*vocab_size"):
    RaggedDataset(np.zeros((6, 2), np.int64), np.array([3, 3]), np.zeros(6, np.float32))


def test_features_must_be_two_dimensional():
  with pytest.raises(DataError, match=r"must be 2-D \[steps, features\].*values\[:, None\]"):
    RaggedDataset(np.zeros(6, np.float32), np.array([3, 3]), np.zeros(6, np.float32))


def test_token_out_of_vocabulary():
  with pytest.raises(DataError, match=r"token 9 at step 0 of sequence 1 is out of range \[0, 5\)"):
    next_token_dataset([np.array([1, 2, 3]), np.array([9, 1])], vocab_size=5)


# --- behaviour ---------------------------------------------------------------------------------
def test_npz_round_trip(tmp_path):
  for ds in (
    ragged_features([3, 1, 4], target_level="sequence"),
    identity_dataset([2, 5, 1]),
    next_token_dataset([np.arange(5), np.arange(3)], vocab_size=8),
  ):
    path = tmp_path / "d.npz"
    ds.save(path)
    back = RaggedDataset.load(path)
    for a in ("values", "lengths", "targets"):
      assert np.array_equal(getattr(back, a), getattr(ds, a))
    assert (back.target_level, back.num_classes, back.vocab_size) == (
      ds.target_level,
      ds.num_classes,
      ds.vocab_size,
    )
    assert back.fingerprint() == ds.fingerprint()


def test_load_names_missing_file_and_arrays(tmp_path):
  with pytest.raises(DataError, match="no such dataset file"):
    RaggedDataset.load(tmp_path / "nope.npz")
  np.savez(tmp_path / "bad.npz", values=np.zeros((2, 1), np.float32), lengths=np.array([2]))
  with pytest.raises(DataError, match=r"lacks the array\(s\) \['targets'\]"):
    RaggedDataset.load(tmp_path / "bad.npz")


def test_split_is_seeded_disjoint_and_complete():
  ds = identity_dataset(np.arange(1, 41))
  train, ev = ds.split(0.25, seed=3)

  def ids(d):
    return set(d.values[:, 0][d.values[:, 1] == 0].astype(int))

  assert len(ev) == 10 and len(train) == 30
  assert ids(train) | ids(ev) == set(range(40)) and not ids(train) & ids(ev)
  train2, ev2 = ds.split(0.25, seed=3)
  assert ids(ev2) == ids(ev)
  assert ids(ds.split(0.25, seed=4)[1]) != ids(ev)
  # whole sequences move together, targets with them
  assert np.array_equal(train.targets, (train.values[:, 0] * 1000 + train.values[:, 1]).astype(int))


def test_split_that_would_leave_a_side_empty():
  with pytest.raises(DataError, match="leaves an empty eval split"):
    identity_dataset([3, 4]).split(0.1, seed=0)


def test_fingerprint_changes_with_content():
  a = ragged_features([3, 4], seed=0)
  assert a.fingerprint() == ragged_features([3, 4], seed=0).fingerprint()
  assert a.fingerprint() != ragged_features([3, 4], seed=1).fingerprint()


def test_adding_problem_targets_are_the_sum_of_marked_values():
  ds = tasks.adding_problem(50, tasks.LengthDistribution("uniform", 2, 30), seed=0)
  for i in range(len(ds)):
    x, y = ds.sequence(i)
    assert x[:, 1].sum() == 2.0
    assert np.isclose(y[0], x[x[:, 1] == 1.0, 0].sum())
  assert ds.target_level == "sequence" and ds.target_dim == 1


def test_adding_problem_published_form_has_one_marker_in_each_half():
  ds = tasks.adding_problem(400, [100, 7], seed=0, markers="halves")
  firsts, seconds = [], []
  for i in range(len(ds)):
    x, y = ds.sequence(i)
    marked = np.flatnonzero(x[:, 1] == 1.0)
    half = len(x) // 2
    assert len(marked) == 2 and marked[0] < half <= marked[1], (len(x), marked)
    assert np.isclose(y[0], x[marked, 0].sum())
    if len(x) == 100:
      firsts.append(marked[0])
      seconds.append(marked[1])
  # uniform within each half: both ends of each half are reached
  assert min(firsts) == 0 and max(firsts) == 49 and min(seconds) == 50 and max(seconds) == 99
  with pytest.raises(ConfigError, match="markers"):
    tasks.adding_problem(4, [10], markers="middle")


def test_running_parity_targets():
  ds = tasks.running_parity(30, [1, 5, 17], seed=0)
  for i in range(len(ds)):
    x, y = ds.sequence(i)
    assert np.array_equal(y, np.cumsum(x[:, 0].astype(int)) % 2)
  assert list(ds.lengths[:3]) == [1, 5, 17]


def test_length_distributions():
  rng = np.random.default_rng(0)
  u = tasks.sample_lengths(tasks.LengthDistribution("uniform", 3, 9), 1000, rng)
  assert u.min() == 3 and u.max() == 9
  ln = tasks.sample_lengths(
    tasks.LengthDistribution("lognormal", 8, 512, median=64, sigma=1.0), 5000, rng
  )
  assert ln.min() >= 8 and ln.max() <= 512 and 50 < np.median(ln) < 80
  assert list(tasks.sample_lengths(tasks.LengthDistribution("list", values=(4, 2)), 5, rng)) == [
    4,
    2,
    4,
    2,
    4,
  ]
  with pytest.raises(ConfigError, match="unknown length distribution"):
    tasks.LengthDistribution("zipf")
  with pytest.raises(ConfigError, match="lengths >= 2"):
    tasks.adding_problem(5, [1, 3])


def test_npz_exact_duplicates_can_be_dropped(tmp_path):
  """--config.data.drop_duplicates drops exact copies (inputs and targets) of an
  earlier sequence, which a random split could put on both sides; a copy with another label
  stays. Off by default, and the count is in the data's identity."""
  from lstm_jax import sources

  a, b = np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((2, 2), np.float32)
  values = np.concatenate([a, b, a, a, b])
  np.savez(
    tmp_path / "d.npz",
    values=values,
    lengths=np.array([3, 2, 3, 3, 2]),
    targets=np.array([0, 1, 0, 1, 1]),  # the 4th repeats the 1st's inputs with another label
  )
  ds, ident = sources.load_npz(str(tmp_path / "d.npz"))
  assert len(ds) == 5 and "duplicates_dropped" not in ident
  ds, ident = sources.load_npz(str(tmp_path / "d.npz"), drop_duplicates=True)
  assert ident["duplicates_dropped"] == 2 and len(ds) == 3
  assert list(ds.targets) == [0, 1, 1] and list(ds.lengths) == [3, 2, 3]


TS_TRAIN = """# a comment
@problemName Tiny
@timeStamps false
@univariate false
@equalLength false
@classLabel true up down flat
@data
1,2,3:0.5,0.5,0.5:up
3,2:1,1:down
0,0,0,0:2,2,2,2:flat
1,2,3:0.5,0.5,0.5:up
"""


def test_ts_files_load_with_the_header_label_order(tmp_path):
  """The sktime / aeon .ts format (the UCR/UEA archive's): multivariate, unequal
  length, labels numbered in their @classLabel order (so a train and a test file agree); a
  missing value is one DataError naming the line."""
  from lstm_jax import sources

  (tmp_path / "train.ts").write_text(TS_TRAIN)
  ds, ident = sources.load_ts(str(tmp_path / "train.ts"))
  assert list(ds.lengths) == [3, 2, 4, 3] and ds.num_features == 2 and ds.num_classes == 3
  assert list(ds.targets) == [0, 1, 2, 0] and ident["classes"] == ["up", "down", "flat"]
  x, y = ds.sequence(1)
  assert np.array_equal(x, [[3, 1], [2, 1]]) and y == 1
  assert sources.load_ts(str(tmp_path / "train.ts"), drop_duplicates=True)[0].num_sequences == 3
  (tmp_path / "test.ts").write_text(TS_TRAIN.replace("0,0,0,0:2,2,2,2:flat", "5,?:1,1:flat"))
  with pytest.raises(DataError, match=r"test.ts:10: a missing value \(NaN or '\?'\) at step 1"):
    sources.load_ts(str(tmp_path / "test.ts"))
  # the archive's own padded files: unequal lengths padded with NaN (or ?) at the end
  padded = TS_TRAIN.replace("3,2:1,1:down", "3,2,NaN,NaN:1,1,?,NaN:down")
  (tmp_path / "padded.ts").write_text(padded)
  ds, ident = sources.load_ts(str(tmp_path / "padded.ts"))
  assert list(ds.lengths) == [3, 2, 4, 3] and ident["nan_padding_stripped"] == 1
  assert np.array_equal(ds.sequence(1)[0], [[3, 1], [2, 1]])
  (tmp_path / "inner.ts").write_text(TS_TRAIN.replace("3,2:1,1:down", "NaN,2:NaN,1:down"))
  with pytest.raises(DataError, match=r"inner.ts:9: a missing value .* at step 0, inside"):
    sources.load_ts(str(tmp_path / "inner.ts"))


def test_the_library_numbers_a_test_files_labels_by_the_training_files_names(tmp_path):
  """load_ts / load_npz(classes=...): a test file that lists the classes in another order, or a
  subset, scores against the training file's ids (what the runner does for a given test file);
  a class training lacks, and a file without names, are one DataError each."""
  from lstm_jax import load_npz, load_ts

  (tmp_path / "train.ts").write_text(TS_TRAIN)
  _, ident = load_ts(str(tmp_path / "train.ts"))
  reordered = TS_TRAIN.replace("@classLabel true up down flat", "@classLabel true flat up")
  reordered = reordered.replace("3,2:1,1:down\n", "")
  (tmp_path / "test.ts").write_text(reordered)
  own, _ = load_ts(str(tmp_path / "test.ts"))
  assert list(own.targets) == [1, 0, 1]  # its own order: flat=0, up=1
  test, test_ident = load_ts(str(tmp_path / "test.ts"), classes=ident["classes"])
  assert list(test.targets) == [0, 2, 0] and test.num_classes == 3  # up=0, flat=2
  assert test_ident["class_ids"] == {"flat": 2, "up": 0}
  with pytest.raises(DataError, match=r"has class\(es\) \['flat'\] that the training data"):
    load_ts(str(tmp_path / "test.ts"), classes=["up", "down"])
  lengths = np.array([2, 3])
  np.savez(tmp_path / "named.npz", values=np.zeros((5, 1), np.float32), lengths=lengths,
           targets=np.array([0, 1]), class_names=np.array(["down", "up"]))  # fmt: skip
  named, _ = load_npz(str(tmp_path / "named.npz"), classes=ident["classes"])
  assert list(named.targets) == [1, 0]
  np.savez(tmp_path / "plain.npz", values=np.zeros((5, 1), np.float32), lengths=lengths,
           targets=np.array([0, 1]))  # fmt: skip
  with pytest.raises(DataError, match="does not name its classes"):
    load_npz(str(tmp_path / "plain.npz"), classes=ident["classes"])
