"""Grain pipelines and lstm_jax's strategies, both ways (lstm_jax.interop; Grain is the optional
extra `lstm_jax[grain]`, and these tests skip without it).

- A `FirstFitPackIterDataset` pipeline over a store, its packed batches turned into lstm_jax's
  batch contract (`from_grain_packed`), equals lstm_jax's own batches of the same rows
  (`assemble` on a plan of those rows) array for array, and trains to the same losses and
  parameters, bit for bit.
- `grain_dataset(strategy)` yields the strategy's own batches in order; its iterator's state
  (JSON, as Grain's checkpointing saves it) resumes the stream exactly; TBPTT's rows are lanes,
  so a carry handed from batch to batch trains exactly as `fit` does.
"""

import json

import jax
import numpy as np
import optax
import pytest

from lstm_jax import batching, loop, store, tasks, train
from lstm_jax.batching import BatchPlan
from lstm_jax.data import next_token_dataset
from lstm_jax.errors import DataError
from lstm_jax.interop import from_grain_packed, grain_dataset
from lstm_jax.model import SequenceModel

grain = pytest.importorskip("grain", reason="the optional extra lstm_jax[grain]")


def _same_batches(got: list, want: list) -> None:
  assert len(got) == len(want)
  for g, w in zip(got, want):
    for key in ("inputs", "targets", "weights", "mask", "resets"):
      a, b = np.asarray(g[key] if isinstance(g, dict) else getattr(g, key)), getattr(w, key)
      assert a.dtype == b.dtype and np.array_equal(a, b), key


def _parity():
  return tasks.running_parity(60, tasks.LengthDistribution("uniform", 3, 30))


@pytest.mark.parametrize("name", ["pad", "bucket", "pack", "tbptt"])
def test_a_strategy_as_a_grain_dataset_yields_its_own_batches(name):
  ds = _parity()
  strategy = {
    "pad": lambda: batching.Pad(ds, batch_size=8),
    "bucket": lambda: batching.Bucket(ds, batch_size=8, num_buckets=3),
    "pack": lambda: batching.Pack(ds, batch_size=4, row_length=40),
    "tbptt": lambda: batching.TBPTT(ds, num_streams=4, chunk_length=7),
  }[name]()
  got = list(grain_dataset(strategy, epochs=2))
  want = list(strategy.batches(0)) + list(strategy.batches(1))
  _same_batches(got, want)
  # Grain's own transformations take it like any IterDataset
  counts = list(grain_dataset(strategy, epochs=1).map(lambda b: int(b["mask"].sum())))
  assert counts == [int(b.mask.sum()) for b in strategy.batches(0)]


def test_the_iterator_state_resumes_the_stream_exactly():
  ds = _parity()
  strategy = batching.Bucket(ds, batch_size=8, num_buckets=3)
  per_epoch = len(strategy.plan(0))
  it = iter(grain_dataset(strategy))
  first = [next(it) for _ in range(per_epoch + 2)]  # into the second epoch
  saved = json.loads(json.dumps(it.get_state()))  # what Grain's checkpointing writes
  assert saved["epoch"] == 1 and saved["index"] == 2
  after = [next(it) for _ in range(3)]
  again = iter(grain_dataset(strategy))
  again.set_state(saved)
  _same_batches([next(again) for _ in range(3)], [batching.Batch(**b) for b in after])
  assert len(first) == per_epoch + 2
  with pytest.raises(DataError, match="is not a grain_dataset iterator's state"):
    again.set_state({"step": 3})
  with pytest.raises(DataError, match="comes from another strategy or data"):
    again.set_state({"epoch": 0, "index": per_epoch + 5, "real_tokens": 0})


def test_tbptt_lanes_carry_state_across_grain_batches_as_fit_does():
  """TBPTT through Grain: the carry handed from batch to batch (zeroed where a sequence
  starts, by the batch's resets) trains to fit's losses exactly."""
  ds = _parity()
  model = SequenceModel(hidden_size=8, num_outputs=2)
  strategy = batching.TBPTT(ds, num_streams=4, chunk_length=7)
  state = train.create_train_state(model, optax.adam(1e-2), ds, seed=0)
  want = loop.fit(state, strategy, epochs=1, pipeline=loop.Pipeline(compile_shapes="lazily"))
  steps = train.StepFunctions.create()
  state = train.create_train_state(model, optax.adam(1e-2), ds, seed=0)
  carry, losses = steps.zero_carry(model, 4), []
  for batch in grain_dataset(strategy, epochs=1, as_dict=False):
    state, metrics, carry = steps.train(state, batch, carry, np.float32(1.0))
    m = jax.device_get(metrics)
    losses.append(float(m["loss_sum"]) / float(m["weight_sum"]))
  assert losses == [h["loss"] for h in want.history]
  same = jax.tree.map(
    np.array_equal, jax.device_get(state.params), jax.device_get(want.state.params)
  )
  assert all(jax.tree.leaves(same))


def _plan_of(packed: dict, length: int) -> BatchPlan:
  """lstm_jax's plan of the rows a Grain-packed batch holds: each segment's sequence (the
  `seq` feature packed along), position and length."""
  seg, seq = packed["inputs_segment_ids"], packed["seq"]
  rows = []
  for r in range(seg.shape[0]):
    for s in np.unique(seg[r][seg[r] > 0]):
      steps = np.flatnonzero(seg[r] == s)
      rows.append((r, int(seq[r, steps[0]]), 0, int(steps[0]), len(steps)))
  return BatchPlan(seg.shape[0], length, np.asarray(rows, np.int32).reshape(-1, 5))


def test_a_first_fit_packed_grain_pipeline_trains_as_lstm_jaxs_own_batches(tmp_path):
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 256, size=n) for n in rng.integers(5, 60, size=80)]
  store.from_dataset(next_token_dataset(docs, vocab_size=256), str(tmp_path / "s"))
  ds = store.open_store(tmp_path / "s")
  length, rows = 64, 4

  def with_index(i, record):  # which sequence each packed step came from, for the plan
    return dict(record, seq=np.full(len(record["inputs"]), i, np.int32))

  pipeline = grain.MapDataset.source(ds.grain_source()).map_with_index(with_index).to_iter_dataset()
  packed = grain.experimental.FirstFitPackIterDataset(
    pipeline,
    length_struct={"inputs": length, "targets": length, "seq": length},
    num_packing_bins=rows,
    shuffle_bins=False,
  ).batch(rows)
  examples = list(packed)
  assert len(examples) > 3
  theirs = [from_grain_packed(e) for e in examples]
  ours = [batching.assemble(ds, _plan_of(e, length)) for e in examples]
  _same_batches(theirs, ours)  # array for array, dtypes too
  assert sum(int(b.mask.sum()) for b in ours) == int(ds.lengths.sum())  # every step once

  model = SequenceModel(hidden_size=8, num_outputs=256, vocab_size=256)
  results = []
  for batches in (theirs, ours):
    steps = train.StepFunctions.create()
    state = train.create_train_state(model, optax.adam(1e-2), ds, seed=0)
    losses = []
    for b in batches:
      carry = steps.zero_carry(model, b.mask.shape[0])
      state, metrics, _ = steps.train(state, b, carry, np.float32(1.0))
      losses.append(float(jax.device_get(metrics["loss_sum"])))
    results.append((losses, jax.device_get(state.params)))
  assert results[0][0] == results[1][0]
  same = jax.tree.map(np.array_equal, results[0][1], results[1][1])
  assert all(jax.tree.leaves(same))
