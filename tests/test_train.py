"""Training: compile counts per strategy, the step updates every parameter, learning a task with a
known answer, losses accumulated as sums, determinism, and clear errors when data and model
disagree."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import max_rel_err, ragged_features
from lstm_jax import batching, compiles, evaluation, loop, tasks, train
from lstm_jax.compiles import CountedJit
from lstm_jax.data import RaggedDataset, next_token_dataset
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.model import SequenceModel

LENGTHS = np.random.default_rng(3).integers(1, 25, size=40)


@pytest.fixture(scope="module")
def data():
  return ragged_features(LENGTHS, num_features=3, seed=0)


def _state(ds, hidden=8, lr=1e-2, seed=0, **kw):
  model = SequenceModel(hidden_size=hidden, num_outputs=ds.target_dim or ds.num_classes, **kw)
  return train.create_train_state(model, optax.adam(lr), ds, seed=seed)


def _compile_case(name, data):
  """(strategy, expected train compiles over two epochs) for each strategy."""
  if name == "vbptt":
    vbptt = batching.VariableTBPTT(data, num_streams=4, base_length=12)
    expected = len(vbptt.shapes(num_epochs=2))
    assert 1 < expected <= 4  # at most its 4 chunk shapes
    return vbptt, expected
  if name == "pad_batch_max":
    pbm = batching.PadBatchMax(data, batch_size=8)
    expected = len(pbm.shapes(num_epochs=2))
    assert expected > 1
    return pbm, expected
  return {
    "pad": (batching.Pad(data, batch_size=8), 1),
    "tbptt": (batching.TBPTT(data, num_streams=4, chunk_length=6), 1),
    "pack": (batching.Pack(data, batch_size=4, row_length=30), 1),
    "bucket": (batching.Bucket(data, batch_size=8, boundaries=[6, 12, 18, 24]), 4),
    "bucket_packed": (
      batching.Bucket(data, batch_size=4, boundaries=[6, 12, 18, 24], pack_rows=True),
      4,
    ),
  }[name]


@pytest.mark.parametrize(
  "name", ["pad", "tbptt", "pack", "bucket", "bucket_packed", "vbptt", "pad_batch_max"]
)
def test_compile_counts_per_strategy(data, name):
  """pad, tbptt, pack: one train compile for two epochs of mixed lengths; bucket: one per
  bucket; pad_batch_max: one per distinct batch maximum. Traces equal compiles (no retrace)."""
  strategy, expected = _compile_case(name, data)
  result = loop.fit(_state(data), strategy, epochs=2)
  steps = result.steps.train
  assert steps.compiles == expected
  assert steps.traces == expected
  assert len(result.history) == len(strategy.plan(0)) + len(strategy.plan(1))
  assert steps.compile_seconds > 0
  assert all(r.temp_bytes is not None for r in steps.records.values())
  ev = train.StepFunctions.create()
  evaluation.evaluate(result.state, strategy, steps=ev)
  evaluation.evaluate(result.state, strategy, steps=ev)
  assert ev.eval.compiles == len(strategy.shapes())


def test_lr_scale_scales_the_update_exactly(data):
  """SGD: a step with lr_scale 0.5 moves every parameter half as far; 1.0 is plain SGD."""
  state = train.create_train_state(SequenceModel(8, num_outputs=2), optax.sgd(0.1), data)
  batch = next(batching.Pad(data, batch_size=8).batches(0))
  carry = state.model.zero_carry(8)
  start = jax.tree.map(np.asarray, state.params)
  grads = jax.grad(lambda p: train._forward(p, state, batch, carry, training=True)[0])(state.params)
  full, _, _ = jax.jit(train.train_step)(state, batch, carry, np.float32(1.0))
  half, _, _ = jax.jit(train.train_step)(state, batch, carry, np.float32(0.5))
  for p0, g, f, h in zip(*(jax.tree.leaves(t) for t in (start, grads, full.params, half.params))):
    np.testing.assert_allclose(np.asarray(f), p0 - 0.1 * np.asarray(g), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(h), p0 - 0.05 * np.asarray(g), rtol=1e-6, atol=1e-7)


def test_counted_jit_counts_a_new_shape_and_never_repeats():
  f = CountedJit(lambda a, b: (a * b).sum(), name="f", label_argnum=0)
  for n in (3, 3, 4, 3, 4):
    f(jnp.ones(n), jnp.ones(n))
  assert f.compiles == 2 and f.traces == 2
  assert sorted(f.summary()["per_shape"]) == ["3", "4"]


def test_every_parameter_changes_after_one_step(data):
  state = _state(data, num_layers=2)
  before = jax.tree.map(np.asarray, state.params)
  result = loop.fit(state, batching.Pad(data, batch_size=40), epochs=1)
  after = result.state.params
  flat_before = jax.tree_util.tree_flatten_with_path(before)[0]
  unchanged = [
    jax.tree_util.keystr(path)
    for (path, a), b in zip(flat_before, jax.tree.leaves(after))
    if np.any(np.asarray(a) == np.asarray(b))
  ]  # every single entry must move
  assert int(result.state.step) == 1
  assert not unchanged, f"entries that did not move: {unchanged}"


def test_learns_the_adding_problem_well_below_the_trivial_baseline():
  ds = tasks.adding_problem(3000, tasks.LengthDistribution("uniform", 4, 16), seed=0)
  tr, ev = ds.split(0.1, seed=0)
  state = _state(tr, hidden=32, lr=1e-2)
  result = loop.fit(state, batching.Bucket(tr, batch_size=32, num_buckets=3), epochs=8)
  loss = evaluation.evaluate(result.state, batching.Pad(ev, batch_size=100))["loss"]
  assert loss < 0.1 * tasks.ADDING_BASELINE_MSE, loss


def test_losses_accumulate_as_sums_not_means_of_batches(data):
  state = _state(data)
  a = evaluation.evaluate(state, batching.Pad(data, batch_size=7))
  b = evaluation.evaluate(state, batching.Bucket(data, batch_size=3, num_buckets=5))
  c = evaluation.evaluate(state, batching.TBPTT(data, num_streams=3, chunk_length=5))
  # reference: every real step's squared error averaged over all real steps, from one batch
  # holding the whole data set (padding invariance itself is tested in test_model.py)
  whole = next(batching.Pad(data, batch_size=len(data)).batches(0))
  preds, _ = state.apply_fn({"params": state.params}, whole.inputs, mask=whole.mask)
  per_step, _ = train.per_step_loss(preds, whole.targets, "regression")
  ref = float(np.asarray(per_step, np.float64)[whole.mask].mean())
  for r in (a, b, c):
    assert r["weight_sum"] == LENGTHS.sum() and r["real_tokens"] == LENGTHS.sum()
    assert abs(r["loss"] - ref) <= 1e-5 * ref


def test_same_seed_same_numbers(data):
  runs = []
  for _ in range(2):
    r = loop.fit(
      _state(data, seed=5), batching.TBPTT(data, num_streams=4, chunk_length=6, seed=5), epochs=2
    )
    runs.append(([h["loss"] for h in r.history], jax.tree.map(np.asarray, r.state.params)))
  assert runs[0][0] == runs[1][0]
  assert all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(runs[1][1]))
  )
  other = loop.fit(
    _state(data, seed=6), batching.TBPTT(data, num_streams=4, chunk_length=6, seed=5), epochs=1
  )
  assert [h["loss"] for h in other.history] != runs[0][0][: len(other.history)]


def test_fit_records_each_step_and_stops_at_a_token_budget(data):
  result = loop.fit(_state(data), batching.Pad(data, batch_size=8), real_tokens=100)
  assert result.real_tokens >= 100 and result.real_tokens - result.history[-1]["real_tokens"] < 100
  for key in ("step", "epoch", "loss", "real_tokens", "computed_tokens", "step_seconds", "shape"):
    assert key in result.history[0]
  assert all(h["computed_tokens"] == 8 * LENGTHS.max() for h in result.history)


def test_tbptt_carry_is_handed_on_within_an_epoch(data):
  strategy = batching.TBPTT(data, num_streams=4, chunk_length=6)
  result = loop.fit(_state(data), strategy, epochs=1)
  assert result.carry is not None and float(jnp.abs(result.carry[0][1]).max()) > 0


def test_token_language_model_learns_a_rule_it_could_not_guess():
  """Counting mod 12 from a random start: every next token follows from the current one, so a
  model that learns reaches near-perfect accuracy, where guessing scores 1/12 and log(12) nats.
  (Replaces a test that asserted only a finite loss and an accuracy in [0, 1].)"""
  rng = np.random.default_rng(0)
  seqs = [(rng.integers(0, 12) + np.arange(n)) % 12 for n in rng.integers(2, 30, 40)]
  ds = next_token_dataset(seqs, 12)
  state = _state(ds, num_layers=2, vocab_size=12, embed_dim=8)
  before = evaluation.evaluate(state, batching.Pad(ds, batch_size=40))
  result = loop.fit(state, batching.Pack(ds, batch_size=4), epochs=30)
  assert result.steps.train.compiles == 1
  after = evaluation.evaluate(result.state, batching.Pad(ds, batch_size=40))
  assert before["accuracy"] < 0.25 and before["loss"] > 0.8 * np.log(12)
  assert after["accuracy"] > 0.95 and after["loss"] < 0.2, after


# --- data that does not fit the model: caught before any compile -----------------------------
def test_labels_out_of_range_for_the_head():
  ds = tasks.running_parity(10, [3, 4], seed=0)  # 2 classes
  model = SequenceModel(hidden_size=4, num_outputs=1)
  with pytest.raises(DataError, match=r"label 1 is out of range for a head with 1 outputs"):
    train.create_train_state(model, optax.adam(1e-3), ds)


def test_feature_size_differs_from_the_model(data):
  state = _state(data)
  other = ragged_features(LENGTHS, num_features=5)
  steps = train.StepFunctions.create()
  with pytest.raises(DataError, match="5 features per step but the model was initialised for 3"):
    loop.fit(state, batching.Pad(other, batch_size=8), epochs=1, steps=steps)
  assert steps.train.compiles == 0


def test_token_data_into_a_feature_model(data):
  ds = next_token_dataset([np.arange(5), np.arange(4)], vocab_size=6)
  with pytest.raises(
    DataError, match="the data holds token ids but the model takes float features"
  ):
    train.create_train_state(SequenceModel(4, num_outputs=6), optax.adam(1e-3), ds)


def test_fit_needs_a_stopping_rule(data):
  with pytest.raises(ConfigError, match="epochs or real_tokens"):
    loop.fit(_state(data), batching.Pad(data, batch_size=8))


@pytest.fixture
def without_jax_cache():
  """JAX's own persistent cache (which the suite turns on, tests/conftest.py) off for one test,
  so that what is checked is the ExecutableCache alone."""
  from jax.experimental.compilation_cache import compilation_cache

  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_enable_compilation_cache", True)
  compilation_cache.reset_cache()


def _cached_steps(ds, cache_dir, learning_rate=1e-2, hidden=8):
  """A train step through an ExecutableCache in `cache_dir`, compiled for one bucket shape."""
  compiles.enable_executable_cache(str(cache_dir / "executables"))
  try:
    model = SequenceModel(hidden_size=hidden, num_outputs=2)
    state = train.create_train_state(model, optax.adam(learning_rate), ds, seed=0)
    steps = train.StepFunctions.create()
    strategy = batching.Bucket(ds, batch_size=4, boundaries=[16])
    result = loop.fit(state, strategy, epochs=1, steps=steps)
  finally:
    compiles.disable_executable_cache()
  return steps.train, result.state.params


def test_executable_cache_loads_the_same_program_and_only_that(tmp_path, without_jax_cache):
  """A second identical step loads the stored executable and gives bit-identical parameters; a
  different learning rate or model traces to a different program and compiles afresh."""
  ds = ragged_features([3, 9, 4, 12, 7, 5, 2, 10], num_features=3, seed=1)
  first, p1 = _cached_steps(ds, tmp_path)
  again, p2 = _cached_steps(ds, tmp_path)
  assert (first.cache_loads, again.cache_loads) == (0, 1)
  assert first.compiles == again.compiles == 1
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
  other_lr, p3 = _cached_steps(ds, tmp_path, learning_rate=1e-3)
  other_model, _ = _cached_steps(ds, tmp_path, hidden=6)
  assert other_lr.cache_loads == 0 and other_model.cache_loads == 0
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p3)))
  assert len(list((tmp_path / "executables").glob("*.xla"))) == 3
  # compiled with XLA's optimizations switched the other way: another executable, not this one
  flag = jax.config.read("jax_disable_most_optimizations")
  try:
    jax.config.update("jax_disable_most_optimizations", not flag)
    switched, _ = _cached_steps(ds, tmp_path)
  finally:
    jax.config.update("jax_disable_most_optimizations", flag)
  assert switched.cache_loads == 0
  assert len(list((tmp_path / "executables").glob("*.xla"))) == 4


def test_damaged_executable_cache_entry_is_compiled_again(tmp_path, without_jax_cache):
  ds = ragged_features([3, 9, 4, 12, 7, 5, 2, 10], num_features=3, seed=1)
  _, p1 = _cached_steps(ds, tmp_path)
  (entry,) = (tmp_path / "executables").glob("*.xla")
  entry.write_bytes(entry.read_bytes()[:100])
  with pytest.warns(UserWarning, match="could not be loaded.*compiling again"):
    step, p2 = _cached_steps(ds, tmp_path)
  assert step.cache_loads == 0 and step.compiles == 1
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
  loaded, _ = _cached_steps(ds, tmp_path)  # the rewritten entry loads
  assert loaded.cache_loads == 1


def test_an_executable_from_jaxs_cache_is_not_stored_again(tmp_path):
  """Both caches on (as compiles.enable_persistent_cache sets them), a program JAX's cache
  already holds: what JAX loads cannot be serialized again (the copy failed at its first call
  with "NOT_FOUND: Function ... not found"), so the ExecutableCache does not store it, and the
  next run loads the program from JAX's cache and gives the same parameters."""
  ds = ragged_features([3, 9, 4, 12, 7, 5, 2, 10], num_features=3, seed=1)
  assert jax.config.jax_compilation_cache_dir  # tests/conftest.py turns it on
  _, p0 = _cached_steps(ds, tmp_path / "first", learning_rate=2e-2)  # compiled: stored in both
  assert len(list((tmp_path / "first" / "executables").glob("*.xla"))) == 1
  step, p1 = _cached_steps(ds, tmp_path / "second", learning_rate=2e-2)  # JAX's cache answers
  assert step.cache_loads == 0
  assert not list((tmp_path / "second" / "executables").glob("*.xla"))
  again, p2 = _cached_steps(ds, tmp_path / "second", learning_rate=2e-2)
  assert again.cache_loads == 0
  for p in (p1, p2):
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p)))


