"""Any recurrent cell under the LSTM's guarantees: Flax's GRU, MGU, simple RNN, LSTM and
OptimizedLSTM cells, and a cell of one's own, each alone at its exact length against packed rows
with resets, and one cell of each carry kind also padded, bucketed and fed in truncated-BPTT
chunks: the same outputs, final carry and gradients to float32 rounding (<= 1e-5 relative, as
tests/test_model.py holds the LSTM), and the same compile counts per strategy."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import HalfCell, four_strategies, max_rel_err, ragged_features
from lstm_jax import batching, layers, loop, train
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.model import CELLS, SequenceModel, stack_name
from lstm_jax.streaming import Streamer

TOL = 1e-5
LENGTHS = [1, 7, 3, 12, 5, 7, 3, 12, 1, 5, 7, 3]
H = 6


GENERIC = ["gru", "mgu", "simple", "flax_lstm", "optimized_lstm", HalfCell]
IDS = ["gru", "mgu", "simple", "flax_lstm", "optimized_lstm", "user_cell"]


@functools.lru_cache(maxsize=None)
def _setup(cell, bidirectional=False, num_layers=1):
  ds = ragged_features(LENGTHS, num_features=3, seed=0)
  model = SequenceModel(
    hidden_size=H, num_outputs=2, num_layers=num_layers, cell=cell, bidirectional=bidirectional
  )
  state = train.create_train_state(model, optax.sgd(0.1), ds, seed=0)
  return ds, model, state


@functools.partial(jax.jit, static_argnums=(0,))
def _alone_jit(model, params, x, y):
  """One sequence at its exact length, no mask, no resets: outputs, carry, loss gradient."""
  preds, carry = model.apply({"params": params}, x[None])

  def loss(p):
    out, _ = model.apply({"params": p}, x[None])
    return jnp.sum(jnp.mean(jnp.square(out[0] - y), axis=-1))

  return preds[0], carry, jax.grad(loss)(params)


def _alone(ds, model, state):
  return [_alone_jit(model, state.params, *ds.sequence(i)) for i in range(len(ds))]


@jax.jit
def _forward_and_grad(state, batch, carry):
  def f(p):
    out = train._forward(p, state, batch, carry)
    return out[1][0]["loss_sum"], out

  (_, out), g = jax.value_and_grad(f, has_aux=True)(state.params)
  return out, g


def _preds(state, batch, carry):
  return state.model.apply(
    {"params": state.params},
    batch.inputs,
    mask=batch.mask,
    resets=batch.resets,
    initial_carry=carry,
  )


_preds_jit = jax.jit(_preds)

# Fewer shapes than tests/test_model.py uses for the LSTM (compiles are most of these tests'
# time); each still puts sequences of different lengths in one batch, at row ends and mid-row.
STRATEGIES = {
  "pad": lambda ds: batching.Pad(ds, batch_size=5, max_length=17),
  "bucket": lambda ds: batching.Bucket(ds, batch_size=3, boundaries=[5, 12]),
  "pack": lambda ds: batching.Pack(ds, batch_size=2, row_length=15),
  "bucket_packed": lambda ds: batching.Bucket(ds, batch_size=2, boundaries=[8, 20], pack_rows=True),
}
WHOLE = ["pad", "bucket", "pack"]


def _check_whole_sequence_strategies(ds, model, state, names):
  alone = _alone(ds, model, state)
  for name in names:
    strat = STRATEGIES[name](ds)
    grad_sum, seen = None, set()
    for plan, batch in zip(strat.plan(0), strat.batches(0)):
      carry0 = model.zero_carry(plan.batch_size)
      out, carry = _preds_jit(state, batch, carry0)
      out = np.asarray(out)
      assert np.all(out[~batch.mask] == 0.0), name
      for r, row in enumerate(plan.rows):
        for seq, start, pos, n in row:
          assert start == 0 and n == LENGTHS[seq]
          assert max_rel_err(out[r, pos : pos + n], alone[seq][0]) <= TOL, (name, seq)
          seen.add(seq)
        last = row[-1][0]  # the row's carry: the state after its last sequence
        got = jax.tree.map(lambda a: a[r], carry)
        assert max_rel_err(got, jax.tree.map(lambda a: a[0], alone[last][1])) <= TOL, name
      _, g = _forward_and_grad(state, batch, carry0)
      grad_sum = g if grad_sum is None else jax.tree.map(jnp.add, grad_sum, g)
    assert seen == set(range(len(ds)))
    alone_sum = jax.tree.map(lambda *gs: sum(gs), *[a[2] for a in alone])
    assert max_rel_err(grad_sum, alone_sum) <= TOL, name


# Every layout for one cell of each carry kind: a single array (gru), an (c, h) pair
# (flax_lstm) and a carry that does not start at zeros (the user's cell). The other cells share
# those code paths (the generic cell stack is the same for all) and are checked in packed rows,
# the layout with the most to get wrong: padding at row ends, several sequences, resets.
FULL = ("gru", "flax_lstm", "user_cell")


def _layers(cell) -> int:
  """Two layers for the GRU, one for the others: stacking layers is the generic stack's own
  code (each layer's outputs, masked, are the next one's inputs), the same for every cell."""
  return 2 if cell == "gru" else 1


@pytest.mark.parametrize("cell", GENERIC, ids=IDS)
def test_any_cell_is_exact_padded_bucketed_and_packed(cell, request):
  ds, model, state = _setup(cell, num_layers=_layers(cell))
  assert stack_name(cell) == "rnn" and "rnn" in state.params
  full = request.node.callspec.id in FULL
  _check_whole_sequence_strategies(ds, model, state, WHOLE if full else ["pack"])


def _tbptt(ds, state, num_streams, chunk):
  """Per-sequence outputs gathered from the chunks, and the summed gradient, carrying the state
  from chunk to chunk as loop.fit does."""
  strat = batching.TBPTT(ds, num_streams=num_streams, chunk_length=chunk)
  carry, total = state.model.zero_carry(num_streams), None
  pieces = {i: [] for i in range(len(ds))}
  for plan, batch in zip(strat.plan(0), strat.batches(0)):
    out, _ = _preds_jit(state, batch, carry)
    for r, row in enumerate(plan.rows):
      for seq, start, pos, n in row:
        pieces[seq].append((start, np.asarray(out[r, pos : pos + n])))
    (_, (_, carry)), g = _forward_and_grad(state, batch, carry)
    total = g if total is None else jax.tree.map(jnp.add, total, g)
  outs = {
    i: np.concatenate([o for _, o in sorted(p, key=lambda t: t[0])]) for i, p in pieces.items()
  }
  return outs, total, strat


@pytest.mark.parametrize("cell", [c for c, i in zip(GENERIC, IDS) if i in FULL], ids=FULL)
def test_any_cell_tbptt_chunks_give_the_full_forward_and_gradient(cell):
  ds, model, state = _setup(cell, num_layers=_layers(cell))
  alone = _alone(ds, model, state)
  full_grad = jax.tree.map(lambda *gs: sum(gs), *[a[2] for a in alone])
  outs, _, _ = _tbptt(ds, state, num_streams=3, chunk=4)  # chunks cut sequences: carry handed on
  for i in range(len(ds)):
    assert max_rel_err(outs[i], alone[i][0]) <= TOL, i
  # one chunk holding each whole stream: resets separate its sequences, nothing is truncated
  loads = [
    sum(s[3] for s in row)
    for row in batching.TBPTT(ds, num_streams=3, chunk_length=1000).plan(0)[0].rows
  ]
  _, g, strat = _tbptt(ds, state, num_streams=3, chunk=max(loads))
  assert len(strat.plan(0)) == 1
  assert max_rel_err(g, full_grad) <= TOL
  _, g, _ = _tbptt(ds, state, num_streams=3, chunk=2)  # truncation is visible: the check can fail
  assert max_rel_err(g, full_grad) > 1e-3


@pytest.mark.parametrize("cell", ["gru", HalfCell], ids=["gru", "user_cell"])
def test_any_cell_bidirectional_is_exact_in_packed_bucket_rows(cell):
  # One layer: the stacking of bidirectional layers is `model.bidirectional_stack`, the same
  # code for every cell, checked with two layers in tests/test_bidirectional.py and NNX's.
  ds, model, state = _setup(cell, bidirectional=True, num_layers=1)
  assert model.zero_carry(2)[0][1] is not None  # (forward, backward) per layer
  # packed rows: several sequences per row, each reversed within its own extent
  _check_whole_sequence_strategies(ds, model, state, ["bucket_packed"])


def test_gru_fused_manual_backward_is_flaxs_gru_cell_under_autodiff():
  """The GRU's fused GEMMs and hand-written backward (recurrence.gru_recurrence, the default)
  against JAX's autodiff of Flax's own GRUCell (backward="autodiff"), on packed rows with masks
  and resets, two layers, a carry coming in: outputs, final carry and the gradients with respect
  to parameters, inputs and the initial carry. And against Flax's nn.RNN(nn.GRUCell) itself."""
  ds = ragged_features(LENGTHS, num_features=3, seed=0)
  batch = next(batching.Pack(ds, batch_size=3, row_length=20).batches(0))
  mask = batch.mask.copy()
  mask[0, -3:] = False  # padding at the end of a row
  assert batch.resets.sum() > 0
  models = [
    SequenceModel(hidden_size=H, num_outputs=2, num_layers=2, cell="gru", backward=b)
    for b in ("manual", "autodiff")
  ]
  params = train.create_train_state(models[0], optax.sgd(0.1), ds, seed=0).params
  carry0 = jax.tree.map(
    lambda a: jax.random.normal(jax.random.key(5), a.shape), models[0].zero_carry(3)
  )

  def loss(model, p, x, c):
    preds, carry = model.apply({"params": p}, x, mask=mask, resets=batch.resets, initial_carry=c)
    return jnp.sum(jnp.sin(preds)) + jnp.sum(jnp.cos(carry[1])), (preds, carry)

  got = [
    jax.jit(jax.grad(lambda *a, m=m: loss(m, *a), argnums=(0, 1, 2), has_aux=True))(
      params, jnp.asarray(batch.inputs), carry0
    )
    for m in models
  ]
  (grads_a, (preds_a, carry_a)), (grads_b, (preds_b, carry_b)) = got
  assert max_rel_err(preds_a, preds_b) <= TOL and max_rel_err(carry_a, carry_b) <= TOL
  assert max_rel_err(grads_a, grads_b) <= TOL
  # Flax's nn.RNN over one sequence at its own length, on the same layer-0 parameters
  cell = params["rnn"]["layer_0"]["cell"]
  x, mask = ds.sequence(3)[0][None], np.ones((1, 12), bool)
  flax_rnn = nn.RNN(nn.GRUCell(H), return_carry=True)

  def ours(p):
    return layers.cell_layer(nn.GRUCell, H, p, x, mask, ~mask, jnp.zeros((1, H)))

  def theirs(p):
    carry, ys = flax_rnn.apply({"params": {"cell": p}}, x)
    return ys, carry

  (ys_a, h_a), (ys_b, h_b) = jax.jit(ours)(cell), jax.jit(theirs)(cell)
  assert max_rel_err(ys_a, ys_b) <= TOL and max_rel_err(h_a, h_b) <= TOL
  grads = [
    jax.jit(jax.grad(lambda p, f=f: jnp.sum(jnp.sin(f(p)[0]))))(cell) for f in (ours, theirs)
  ]
  assert max_rel_err(*grads) <= TOL


