"""Grain's packed layout (`<key>_segment_ids`, `<key>_positions`) and lstm_jax's Batch, both
ways: Pack's batches written as Grain marks them read back to the same arrays, and the model
gives the same outputs on either."""

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import identity_dataset, max_rel_err, ragged_features
from lstm_jax import batching
from lstm_jax.errors import DataError
from lstm_jax.interop import from_grain_packed, to_grain_packed
from lstm_jax.model import SequenceModel

LENGTHS = [3, 7, 1, 5, 2, 6, 4, 4]


@pytest.mark.parametrize("level", ["step", "sequence"])
def test_packs_batches_go_to_grains_layout_and_back_exactly(level):
  ds = identity_dataset(LENGTHS, target_level=level)
  pack = batching.Pack(ds, batch_size=2, row_length=12)
  packed_rows = 0
  for plan, batch in zip(pack.plan(0), pack.batches(0)):
    packed_rows += sum(len(row) > 1 for row in plan.rows)
    marks = to_grain_packed(batch)
    seg, pos = marks["inputs_segment_ids"], marks["inputs_positions"]
    for r, row in enumerate(plan.rows):
      for k, (_, _, p, n) in enumerate(row):
        assert (seg[r, p : p + n] == k + 1).all() and (pos[r, p : p + n] == np.arange(n)).all()
    example = dict(inputs=batch.inputs, targets=batch.targets, **marks)
    back = from_grain_packed(example, sequence_labels=level == "sequence")
    for name in ("inputs", "targets", "weights", "mask", "resets"):
      assert np.array_equal(getattr(back, name), getattr(batch, name)), name
  assert packed_rows > 0


def test_the_model_gives_the_same_outputs_on_a_grain_packed_batch():
  ds = ragged_features(LENGTHS, num_features=3, seed=1)
  batch = next(batching.Pack(ds, batch_size=2, row_length=12).batches(0))
  model = SequenceModel(6, 2)
  params = model.init(jax_key(), jnp.zeros((1, 1, 3)))
  grain = from_grain_packed(
    dict(inputs=batch.inputs, targets=batch.targets, **to_grain_packed(batch))
  )
  ours = model.apply(params, batch.inputs, mask=batch.mask, resets=batch.resets)[0]
  theirs = model.apply(params, grain.inputs, mask=grain.mask, resets=grain.resets)[0]
  assert max_rel_err(theirs, ours) == 0.0


def jax_key():
  import jax

  return jax.random.key(0)


def test_a_layout_that_is_not_grains_is_named():
  x = np.zeros((1, 4, 2), np.float32)
  y = np.zeros((1, 4), np.int32)
  seg = np.array([[1, 1, 2, 0]])
  with pytest.raises(DataError, match=r"row 0, step 1: segment id 1 at position 2"):
    from_grain_packed(dict(inputs=x, targets=y, inputs_segment_ids=seg,
                           inputs_positions=np.array([[0, 2, 0, 0]])))  # fmt: skip
  with pytest.raises(DataError, match=r"no 'inputs_positions' array"):
    from_grain_packed(dict(inputs=x, targets=y, inputs_segment_ids=seg))
  marks = dict(inputs_segment_ids=seg, inputs_positions=np.array([[0, 1, 0, 0]]))
  good = from_grain_packed(dict(inputs=x, targets=y, **marks), sequence_labels=True)
  assert good.resets.tolist() == [[True, False, True, False]]
  assert good.weights.tolist() == [[0.0, 1.0, 1.0, 0.0]]