@pytest.mark.parametrize("source, layout", [("pack", "pad"), ("bucket", "pack"), ("pad", "pack")])
def test_relayout_keeps_the_training_trajectory(source, layout):
  """Layout without composition: the same sequences per step, laid out padded or packed, train
  the same trajectory to float32 rounding (losses per step and final parameters), so a
  difference between two strategies' runs that survives relayout comes from which sequences
  share a step, not from padding or packing (the science issue's ablation)."""
  lengths = np.random.default_rng(3).integers(2, 20, size=30)
  data = ragged_features(lengths, num_features=3, seed=4)
  src = {
    "pack": lambda: batching.Pack(data, batch_size=3, row_length=24, seed=1),
    "bucket": lambda: batching.Bucket(data, batch_size=4, num_buckets=3, seed=1),
    "pad": lambda: batching.Pad(data, batch_size=5, seed=1),
  }[source]()
  relaid = batching.Relayout(src, layout, row_length=24)
  assert len(relaid.shapes(2)) == 1 and relaid.name == f"{source}_as_{layout}"
  for a, b in zip(src.plan(1), relaid.plan(1)):  # the same sequences in every step
    assert sorted(s.sequence for r in a.rows for s in r) == sorted(
      s.sequence for r in b.rows for s in r
    )
    assert a.real_tokens == b.real_tokens
  want = loop.fit(_state(data), src, epochs=2)
  got = loop.fit(_state(data), relaid, epochs=2)
  assert len(want.history) == len(got.history) == 2 * len(src.plan(0))
  np.testing.assert_allclose(
    [h["loss"] for h in got.history], [h["loss"] for h in want.history], rtol=1e-5
  )
  assert max_rel_err(got.state.params, want.state.params) <= 1e-5
  with pytest.raises(ConfigError, match="relayout needs whole sequences"):
    batching.Relayout(batching.TBPTT(data, num_streams=2, chunk_length=4))


