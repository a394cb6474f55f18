"""Bidirectional LSTM: each sequence reversed within its own length, so pad, bucket and pack
batches give what each sequence gives alone; the backward direction is an LSTM over the reversed
sequence; truncated BPTT is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import max_rel_err, ragged_features
from lstm_jax import batching, evaluation, loop, train
from lstm_jax.errors import ConfigError
from lstm_jax.model import LSTM, BidirectionalLSTM, SequenceModel, segment_reverse_index

LENGTHS = np.array([5, 1, 9, 3, 7, 2, 8])
H, TOL = 6, 1e-5


def test_segment_reverse_index_by_hand():
  mask = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]], bool)
  resets = np.array([[1, 0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]], bool)
  rev = np.asarray(segment_reverse_index(jnp.asarray(mask), jnp.asarray(resets)))
  assert rev.tolist() == [[2, 1, 0, 4, 3, 5, 6], [2, 1, 0, 3, 4, 5, 6]]


# pytest-xdist: one worker takes the module, so the per-sequence references are computed once.
pytestmark = pytest.mark.xdist_group("bidirectional")


@pytest.fixture(scope="module")
def setup():
  ds = ragged_features(LENGTHS, num_features=3, seed=4)
  model = BidirectionalLSTM(H, num_layers=2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1, 3)))["params"]
  apply = jax.jit(model.apply)  # one program per length, not one per operation (eager)
  alone = [apply({"params": params}, jnp.asarray(ds.sequence(i)[0])[None]) for i in range(len(ds))]
  return ds, apply, params, alone


def test_alone_backward_is_an_lstm_over_the_reversed_sequence(setup):
  ds, _, params, _ = setup
  one = BidirectionalLSTM(H, num_layers=1)
  p1 = {"forward_0": params["forward_0"], "backward_0": params["backward_0"]}
  x = jnp.asarray(ds.sequence(2)[0])[None]
  out, _ = jax.jit(one.apply)({"params": p1}, x)
  lstm = jax.jit(LSTM(H).apply)
  ref_f, _ = lstm({"params": {"layer_0": params["forward_0"]}}, x)
  ref_b, _ = lstm({"params": {"layer_0": params["backward_0"]}}, x[:, ::-1])
  assert max_rel_err(out[..., :H], ref_f) <= TOL
  assert max_rel_err(out[..., H:], ref_b[:, ::-1]) <= TOL


@pytest.mark.parametrize(
  "make",
  [
    lambda ds: batching.Pad(ds, batch_size=3, max_length=12),
    lambda ds: batching.Bucket(ds, batch_size=2, boundaries=[3, 9]),
    lambda ds: batching.Pack(ds, batch_size=2, row_length=12),
  ],
  ids=["pad", "bucket", "pack"],
)
def test_batches_equal_each_sequence_alone(setup, make):
  ds, apply, params, alone = setup
  strategy = make(ds)
  packed_rows = 0
  for plan, batch in zip(strategy.plan(0), strategy.batches(0)):
    out, carry = apply(
      {"params": params},
      jnp.asarray(batch.inputs),
      mask=jnp.asarray(batch.mask),
      resets=jnp.asarray(batch.resets),
    )
    out = np.asarray(out)
    assert np.all(out[~batch.mask] == 0)
    for r, row in enumerate(plan.rows):
      packed_rows += len(row) > 1
      for seq, _, pos, n in row:
        assert max_rel_err(out[r, pos : pos + n], np.asarray(alone[seq][0])[0]) <= TOL
      last = row[-1][0]  # both directions' states after the row's last sequence
      got = jax.tree.map(lambda a: a[r], carry)
      want = jax.tree.map(lambda a: a[0], alone[last][1])
      assert max_rel_err(got, want) <= TOL
  if isinstance(strategy, batching.Pack):
    assert packed_rows > 0


def test_trains_with_pack_and_refuses_tbptt():
  ds = ragged_features(LENGTHS, num_features=3, seed=4)
  model = SequenceModel(H, num_outputs=2, bidirectional=True)
  state = train.create_train_state(model, optax.adam(1e-2), ds)
  pack = batching.Pack(ds, batch_size=2, row_length=12)
  before = evaluation.evaluate(state, pack)["loss"]
  result = loop.fit(state, pack, epochs=10)
  assert evaluation.evaluate(result.state, pack)["loss"] < 0.9 * before
  with pytest.raises(ConfigError, match="bidirectional model needs whole sequences"):
    loop.fit(state, batching.TBPTT(ds, num_streams=2, chunk_length=4), epochs=1)


def test_the_runner_trains_a_bidirectional_model_and_refuses_chunking_strategies(tmp_path):
  """Config.model.bidirectional in the runner (the library had it, the runner not);
  with tbptt or vbptt in config.strategies it is one ConfigError before anything loads."""
  import sys
  from pathlib import Path

  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  from configs import compare
  from lstm_jax.checkpoint import Checkpointer
  from lstm_jax.runner import config, experiment

  cfg = compare.get_config("smoke")
  cfg.plots = False  # the PNGs: the shared smoke run's (test_smoke_writes_every_file_and_key)
  cfg.strategies = ("pad", "tbptt")
  cfg.model.bidirectional = True
  with pytest.raises(ConfigError, match=r"bidirectional needs whole sequences.*\['tbptt'\]"):
    config.validate_config(cfg)
  cfg.strategies = ("pack",)
  cfg.data.update(source="parity", num_sequences=120)
  cfg.data.lengths.update(min_length=2, max_length=30, median=10.0)
  cfg.train.update(tokens_per_step=256, epochs=1, real_tokens=0)
  cfg.tune_malloc, cfg.predict_costs = False, False
  summary = experiment.train_and_evaluate(cfg, str(tmp_path), quiet=True)
  assert summary[0]["strategy"] == "pack" and np.isfinite(summary[0]["eval_loss"])
  arrays, _ = Checkpointer(tmp_path / "checkpoints" / "pack-seed0").read()
  assert "backward" in str(jax.tree_util.tree_structure(arrays["params"]))
