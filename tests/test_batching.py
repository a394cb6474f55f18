"""Batching strategies: the batch contract, every real step exactly once per epoch, listed shapes,
seeded shuffling, optimal bucket boundaries, packing, and clear errors on bad settings."""

import itertools
from collections import Counter

import numpy as np
import pytest

from helpers import identity_dataset
from lstm_jax import batching, planning
from lstm_jax.errors import ConfigError, DataError

LENGTHS = np.random.default_rng(7).integers(1, 40, size=57)

STRATEGIES = {
  "pad": lambda ds, seed=0: batching.Pad(ds, batch_size=8, seed=seed),
  "bucket": lambda ds, seed=0: batching.Bucket(ds, batch_size=8, num_buckets=4, seed=seed),
  "bucket_tokens": lambda ds, seed=0: batching.Bucket(
    ds, tokens_per_batch=128, boundaries=[10, 20, 40], seed=seed
  ),
  "bucket_packed": lambda ds, seed=0: batching.Bucket(
    ds, batch_size=3, boundaries=[10, 20, 40], pack_rows=True, seed=seed
  ),
  "tbptt": lambda ds, seed=0: batching.TBPTT(ds, num_streams=5, chunk_length=7, seed=seed),
  "vbptt": lambda ds, seed=0: batching.VariableTBPTT(ds, num_streams=5, base_length=12, seed=seed),
  "pack": lambda ds, seed=0: batching.Pack(ds, batch_size=4, row_length=50, seed=seed),
  "pad_batch_max": lambda ds, seed=0: batching.PadBatchMax(ds, batch_size=8, seed=seed),
}


def _visited_steps(strategy, epoch=0):
  """(sequence, step) of every real step emitted in one epoch, checking the contract as it goes."""
  ds, visited = strategy.dataset, []
  shapes = set()
  for batch in strategy.batches(epoch):
    shapes.add(batch.shape)
    b, t = batch.shape
    assert batch.inputs.shape == (b, t, 2) and batch.inputs.dtype == np.float32
    assert batch.mask.dtype == bool and batch.resets.dtype == bool
    assert batch.weights.dtype == np.float32 and batch.targets.dtype == np.int32
    assert not np.any(batch.resets & ~batch.mask), "a reset only on a real step"
    assert np.all(batch.inputs[~batch.mask] == 0) and np.all(batch.weights[~batch.mask] == 0)
    seq = batch.inputs[..., 0][batch.mask].astype(int)
    step = batch.inputs[..., 1][batch.mask].astype(int)
    # resets exactly where a sequence starts
    assert np.array_equal(batch.resets[batch.mask], step == 0)
    # step-level targets travel with their step
    if ds.target_level == "step":
      assert np.array_equal(batch.targets[batch.mask], seq * 1000 + step)
      assert np.all(batch.weights[batch.mask] == 1.0)
    else:  # the sequence's label sits on its last step, weight 1 there only
      last = step == ds.lengths[seq] - 1
      assert np.array_equal(batch.weights[batch.mask], last.astype(np.float32))
      assert np.array_equal(batch.targets[batch.mask][last], seq[last])
    # right-padded strategies: each row's length, the mask it stands for, step 0 at column 0
    assert (batch.seq_lengths is not None) == strategy.right_padded
    if strategy.right_padded:
      assert batch.seq_lengths.dtype == np.int32 and batch.seq_lengths.shape == (b,)
      assert np.array_equal(batch.mask, np.arange(t)[None, :] < batch.seq_lengths[:, None])
      assert np.all(batch.inputs[..., 1][batch.seq_lengths > 0, 0] == 0)
    visited += zip(seq.tolist(), step.tolist())
  return visited, shapes


def test_right_padded_strategies_are_those_with_one_sequence_per_row_from_step_0():
  """`Strategy.right_padded` (what the fused cuDNN LSTM can take): pad, pad_batch_max and bucket
  without packed rows; a plan that packs or chunks rows is refused by
  assemble(right_padded=True), in one line that names the fix."""
  ds = identity_dataset(LENGTHS)
  padded = {n for n, make in STRATEGIES.items() if make(ds).right_padded}
  assert padded == {"pad", "bucket", "bucket_tokens", "pad_batch_max"}
  assert batching.Relayout(STRATEGIES["pack"](ds), layout="pad").right_padded
  assert not batching.Relayout(STRATEGIES["pad"](ds), layout="pack", row_length=50).right_padded
  packed = STRATEGIES["pack"](ds).plan(0)[0]
  with pytest.raises(DataError, match="one whole sequence per row from step 0"):
    batching.assemble(ds, packed, right_padded=True)