def test_fit_assembles_the_next_batch_while_the_step_runs(data, monkeypatch):
  """Input overlapped with compute, even with no assembly thread (prefetch=0): fit
  dispatches a step (JAX returns at once) and assembles and dispatches the next batch before it
  waits for that step's metrics, so the host never holds the device up between steps. Seen in
  the order of fit's calls:
  assemble 1, dispatch 1, assemble 2, dispatch 2, fetch 1, assemble 3, ... fetch N."""
  strategy = batching.Pad(data, batch_size=8)
  steps = train.StepFunctions.create()
  state = _state(data)
  train.precompile(steps.train, state, strategy, 0)
  events = []
  batch, call, get = train.StepFunctions.batch, CountedJit.__call__, jax.device_get

  def logged(kind, fn):
    def wrapper(*a, **k):
      events.append(kind)
      return fn(*a, **k)

    return wrapper

  monkeypatch.setattr(train.StepFunctions, "batch", logged("assemble", batch))
  monkeypatch.setattr(CountedJit, "__call__", logged("dispatch", call))
  monkeypatch.setattr(jax, "device_get", logged("fetch", get))
  result = loop.fit(
    state, strategy, epochs=1, steps=steps, pipeline=loop.Pipeline(prefetch=0)
  )  # in the loop
  n = len(result.history)
  assert n == len(strategy.plan(0)) >= 3
  expected = ["assemble", "dispatch"]
  for _ in range(n - 1):
    expected += ["assemble", "dispatch", "fetch"]
  assert events == expected + ["fetch"]