def test_user_cell_resets_restore_its_own_initial_carry():
  """Two sequences packed in one row: the second starts from the cell's 0.5 state, as alone."""
  ds, model, state = _setup(HalfCell)
  carry = model.zero_carry(1)
  assert np.all(np.asarray(carry[0]) == 0.5)
  pair = ds.subset([1, 2])  # lengths 7 and 3
  pack = batching.Pack(pair, batch_size=1, row_length=10)
  (row,) = pack.plan(0)[0].rows
  assert len(row) == 2
  out, _ = _preds_jit(state, next(pack.batches(0)), carry)
  for seq, _, pos, n in row:
    alone = _alone_jit(model, state.params, *pair.sequence(seq))
    assert max_rel_err(np.asarray(out)[0, pos : pos + n], alone[0]) <= TOL


@pytest.mark.parametrize("name", ["pad", "bucket", "tbptt", "pack"])
def test_any_cell_compiles_once_per_shape(name):
  ds, strategy = four_strategies(name)
  model = SequenceModel(hidden_size=H, num_outputs=2, cell="gru")
  state = train.create_train_state(model, optax.adam(1e-2), ds, seed=0)
  result = loop.fit(state, strategy, epochs=2)
  assert result.steps.train.compiles == len(strategy.shapes()) == result.steps.train.traces
  assert np.isfinite(result.history[-1]["loss"])