@pytest.mark.parametrize("target_level", ["step", "sequence"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_real_step_exactly_once_per_epoch(name, target_level):
  ds = identity_dataset(LENGTHS, target_level=target_level)
  strategy = STRATEGIES[name](ds)
  expected = Counter((i, t) for i, n in enumerate(LENGTHS) for t in range(n))
  for epoch in (0, 1):
    visited, shapes = _visited_steps(strategy, epoch)
    assert Counter(visited) == expected
    assert shapes <= set(strategy.shapes(num_epochs=2))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_shapes_are_listed_before_running(name):
  ds = identity_dataset(LENGTHS)
  strategy = STRATEGIES[name](ds)
  emitted = sorted({b.shape for b in strategy.batches(0)})
  assert strategy.shapes() == emitted
  stats = strategy.stats()
  assert stats["real_tokens"] == LENGTHS.sum()
  assert stats["computed_tokens"] == sum(b * t for b, t in (p.shape for p in strategy.plan(0)))


def test_shape_counts_per_strategy():
  ds = identity_dataset(LENGTHS)
  assert STRATEGIES["pad"](ds).shapes() == [(8, int(LENGTHS.max()))]
  assert STRATEGIES["tbptt"](ds).shapes() == [(5, 7)]
  assert STRATEGIES["pack"](ds).shapes() == [(4, 50)]
  bucket = STRATEGIES["bucket"](ds)
  # at most 8 rows, split evenly within each bucket (no batch mostly empty)
  assert bucket.shapes() == sorted((b, t) for b, t in zip(bucket.batch_sizes, bucket.boundaries))
  assert all(b <= 8 for b in bucket.batch_sizes)
  # 128 // T rows at most, balanced: the 10 sequences of bucket 20 go 5 + 5, not 6 + 4
  assert STRATEGIES["bucket_tokens"](ds).shapes() == sorted([(12, 10), (5, 20), (3, 40)])
  pbm = STRATEGIES["pad_batch_max"](ds)
  maxima = {int(LENGTHS[[s[0] for row in p.rows for s in row]].max()) for p in pbm.plan(0)}
  assert pbm.shapes() == sorted((8, m) for m in maxima)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_shuffling_is_seeded(name):
  ds = identity_dataset(LENGTHS)

  def order(s, e):
    return [np.asarray(b.inputs).tobytes() for b in s.batches(e)]

  a, b, c = STRATEGIES[name](ds, seed=3), STRATEGIES[name](ds, seed=3), STRATEGIES[name](ds, seed=4)
  assert order(a, 0) == order(b, 0)
  assert order(a, 0) != order(a, 1), "each epoch reshuffles"
  assert order(a, 0) != order(c, 0), "the seed changes the order"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_batches_are_the_same_on_any_device_count(name):
  """batch_multiple (the device count) widens each batch with empty rows after it is composed:
  the same sequences share each batch, in the same rows, so every loss and gradient is the same
  on 1 or 4 devices (the runner's check: tests/test_sharding.py)."""
  ds = identity_dataset(LENGTHS)
  for multiple in (3, 4):
    one = STRATEGIES[name](ds, seed=2)
    wide = STRATEGIES[name](ds, seed=2)
    wide.batch_multiple = multiple
    for epoch in (0, 1):
      a, b = one.plan(epoch), wide.plan(epoch)
      assert [p.rows for p in a] == [p.rows for p in b]
      assert [p.length for p in a] == [p.length for p in b]
      assert all(
        q.batch_size % multiple == 0 and 0 <= q.batch_size - p.batch_size < multiple
        for p, q in zip(a, b)
      )


def test_token_budget_bucket_rows_do_not_depend_on_the_device_count():
  ds = identity_dataset(LENGTHS)
  one = batching.Bucket(ds, tokens_per_batch=128, boundaries=[10, 20, 40])
  four = batching.Bucket(ds, tokens_per_batch=128, boundaries=[10, 20, 40], batch_multiple=4)
  assert {t: b for b, t in one.shapes()} == {10: 12, 20: 5, 40: 3}  # <= 128 // T rows
  assert {t: b for b, t in four.shapes()} == {10: 12, 20: 8, 40: 4}  # widened, same rows
  assert [p.rows for p in one.plan(0)] == [p.rows for p in four.plan(0)]


def test_tbptt_streams_are_balanced_and_only_the_tail_is_padded():
  ds = identity_dataset(LENGTHS)
  strategy = batching.TBPTT(ds, num_streams=5, chunk_length=7)
  plans = strategy.plan(0)
  loads = Counter()
  for p in plans:
    for r, row in enumerate(p.rows):
      loads[r] += sum(s[3] for s in row)
  # greedy least-loaded placement: streams end within one sequence of each other
  assert max(loads.values()) - min(loads.values()) <= LENGTHS.max()
  # every chunk but the last few is full: padding only where streams run out
  full = [p.real_tokens == 5 * 7 for p in plans]
  assert all(full[: -((LENGTHS.max() // 7) + 2)])


def test_optimal_boundaries_match_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(60):
    lengths = rng.integers(1, 30, size=rng.integers(1, 20))
    k = int(rng.integers(1, 5))
    got = planning.optimal_boundaries(lengths, k)
    u = np.unique(lengths)
    best = min(
      planning.padded_steps(lengths, list(c) + [u[-1]])
      for r in range(k)
      for c in itertools.combinations(u[:-1], r)
    )
    assert planning.padded_steps(lengths, got) == best
    assert len(got) <= k and got[-1] == lengths.max() and got == sorted(set(got))


def test_first_fit_decreasing_packs_within_capacity():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 60, size=500)
  bins = planning.first_fit_decreasing(lengths, 64, rng)
  assert sorted(i for b in bins for i in b) == list(range(500))
  assert all(lengths[b].sum() <= 64 for b in bins)
  # FFD uses at most 11/9 OPT + 1 bins; OPT >= total / capacity
  assert len(bins) <= 11 / 9 * np.ceil(lengths.sum() / 64) + 1


def test_variable_bptt_draws_follow_awd_lstm():
  ds = identity_dataset(np.full(400, 50))
  strat = batching.VariableTBPTT(ds, num_streams=4, base_length=70, seed=0)
  assert strat.chunk_shapes == [45, 70, 80, 90]
  rng = np.random.default_rng(0)
  draws = np.array([strat.draw_length(rng) for _ in range(20000)])
  assert draws.min() >= 5 and draws.max() <= 90
  near_base = np.abs(draws - 70) <= 20
  assert 0.93 < near_base.mean() < 0.97  # base with probability 0.95
  assert 3 < draws[near_base].std() < 6  # sigma 5 (clipped at 90)
  plans = strat.plan(0)
  assert len({p.shape for p in plans}) <= 4
  for p in plans[:-1]:  # each chunk's real span sets its lr scale; the shape holds it
    span = max(seg[2] + seg[3] for row in p.rows for seg in row)
    assert span <= p.length and p.lr_scale == pytest.approx(span / 70)


def test_best_fit_rows_fill_bucket_rows_within_their_boundary():
  rng = np.random.default_rng(0)
  lengths = np.clip(rng.lognormal(np.log(64), 1.0, size=2000).astype(int), 8, 512)
  boundaries = planning.optimal_boundaries(lengths, 8)
  packed = planning.best_fit_rows(lengths, boundaries, rng)
  rows = list(zip(packed.bucket, packed))
  assert sorted(i for _, r in rows for i in r) == list(range(2000))
  assert all(lengths[r].sum() <= boundaries[k] for k, r in rows)
  assert all(lengths[r].max() > (boundaries[k - 1] if k else 0) for k, r in rows)  # row's bucket
  unfilled = sum(boundaries[k] - lengths[r].sum() for k, r in rows) / lengths.sum()
  plain = sum(boundaries[np.searchsorted(boundaries, n)] - n for n in lengths) / lengths.sum()
  assert unfilled < 0.03 < 0.10 < plain  # same shapes, a fraction of the padding


def test_bucket_with_packed_rows_keeps_the_shapes_and_cuts_padding():
  ds = identity_dataset(np.random.default_rng(2).integers(1, 64, size=300))
  plain = batching.Bucket(ds, batch_size=8, boundaries=[8, 16, 32, 64])
  packed = batching.Bucket(ds, batch_size=8, boundaries=[8, 16, 32, 64], pack_rows=True)
  assert {t for _, t in packed.shapes()} <= {t for _, t in plain.shapes()}
  assert packed.stats()["padding_fraction"] < plain.stats()["padding_fraction"] / 2
  assert any(len(row) > 1 for p in packed.plan(0) for row in p.rows)


def test_pack_rows_hold_several_sequences_with_resets():
  ds = identity_dataset(LENGTHS)
  batch = next(batching.Pack(ds, batch_size=4, row_length=50).batches(0))
  assert (batch.resets.sum(axis=1) >= 2).any()


# --- bad settings ------------------------------------------------------------------------------
def test_sequence_longer_than_largest_bucket():
  ds = identity_dataset([3, 5, 30])
  with pytest.raises(
    DataError,
    match=r"longer than the largest bucket boundary \(20\).*sequence 2 "
    r"with 30 steps.*Add a boundary",
  ):
    batching.Bucket(ds, batch_size=2, boundaries=[10, 20])


@pytest.mark.parametrize("chunk", [0, -3])
def test_chunk_length_below_one(chunk):
  with pytest.raises(ConfigError, match="chunk_length must be an integer >= 1"):
    batching.TBPTT(identity_dataset([3, 5]), num_streams=2, chunk_length=chunk)


def test_sequence_longer_than_pad_or_pack_length():
  ds = identity_dataset([3, 5, 30])
  with pytest.raises(DataError, match=r"longer than the padded length max_length \(10\)"):
    batching.Pad(ds, batch_size=2, max_length=10)
  with pytest.raises(DataError, match=r"longer than the pack row length \(10\)"):
    batching.Pack(ds, batch_size=2, row_length=10)


def test_bucket_boundaries_must_increase():
  with pytest.raises(ConfigError, match="strictly increasing"):
    batching.Bucket(identity_dataset([3, 5]), batch_size=2, boundaries=[8, 8, 16])


def test_bucket_needs_one_batch_size_rule():
  with pytest.raises(ConfigError, match="at most one of batch_size or tokens_per_batch"):
    batching.Bucket(identity_dataset([3, 5]), batch_size=2, tokens_per_batch=64, num_buckets=2)
  with pytest.raises(
    ConfigError, match="bucket needs batch_size, tokens_per_batch, or tokens_per_step"
  ):
    batching.Bucket(identity_dataset([3, 5]), num_buckets=2)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_batch_size_must_be_positive_integer(bad):
  with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
    batching.Pad(identity_dataset([3, 5]), batch_size=bad)


def test_unknown_strategy_name():
  with pytest.raises(ConfigError, match=r"unknown strategy 'padd'; choose one of"):
    batching.make_strategy("padd", identity_dataset([3, 5]), batch_size=2)


def test_plans_match_the_recorded_planner():
  """Every case of tests/plan_cases.py (each strategy, ties in the lengths, batch multiples,
  two seeds, two epochs) plans exactly the batches recorded as hashes in
  tests/data/plan_hashes.json (recorded by the array planner; packed rows re-recorded once when
  their shuffle became a keyed sort): same seed, same batches, so committed reports rerun
  bit-identically."""
  import json

  import plan_cases

  recorded = json.loads(plan_cases.HASHES.read_text())
  got = plan_cases.all_hashes()
  assert got.keys() == recorded.keys()
  assert [k for k in got if got[k] != recorded[k]] == []


def test_rows_shuffle_is_a_permutation_within_each_row_the_same_for_the_same_seed():
  """planning.shuffle_rows moves each row's members only within the row, leaves rows of one,
  the places between rows and other rows alone, gives the same order for the same seed on any
  bit generator, and advances the generator by one draw per member."""
  counts = np.random.default_rng(0).integers(1, 12, size=5000)
  counts[::97] = 300
  gaps = np.random.default_rng(1).integers(0, 3, size=5000)  # places no row owns
  starts = np.cumsum(gaps) + np.concatenate([[0], np.cumsum(counts)[:-1]])
  size = int(starts[-1] + counts[-1] + 2)
  owned = np.zeros(size, bool)
  owned[np.concatenate([np.arange(s, s + n) for s, n in zip(starts, counts)])] = True
  for bits in (np.random.PCG64, np.random.Philox, np.random.MT19937):
    a, b = np.random.Generator(bits(5)), np.random.Generator(bits(5))
    x, y = np.arange(size), np.arange(size)
    planning.shuffle_rows(a, x, starts, counts)
    planning.shuffle_rows(b, y, starts, counts)
    assert np.array_equal(x, y)  # the same seed, the same order
    assert np.array_equal(x[~owned], np.flatnonzero(~owned))
    moved = 0
    for s, n in zip(starts, counts):
      assert sorted(x[s : s + n]) == list(range(s, s + n))
      moved += n > 1 and not np.array_equal(x[s : s + n], np.arange(s, s + n))
    assert moved > 0.8 * (counts > 1).sum()
    c = np.random.Generator(bits(5))
    members = int(counts[counts > 1].sum())
    c.integers(np.iinfo(np.uint64).max, size=members, dtype=np.uint64, endpoint=True)
    assert a.random() == c.random()  # one draw per member of a row of two or more


def test_rows_shuffle_is_uniform_over_orders():
  """Rows of 3 and of 4, 20,000 each, seed fixed (so deterministic): every one of the n!
  orders appears, and the counts pass a chi-square test at p = 0.001 (a biased keyed sort,
  e.g. the row number written over the key's top bits, fails it)."""
  for n in (3, 4):
    rows = 20000
    x = np.tile(np.arange(n), rows)
    planning.shuffle_rows(np.random.default_rng(3), x, np.arange(rows) * n, np.full(rows, n))
    codes = (x.reshape(rows, n) * n ** np.arange(n)).sum(1)
    _, seen = np.unique(codes, return_counts=True)
    orders = int(np.prod(np.arange(1, n + 1)))
    assert len(seen) == orders
    expected = rows / orders
    chi2 = float(((seen - expected) ** 2 / expected).sum())
    assert chi2 < {6: 20.52, 24: 49.73}[orders]  # chi-square 0.999 quantiles, orders - 1 dof