def _fit_threads() -> list:
  return [t for t in threading.enumerate() if t.name == "fit-batches"]


def test_batches_assembled_ahead_on_a_thread_give_the_same_run(data, monkeypatch):
  """prefetch: batches are assembled on the "fit-batches" thread, ahead of the
  steps: the step of batch k is dispatched only once batch k + 1 is assembled (the dispatch
  waits for it; with no thread ahead it would wait in vain). The run is bit for bit the one
  assembled in the loop (tbptt: the carry crosses batches), and no thread is left after."""
  strategy = batching.TBPTT(data, num_streams=4, chunk_length=6)
  steps = train.StepFunctions.create()
  want = loop.fit(_state(data), strategy, epochs=2, steps=steps, pipeline=loop.Pipeline(prefetch=0))
  batch, call = train.StepFunctions.batch, CountedJit.__call__
  assembled, where, dispatched = [], set(), []
  ready = [threading.Event() for _ in range(len(want.history) + 2)]

  def assemble(self, dataset, plan, right_padded=False):
    out = batch(self, dataset, plan, right_padded)
    where.add(threading.current_thread().name)
    assembled.append(plan)
    ready[len(assembled)].set()
    return out

  def dispatch(self, *a, **k):
    if self.name == "train_step":
      dispatched.append(len(assembled))
      k_next = min(len(dispatched) + 1, len(want.history))
      assert ready[k_next].wait(timeout=60), "the next batch was not assembled ahead"
    return call(self, *a, **k)

  monkeypatch.setattr(train.StepFunctions, "batch", assemble)
  monkeypatch.setattr(CountedJit, "__call__", dispatch)
  got = loop.fit(_state(data), strategy, epochs=2, steps=steps, pipeline=loop.Pipeline(prefetch=2))
  assert where == {"fit-batches"}
  assert len(assembled) == len(want.history)  # nothing assembled past the last step
  assert [h["loss"] for h in got.history] == [h["loss"] for h in want.history]
  assert max_rel_err(got.state.params, want.state.params) == 0.0
  assert _fit_threads() == []