def test_cell_names_and_bad_cells(monkeypatch):
  assert set(CELLS) == {"lstm", "flax_lstm", "optimized_lstm", "gru", "mgu", "simple"}
  ds = ragged_features([3, 4], num_features=3, seed=0)
  with pytest.raises(ConfigError, match=r"unknown cell 'lstn'"):
    train.create_train_state(
      SequenceModel(hidden_size=4, num_outputs=2, cell="lstn"), optax.sgd(1), ds
    )
  with pytest.raises(ConfigError, match="RNNCellBase subclass"):
    train.create_train_state(
      SequenceModel(hidden_size=4, num_outputs=2, cell=int), optax.sgd(1), ds
    )
  state = train.create_train_state(
    SequenceModel(hidden_size=4, num_outputs=2, cell="gru"), optax.sgd(1), ds
  )
  # the check traces the model once for each model, feature count and parameter shapes (every
  # evaluation checks), and a count it accepted for these parameters does not pass another
  traced, eval_shape = [], jax.eval_shape
  monkeypatch.setattr(jax, "eval_shape", lambda *a, **k: traced.append(1) or eval_shape(*a, **k))
  train.check_model_fits_data(state.model, ds, state.params)
  once = len(traced)  # (flax's apply calls eval_shape inside too)
  assert once > 0
  for _ in range(3):
    train.check_model_fits_data(state.model, ds, state.params)
  assert len(traced) == once
  wide = ragged_features([3, 4], num_features=5, seed=0)
  with pytest.raises(DataError, match="the data has 5 features per step but the model's"):
    loop.fit(state, batching.Pad(wide, batch_size=2), epochs=1)
  assert len(traced) > once
  with pytest.raises(ConfigError, match="implemented for cell='lstm' only"):
    train.create_train_state(
      SequenceModel(hidden_size=4, num_outputs=2, cell="gru", matmul_dtype="bfloat16"),
      optax.sgd(1),
      ds,
    )