def test_prefetch_stops_where_training_stops_and_passes_errors_on(data, monkeypatch):
  """The assembly thread plans nothing past the budget (no epoch 1 for a run that stops in
  epoch 0), stops when fit stops, and an error it meets (a damaged file, say) is raised by fit
  itself, once, at that batch."""
  strategy = batching.Pad(data, batch_size=4)
  planned = []
  plan = strategy._plan
  monkeypatch.setattr(strategy, "_plan", lambda e, rng: planned.append(e) or plan(e, rng))
  loop.fit(_state(data), strategy, epochs=1, pipeline=loop.Pipeline(prefetch=3))
  assert planned == [0]  # the epoch's last batch ends the stream: epoch 1 is never planned
  result = loop.fit(_state(data), strategy, real_tokens=20, pipeline=loop.Pipeline(prefetch=3))
  assert len(result.history) < len(strategy.plan(0))  # stopped with the thread ahead of it
  assert _fit_threads() == []

  batch, calls = train.StepFunctions.batch, []

  def damaged(self, dataset, p, right_padded=False):
    calls.append(p)
    if len(calls) == 3:
      raise DataError("store file values.bin is truncated")
    return batch(self, dataset, p)

  monkeypatch.setattr(train.StepFunctions, "batch", damaged)
  seen = []
  with pytest.raises(DataError, match="truncated"):
    loop.fit(
      _state(data),
      strategy,
      epochs=1,
      pipeline=loop.Pipeline(prefetch=2),
      hooks=loop.Hooks(on_step=seen.append),
    )
  # no batch after it; of the two steps before it, the first is recorded (the second's metrics
  # are fetched once a third is dispatched, as without the thread)
  assert len(calls) == 3 and len(seen) == 1
  assert _fit_threads() == []


def test_background_compiles_give_the_same_run_with_each_shape_compiled_once(data):
  """compile_shapes="background": the first batch's shape is compiled first, then
  the others in the order training meets them, while training goes on; the parameters are bit
  for bit those of a run that compiled everything ahead, and every shape compiles (and traces)
  exactly once. A step that waited for its shape is marked compiled, as a lazily compiling one."""
  strategy = batching.Bucket(data, batch_size=4, boundaries=[6, 12, 18, 24])
  order = train.shapes_in_order(strategy, 0)
  assert order[0] == strategy.plan(0)[0].shape and sorted(order) == strategy.shapes()
  assert train.shapes_in_order(strategy, 0, first=[order[-1]])[0] == order[-1]
  ahead = loop.fit(_state(data), strategy, epochs=2)
  results = {}
  for mode in ("background", "lazily"):
    results[mode] = loop.fit(
      _state(data), strategy, epochs=2, pipeline=loop.Pipeline(compile_shapes=mode)
    )
  for mode, result in results.items():
    fn = result.steps.train
    assert fn.compiles == fn.traces == len(strategy.shapes()) == 4, mode
    assert jax.tree.all(jax.tree.map(np.array_equal, result.state.params, ahead.state.params))
    waited = [h for h in result.history if h["compiled"]]
    assert fn.blocked_calls == len(waited) <= 4 and fn.last_compile_finished is not None
  assert sum(h["compiled"] for h in results["lazily"].history) == 4  # each shape, once
  assert not any(h["compiled"] for h in ahead.history)
  with pytest.raises(ConfigError, match=r"compile_shapes must be one of \('ahead', 'lazily'"):
    loop.fit(
      _state(data), strategy, epochs=1, pipeline=loop.Pipeline(compile_shapes=True)
    )  # the old tri-state's True


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: loop.Pipeline(compile_workers=0), r"compile_workers must be >= 1, got 0"),
    (lambda: loop.Pipeline(compile_workers=2), r'set compile_shapes="background"'),
    (lambda: loop.Pipeline(prefetch=-1), r"prefetch must be >= 0"),
    (lambda: loop.Hooks(on_eval=lambda s, t: None), r"on_eval without eval_every_tokens"),
    (lambda: loop.Hooks(eval_every_tokens=100), r"eval_every_tokens without on_eval"),
    (lambda: loop.Hooks(eval_every_tokens=0, on_eval=print), r"eval_every_tokens must be >= 1"),
    (lambda: loop.Checkpointing("runs/ckpt"), r"needs a lstm_jax.Checkpointer, got str"),
    (lambda: loop.Checkpointing(None, settings={}), r"settings or resumed without a checkpointer"),
  ],
)
def test_fits_records_refuse_what_would_be_ignored_or_wrong(make, match):
  """fit's three records check themselves when built, so a setting that would be silently
  ignored (an evaluation never scheduled, workers that never compile, settings with nothing to
  check them against) is one ConfigError naming the fix."""
  with pytest.raises(ConfigError, match=match):
    make()


def test_fit_refuses_a_record_of_the_wrong_kind(data):
  """A dict (or the old keyword's value) where a record belongs is named, not half-used."""
  strategy = batching.Pad(data, batch_size=4)
  with pytest.raises(ConfigError, match=r"fit's hooks= takes a lstm_jax.loop.Hooks, got dict"):
    loop.fit(_state(data), strategy, epochs=1, hooks=dict(progress=True))
  with pytest.raises(ConfigError, match=r"fit's checkpointing= takes .*Checkpointing, got Pipe"):
    loop.fit(_state(data), strategy, epochs=1, checkpointing=loop.Pipeline())


def test_a_background_compile_error_reaches_the_caller(data):
  """An error in a background compile (here its on_compiled check, as the runner's memory guard
  would be) is raised by the call that needs that shape and by raise_background_errors."""
  strategy = batching.Bucket(data, batch_size=4, boundaries=[12, 24])
  state, steps = _state(data), train.StepFunctions.create()

  def refuse(args, record):
    if args[1].inputs.shape[1] == 24:
      raise DataError(f"shape {record.label} refused")

  train.compile_in_background(steps.train, state, strategy, on_compiled=refuse)
  args = train.abstract_step_args(steps.train, state, data, (4, 24), strategy.right_padded)
  with pytest.raises(DataError, match="refused"):
    steps.train.compile(*args)
  with pytest.raises(DataError, match="refused"):
    steps.train.raise_background_errors()
  ok = train.abstract_step_args(steps.train, state, data, (4, 12), strategy.right_padded)
  assert steps.train.compile(*ok) is not None  # the other shape compiled fine


def test_predict_gives_each_sequence_what_it_gives_alone_and_evaluates_the_same():
  """`evaluation.predict` for research code. Bucketed batches with a mask: each
  sequence's per-step outputs equal the model applied to it alone (float32 rounding), the
  sequence-level classes score the accuracy `evaluate` reports, and it compiles once per
  bucket shape."""
  from lstm_jax.data import RaggedDataset

  lengths = np.random.default_rng(3).integers(2, 25, size=30)
  feats = ragged_features(lengths, num_features=3, seed=4)
  labels = np.random.default_rng(5).integers(0, 3, size=len(lengths))
  ds = RaggedDataset(feats.values, lengths, labels, target_level="sequence", num_classes=3)
  model = SequenceModel(8, num_outputs=3)
  state = train.create_train_state(model, optax.adam(1e-2), ds, seed=1)
  state = loop.fit(state, batching.Pad(ds, batch_size=6), epochs=2).state
  got = evaluation.predict(state, ds, batch_size=8, num_buckets=3)
  assert got.compiles == 3 and len(got.outputs) == len(ds)
  for i in np.argsort(lengths)[::6]:  # five sequences, short to long
    x, _ = ds.sequence(i)
    alone, _ = model.apply({"params": state.params}, jnp.asarray(x)[None])
    assert got.outputs[i].shape == (lengths[i], 3)
    assert max_rel_err(got.outputs[i], np.asarray(alone[0])) < 1e-5, i
  assert np.allclose(got.probabilities.sum(axis=1), 1.0)
  accuracy = float(np.mean(got.classes == labels))
  want = evaluation.evaluate(state, batching.Pad(ds, batch_size=6))["accuracy"]
  assert abs(accuracy - want) < 1e-12