def test_any_cell_streams_and_resets_to_its_own_initial_carry():
  """Streaming inference with a user cell: two chunks equal one forward pass, and a reset stream
  starts again from the cell's 0.5 state (not zeros)."""
  ds, model, state = _setup(HalfCell)
  x, y = ds.sequence(3)  # 12 steps
  alone = _alone_jit(model, state.params, x, y)[0]
  streamer = Streamer(model, state.params, batch_size=2)
  two = np.stack([x, x])
  first = streamer(two[:, :5])
  second = streamer(two[:, 5:])
  assert max_rel_err(np.concatenate([first[0], second[0]]), alone) <= TOL
  streamer.reset([1])
  again = streamer(two[:, :5])
  assert max_rel_err(again[1], alone[:5]) <= TOL  # stream 1 afresh from the cell's own state
  assert max_rel_err(again[0], alone[:5]) > 1e-3  # stream 0 continued: it differs


def test_runner_trains_a_gru_and_records_it(tmp_path, capsys):
  """The runner with model.cell=gru (in process, on the smoke preset with fewer sequences):
  trains, names the cell in the results and the report, and a rerun reads the finished rows
  back instead of training again."""
  from configs import compare
  from lstm_jax.runner import experiment

  cfg = compare.get_config("smoke")
  cfg.plots = False  # the PNGs: the shared smoke run's (test_smoke_writes_every_file_and_key)
  cfg.model.cell = "gru"
  cfg.strategies = ("tbptt",)
  cfg.data.max_sequences = 200
  cfg.predict_costs = False
  experiment.train_and_evaluate(cfg, str(tmp_path))
  meta = json.loads((tmp_path / "meta.json").read_text())
  assert meta["config"]["model"]["cell"] == "gru"
  result = json.loads((tmp_path / "results" / "tbptt-seed0.json").read_text())
  assert result["settings"]["model.cell"] == "gru" and result["row"]["steps"] >= 5
  assert "(GRU H=16" in (tmp_path / "report.md").read_text()
  capsys.readouterr()
  experiment.train_and_evaluate(cfg, str(tmp_path))
  assert "tbptt seed 0: finished earlier" in capsys.readouterr().err