def _labelled(n=12, classes=3, seed=0):
  """Sequence-level classification: n sequences of 3 to 8 steps, labels 0 (most), 1, 2."""
  from lstm_jax.data import RaggedDataset

  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, 9, size=n)
  values = rng.normal(size=(int(lengths.sum()), 2)).astype(np.float32)
  labels = np.array(([0] * (n // 2) + [1] * (n // 3) + [2] * n)[:n], np.int32)
  return RaggedDataset(
    values, lengths, labels, target_level="sequence", num_classes=classes, name="labelled"
  )


def test_class_weights_weigh_the_training_loss_only():
  """Class_weights. "balanced" is n / (C * n_c) of the training targets; a batch's
  training loss is sum(w_i c_i l_i) / sum(w_i c_i) (computed here by hand from the per-step
  losses); weights all 1 change nothing, bit for bit; the metrics and the eval step ignore
  them; bad weights and regression data are one ConfigError each."""
  ds = _labelled()
  model = SequenceModel(hidden_size=5, num_outputs=3)
  plain = train.create_train_state(model, optax.sgd(0.1), ds, seed=0)
  balanced = train.create_train_state(model, optax.sgd(0.1), ds, seed=0, class_weights="balanced")
  counts = np.bincount(ds.targets, minlength=3)
  assert np.allclose(balanced.class_weights, 12 / (3 * counts)) and counts.tolist() == [6, 4, 2]
  batch = next(batching.Pad(ds, batch_size=12).batches(0))
  carry = model.zero_carry(12)
  mean, (metrics, _) = train._forward(plain.params, balanced, batch, carry, training=True)
  preds, _ = plain.apply_fn({"params": plain.params}, batch.inputs, mask=batch.mask)
  loss, _ = train.per_step_loss(preds, batch.targets, "classification")
  w = batch.weights * np.asarray(balanced.class_weights)[batch.targets]
  assert float(mean) == pytest.approx(float(np.sum(w * loss) / np.sum(w)), rel=1e-6)
  unweighted, (plain_metrics, _) = train._forward(plain.params, plain, batch, carry, True)
  assert float(mean) != pytest.approx(float(unweighted), rel=1e-4)  # the weights do something
  assert jax.tree.map(float, metrics) == jax.tree.map(float, plain_metrics)  # metrics: plain
  ones = train.create_train_state(model, optax.sgd(0.1), ds, seed=0, class_weights="1,1,1")
  g1 = jax.grad(lambda p: train._forward(p, ones, batch, carry, True)[0])(plain.params)
  g0 = jax.grad(lambda p: train._forward(p, plain, batch, carry, True)[0])(plain.params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)))
  evaluated = train.eval_step(balanced, batch, carry)[0]
  assert jax.tree.map(float, evaluated) == jax.tree.map(float, plain_metrics)
  for bad in ("1,2", "1,x,1", "-1,1,1", "0,0,0"):
    with pytest.raises(ConfigError, match="class weights"):
      train.create_train_state(model, optax.sgd(0.1), ds, class_weights=bad)
  with pytest.raises(ConfigError, match="class weights apply to classification"):
    reg = ragged_features([3, 4], num_features=2, target_level="sequence")
    train.create_train_state(
      SequenceModel(4, num_outputs=2), optax.sgd(0.1), reg, class_weights="balanced"
    )


def test_the_runner_passes_config_class_weights_to_the_state():
  import sys
  from pathlib import Path

  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
  from configs import compare
  from lstm_jax.runner import build

  cfg = compare.get_config("smoke")
  cfg.train.class_weights = "balanced"
  state = build.new_train_state(cfg, _labelled(), seed=0, total_steps=10)
  assert np.allclose(state.class_weights, [12 / 18, 12 / 12, 12 / 6])
  cfg.train.class_weights = ""
  assert build.new_train_state(cfg, _labelled(), seed=0, total_steps=10).class_weights is None


def test_a_custom_loss_trains_under_any_strategy_and_stays_exact():
  """create_train_state(loss=...): a custom per-step loss. One that computes the built-in
  cross-entropy trains bit-identically to the default; label smoothing trains under pad and
  under bucket, and one state's label-smoothed loss evaluates the same under pad, bucket and
  pack (float32 rounding: padding weighs nothing in a custom loss either); a loss that does not
  give one value per step is one ConfigError saying so."""
  from lstm_jax.data import from_sequences

  rng = np.random.default_rng(7)
  lengths = rng.integers(2, 30, size=48)
  ds = from_sequences(
    [rng.normal(size=(n, 3)).astype(np.float32) for n in lengths],
    [rng.integers(0, 4, size=n) for n in lengths],
    num_classes=4,
  )
  model = SequenceModel(hidden_size=8, num_outputs=4)

  def state(loss=None):
    return train.create_train_state(model, optax.adam(1e-2), ds, seed=0, loss=loss)

  def cross_entropy(preds, targets):  # what the default computes
    return optax.softmax_cross_entropy_with_integer_labels(preds, targets)

  def smoothed(preds, targets):
    return optax.softmax_cross_entropy(preds, optax.smooth_labels(jax.nn.one_hot(targets, 4), 0.2))

  pad = batching.Pad(ds, batch_size=8, seed=1)
  plain = loop.fit(state(), pad, epochs=2)
  same = loop.fit(state(cross_entropy), pad, epochs=2)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(plain.state.params),
                                                  jax.tree.leaves(same.state.params)))  # fmt: skip
  runs = {
    name: loop.fit(state(smoothed), strategy, epochs=2)
    for name, strategy in (
      ("pad", pad),
      ("bucket", batching.Bucket(ds, batch_size=8, num_buckets=3)),
    )
  }
  assert not np.array_equal(
    jax.tree.leaves(runs["pad"].state.params)[0], jax.tree.leaves(plain.state.params)[0]
  )
  trained = runs["bucket"].state
  evals = [
    evaluation.evaluate(trained, s)
    for s in (
      batching.Pad(ds, batch_size=16),
      batching.Bucket(ds, batch_size=5, num_buckets=4),
      batching.Pack(ds, batch_size=4, row_length=64),
    )
  ]
  assert max_rel_err(evals[0]["loss"], evals[1]["loss"]) <= 1e-5
  assert max_rel_err(evals[0]["loss"], evals[2]["loss"]) <= 1e-5
  plain_eval = evaluation.evaluate(trained.replace(loss=None), batching.Pad(ds, batch_size=16))
  assert evals[0]["loss"] != plain_eval["loss"] and evals[0]["accuracy"] == plain_eval["accuracy"]
  with pytest.raises(ConfigError, match=r"the custom loss returned float32\[16, 29, 4\]"):
    evaluation.evaluate(state(lambda p, t: p * 0.0), batching.Pad(ds, batch_size=16))


# --- evaluation in bounded memory: long sequences in chunks, the state carried ------------------
def _long_and_short(kind: str):
  """Sequences of 3 to 40 steps and three of 150 to 400 (past a chunk of 32)."""
  rng = np.random.default_rng(7)
  lengths = np.concatenate([rng.integers(3, 40, size=20), [150, 400, 233]])
  if kind == "next_token":
    docs = [rng.integers(0, 50, size=int(n) + 1) for n in lengths]
    return next_token_dataset(docs, vocab_size=50), SequenceModel(
      16, 50, vocab_size=50, embed_dim=8
    )
  if kind == "sequence_classes":
    features = ragged_features(lengths, num_features=3, seed=2)
    labels = rng.integers(0, 4, size=len(lengths))
    ds = RaggedDataset(
      features.values, lengths, labels, target_level="sequence", num_classes=4, name="classes"
    )
    return ds, SequenceModel(16, 4)
  ds = ragged_features(lengths, num_features=3, seed=3)
  return ds, SequenceModel(16, ds.target_dim)


@pytest.mark.parametrize("kind", ["next_token", "sequence_classes", "step_regression"])
def test_chunked_evaluation_equals_the_whole_forward_pass(kind):
  """Sequences longer than the chunk are evaluated in chunks with the state carried across them
  (batching.held_out_strategies): the loss and accuracy equal evaluating every sequence whole,
  to float32 rounding, and no batch is longer than the chunk (memory set by the chunk, not by
  the longest document). predict_batches' pieces join into the whole sequences' outputs."""
  ds, model = _long_and_short(kind)
  state = train.create_train_state(model, optax.adam(1e-2), ds, seed=0)
  whole = evaluation.evaluate(state, batching.Bucket(ds, tokens_per_batch=2048, num_buckets=3))
  parts = batching.held_out_strategies(ds, tokens_per_batch=256, num_buckets=3, chunk_length=32)
  assert [type(p).__name__ for p in parts] == ["Bucket", "TBPTT"]
  assert max(t for p in parts for _, t in p.shapes()) == 32 < int(ds.lengths.max())
  chunked = evaluation.evaluate(state, parts)
  assert chunked["real_tokens"] == whole["real_tokens"] == ds.num_steps
  assert chunked["weight_sum"] == whole["weight_sum"]
  assert abs(chunked["loss"] - whole["loss"]) <= 2e-6 * abs(whole["loss"])
  if "accuracy" in whole:
    assert abs(chunked["accuracy"] - whole["accuracy"]) <= 1e-6
  assert evaluation.evaluate(state, batching.held_out_strategies(
    ds, tokens_per_batch=2048, num_buckets=3, chunk_length=0
  )) == whole  # fmt: skip
  want = evaluation.predict(state, ds)
  got: dict = {}
  for items in evaluation.predict_batches(state, ds, batch_size=4, chunk_length=32):
    for piece in items:
      assert len(piece.outputs) <= 32 or ds.lengths[piece.seq] <= 32
      got.setdefault(piece.seq, []).append((piece.start, piece.outputs))
  for i in range(len(ds)):
    joined = np.concatenate([o for _, o in sorted(got[i], key=lambda x: x[0])])
    assert max_rel_err(joined, want.outputs[i]) < 1e-5, i
