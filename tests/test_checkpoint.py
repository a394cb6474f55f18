"""Checkpoints and exact resume: an interrupted run, resumed, ends bit-identical to an
uninterrupted one (in process, and through the runner killed with SIGKILL); damaged checkpoints
fall back to the previous good one; a NaN loss keeps the last good checkpoint."""

import gc
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from helpers import SCRIPTS, ragged_features, subprocess_env
from lstm_jax import batching, loop, train
from lstm_jax.checkpoint import Checkpointer, quiet_orbax
from lstm_jax.data import RaggedDataset
from lstm_jax.errors import CheckpointError
from lstm_jax.metric_writers import tensorboard_available
from lstm_jax.model import SequenceModel

# Restoring a damaged checkpoint, orbax reads the arrays concurrently; when one read fails, the
# others' futures are dropped unretrieved and Python reports them at garbage collection. That is
# orbax's clean-up, not ours, and the error that matters is asserted in the tests.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
LENGTHS = np.random.default_rng(5).integers(1, 30, size=48)


@pytest.fixture(scope="module")
def data():
  return ragged_features(LENGTHS, num_features=3, seed=1)


def _state(ds, seed=0, lr=1e-2):
  return train.create_train_state(SequenceModel(8, num_outputs=2), optax.adam(lr), ds, seed=seed)


def _strategies(ds):
  return {
    "tbptt": batching.TBPTT(ds, num_streams=4, chunk_length=7, seed=2),
    "bucket": batching.Bucket(ds, batch_size=6, num_buckets=3, seed=2),
  }


class Interrupt(Exception):
  pass


def _bit_identical(a, b) -> bool:
  same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)
  return all(jax.tree.leaves(same))


def _interrupt_at(step):
  def callback(record):
    if record["step"] == step:
      raise Interrupt()

  return callback


@pytest.mark.parametrize("name", ["tbptt", "bucket"])
def test_interrupted_then_resumed_fit_is_bit_identical(tmp_path, data, name):
  """Stopped mid-epoch (tbptt: with a live carry), resumed from the step-6 checkpoint: the same
  params, optimizer state and per-step losses as two uninterrupted epochs."""
  strategy = _strategies(data)[name]
  want = loop.fit(_state(data), strategy, epochs=2)
  ckpt = Checkpointer(tmp_path / name, every_steps=3, keep=2)
  with pytest.raises(Interrupt):
    loop.fit(
      _state(data),
      strategy,
      epochs=2,
      checkpointing=loop.Checkpointing(ckpt),
      hooks=loop.Hooks(on_step=_interrupt_at(8)),
    )
  assert ckpt.latest_step() == 6
  got = loop.fit(
    _state(data),
    strategy,
    epochs=2,
    checkpointing=loop.Checkpointing(Checkpointer(tmp_path / name, every_steps=3, keep=2)),
  )
  assert got.resumed_from == 6
  assert _bit_identical(got.state.params, want.state.params)
  assert _bit_identical(got.state.opt_state, want.state.opt_state)
  assert [h["loss"] for h in got.history] == [h["loss"] for h in want.history]
  assert int(got.state.step) == int(want.state.step) == len(want.history)
  if name == "tbptt":
    assert _bit_identical(got.carry, want.carry)


def test_resuming_a_finished_run_trains_nothing_more(tmp_path, data):
  strategy = _strategies(data)["tbptt"]
  first = loop.fit(
    _state(data), strategy, epochs=1, checkpointing=loop.Checkpointing(Checkpointer(tmp_path))
  )
  again = loop.fit(
    _state(data), strategy, epochs=1, checkpointing=loop.Checkpointing(Checkpointer(tmp_path))
  )
  assert again.resumed_from == len(first.history)
  assert len(again.history) == len(first.history)
  assert _bit_identical(again.state.params, first.state.params)


def _truncate_array_data(step_dir: Path, keep_fraction: float = 0.5) -> None:
  """Truncates every array-data file of a checkpoint (tensorstore's OCDBT `d/` files; which of
  them hold the bytes depends on the arrays' size), as a disk-full or a killed copy would."""
  files = [p for p in (step_dir / "arrays").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for f in files:
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * keep_fraction)])


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, data):
  """Checkpoints at steps 3, 6 and 9 of a tbptt run stopped at step 10."""
  directory = tmp_path_factory.mktemp("interrupted")
  with pytest.raises(Interrupt):
    loop.fit(
      _state(data),
      _strategies(data)["tbptt"],
      epochs=2,
      checkpointing=loop.Checkpointing(Checkpointer(directory, every_steps=3, keep=3)),
      hooks=loop.Hooks(on_step=_interrupt_at(10)),
    )
  return directory


def _copy_of(interrupted, tmp_path, data):
  """A fresh copy to damage: tensorstore caches what this process wrote, by path, so damage to
  the original could go unread; a copy's files are read from disk."""
  shutil.copytree(interrupted, tmp_path / "ck")
  return _strategies(data)["tbptt"], tmp_path / "ck"


@pytest.mark.parametrize("damage", ["truncated file", "missing directory", "garbled metadata"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(
  tmp_path, data, interrupted, damage, capfd
):
  """One warning, and no traceback on the terminal (how many orbax and tensorstore
  print from the abandoned reads depends on thread timing, so each of their routes is also
  tested on its own below)."""
  strategy, directory = _copy_of(interrupted, tmp_path, data)
  latest = directory / "9"
  if damage == "truncated file":
    _truncate_array_data(latest)
  elif damage == "missing directory":
    shutil.rmtree(latest / "arrays")
  else:
    (latest / "arrays" / "_METADATA").write_text("{not json")
  with quiet_orbax():  # what the runner and the mains enter
    with pytest.warns(RuntimeWarning, match=rf"checkpoint {latest} is damaged or incomplete"):
      got = loop.fit(
        _state(data),
        strategy,
        epochs=1,
        checkpointing=loop.Checkpointing(Checkpointer(directory, every_steps=3, keep=3)),
      )
    assert got.resumed_from == 6
    gc.collect()  # abandoned futures report when collected
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]


def _damage_that_reads(interrupted, tmp_path) -> Path:
  """A copy of `interrupted` whose step 9 holds step 6's array data: it reads without an error,
  with other values than were saved, as bit rot that still decodes does. (Bytes inverted inside
  these tiny checkpoints' data files make the read fail, which the fallback caught already;
  bigger arrays are stored so that such bytes read back changed.)"""
  copy = tmp_path / "ck"
  shutil.copytree(interrupted, copy)
  shutil.rmtree(copy / "9" / "arrays")
  shutil.copytree(copy / "6" / "arrays", copy / "9" / "arrays")
  return copy


def test_damage_that_reads_is_caught_by_the_checksum_moved_aside_and_saved_over(
  tmp_path, data, interrupted
):
  """Array data that reads back with other values than were saved resumed silently
  before. The checksum saved with each array catches it: one warning naming
  the step and the array, step 9 moved to damaged/9, the run resumes from 6, saves step 9 again
  over the freed number, and ends bit-identical to a run resumed from an intact step 6."""
  strategy = _strategies(data)["tbptt"]
  directory = _damage_that_reads(interrupted, tmp_path)
  shutil.copytree(interrupted, tmp_path / "intact")
  shutil.rmtree(tmp_path / "intact" / "9")
  want = loop.fit(
    _state(data),
    strategy,
    epochs=2,
    checkpointing=loop.Checkpointing(Checkpointer(tmp_path / "intact")),
  )
  with pytest.warns(RuntimeWarning) as caught:
    got = loop.fit(
      _state(data),
      strategy,
      epochs=2,
      checkpointing=loop.Checkpointing(Checkpointer(directory, every_steps=3, keep=100)),
    )
  said = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
  assert len(said) == 1, said
  assert re.match(
    rf"checkpoint {directory / '9'} is damaged or incomplete \(ValueError: array "
    rf"\S+ does not match the checksum saved with it \(\d+ of \d+ arrays differ\)\); moved to "
    rf"{directory / 'damaged' / '9'}; falling back to step 6\.$",
    said[0],
  ), said[0]
  assert got.resumed_from == 6
  assert _bit_identical(got.state.params, want.state.params)
  assert [h["loss"] for h in got.history] == [h["loss"] for h in want.history]
  assert (directory / "damaged" / "9" / "arrays").is_dir()
  ckpt = Checkpointer(directory)
  assert 9 in ckpt.steps()
  ckpt.read(9)  # the step saved again, which reads and verifies


def test_every_checkpoint_damaged_is_an_error_naming_the_directory(tmp_path, data, interrupted):
  strategy, directory = _copy_of(interrupted, tmp_path, data)
  for step in ("3", "6", "9"):
    _truncate_array_data(directory / step, keep_fraction=0.0)
  with (
    pytest.warns(RuntimeWarning),
    pytest.raises(
      CheckpointError, match=rf"(?s)every checkpoint in {directory} is damaged.*resume=False"
    ),
  ):
    loop.fit(
      _state(data), strategy, epochs=1, checkpointing=loop.Checkpointing(Checkpointer(directory))
    )


def test_history_is_appended_once_not_saved_whole_at_every_checkpoint(tmp_path, data, interrupted):
  """Each save appends only its new steps to history.jsonl and records their count
  and hash; a checkpoint's own JSON stays the same size however long the run (it held the whole
  history before: O(steps^2) bytes per run), and reading a checkpoint gives its history back."""
  _, directory = _copy_of(interrupted, tmp_path, data)
  lines = (directory / "history.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == list(range(1, 10))
  ckpt = Checkpointer(directory)
  for step in (3, 6, 9):
    _, stream = ckpt.read(step)
    assert [h["step"] for h in stream["history"]] == list(range(1, step + 1))
  sizes = {
    step: sum(
      f.stat().st_size for f in (directory / str(step) / "stream").rglob("*") if f.is_file()
    )
    for step in (3, 6, 9)
  }
  assert max(sizes.values()) - min(sizes.values()) <= 16, sizes  # digits of counts, not records


def test_history_lines_past_the_checkpoint_are_cut_and_damaged_ones_fall_back(
  tmp_path, data, interrupted
):
  """Lines written after the newest checkpoint (a run killed between its two writes, half a
  line here) are cut off on resume, and the resumed run's history is the uninterrupted one's,
  line for line. A line changed inside checkpoint 9's steps but not 6's makes 9 damaged (a
  warning) and resumes from 6; one inside every checkpoint's is an error naming the file."""
  strategy, directory = _copy_of(interrupted, tmp_path, data)
  with open(directory / "history.jsonl", "a") as f:
    f.write('{"step": 10, "lo')
  want = loop.fit(_state(data), strategy, epochs=2)
  got = loop.fit(
    _state(data),
    strategy,
    epochs=2,
    checkpointing=loop.Checkpointing(Checkpointer(directory, every_steps=3, keep=3)),
  )
  assert got.resumed_from == 9
  logged = [json.loads(x) for x in (directory / "history.jsonl").read_text().splitlines()]
  assert [h["loss"] for h in logged] == [h["loss"] for h in want.history]
  assert [h["loss"] for h in got.history] == [h["loss"] for h in want.history]

  _, directory = _copy_of(interrupted, tmp_path / "b", data)
  lines = (directory / "history.jsonl").read_text().splitlines(keepends=True)
  lines[7] = lines[7].replace('"step": 8', '"step": 80')
  (directory / "history.jsonl").write_text("".join(lines))
  with pytest.warns(RuntimeWarning, match=r"checkpoint .*/9 is damaged.*first 9 steps are not"):
    got = loop.fit(
      _state(data),
      strategy,
      epochs=1,
      checkpointing=loop.Checkpointing(Checkpointer(directory, every_steps=3, keep=3)),
    )
  assert got.resumed_from == 6
  lines[0] = lines[0].replace('"step": 1', '"step": 10')
  (directory / "history.jsonl").write_text("".join(lines))
  with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match="history.jsonl"):
    loop.fit(
      _state(data),
      strategy,
      epochs=1,
      checkpointing=loop.Checkpointing(Checkpointer(directory, every_steps=3, keep=3)),
    )


def test_checkpoints_with_the_history_inside_still_resume(tmp_path, data, monkeypatch):
  """Checkpoints written before history.jsonl held the history in their own JSON: they resume
  the same, and the next save writes the whole history into history.jsonl."""
  strategy = _strategies(data)["tbptt"]
  with monkeypatch.context() as m:  # saves as before: the history inline
    m.setattr(Checkpointer, "_log_history", lambda self, history: dict(history=history))
    with pytest.raises(Interrupt):
      loop.fit(
        _state(data),
        strategy,
        epochs=2,
        checkpointing=loop.Checkpointing(Checkpointer(tmp_path, every_steps=3)),
        hooks=loop.Hooks(on_step=_interrupt_at(8)),
      )
  assert not (tmp_path / "history.jsonl").exists()
  want = loop.fit(_state(data), strategy, epochs=2)
  got = loop.fit(
    _state(data),
    strategy,
    epochs=2,
    checkpointing=loop.Checkpointing(Checkpointer(tmp_path, every_steps=3)),
  )
  assert got.resumed_from == 6
  assert [h["loss"] for h in got.history] == [h["loss"] for h in want.history]
  logged = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
  assert [h["loss"] for h in logged] == [h["loss"] for h in want.history]


def test_checkpoint_of_another_run_is_refused(tmp_path, data, interrupted):
  _, directory = _copy_of(interrupted, tmp_path, data)
  other = batching.TBPTT(data, num_streams=4, chunk_length=7, seed=3)  # another seed
  with pytest.raises(
    CheckpointError,
    match=r"written by a different run \(seed: checkpoint 2, "
    r"this run 3[,)].*new workdir",
  ):
    loop.fit(
      _state(data), other, epochs=1, checkpointing=loop.Checkpointing(Checkpointer(directory))
    )


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  """Targets of 1e30 square to inf in the loss at a known batch; no checkpoint is written at or
  after it, and the last one restores finite params."""
  lengths = np.full(12, 4)
  values = np.random.default_rng(0).normal(size=(48, 2)).astype(np.float32)
  targets = np.zeros((48, 1), np.float32)
  targets[40:] = 1e30  # sequences 10 and 11: the 6th batch of 2 in order
  ds = RaggedDataset(values, lengths, targets, name="blows-up")
  strategy = batching.Pad(ds, batch_size=2, seed=0)
  bad_step = 1 + next(
    i for i, p in enumerate(strategy.plan(0)) if any(row[0][0] >= 10 for row in p.rows)
  )
  ckpt = Checkpointer(tmp_path, every_steps=1, keep=10)
  state = train.create_train_state(SequenceModel(4, num_outputs=1), optax.adam(1e-2), ds)
  with pytest.raises(
    FloatingPointError,
    match=rf"the loss became inf at step {bad_step} .*"
    rf"last good checkpoint is in {tmp_path}",
  ):
    loop.fit(state, strategy, epochs=1, checkpointing=loop.Checkpointing(ckpt))
  assert ckpt.steps() == list(range(1, bad_step))
  arrays, _ = ckpt.read()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(arrays["params"]))


# --- through the runner, killed with SIGKILL -------------------------------------------------
def _run(workdir, strategies, kill_at=0, extra=()) -> subprocess.CompletedProcess:
  env = subprocess_env()
  args = [sys.executable, str(SCRIPTS / "resume_check.py"), str(workdir), strategies, str(kill_at)]
  return subprocess.run(args + list(extra), capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
  """The uninterrupted reference, run in this process (the killed and resumed runs are other
  processes: bit-identical numbers across processes are part of what is checked), with XLA's
  optimizations mostly off, as in the runner subprocesses."""
  from lstm_jax.runner import experiment
  from scripts.resume_check import resume_config

  workdir = tmp_path_factory.mktemp("uninterrupted")
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    experiment.train_and_evaluate(resume_config(("tbptt", "bucket")), str(workdir), quiet=True)
  finally:
    jax.config.update("jax_disable_most_optimizations", before)
  return workdir


def _final(workdir, name):
  arrays, stream = Checkpointer(workdir / "checkpoints" / f"{name}-seed0").read()
  row = json.loads((workdir / "results" / f"{name}-seed0.json").read_text())["row"]
  return arrays, stream, row


@pytest.mark.xdist_group("resume")  # one worker runs the uninterrupted reference once
@pytest.mark.parametrize(
  "name,kill_at,signals", [("tbptt", 8, "KILL"), ("bucket", 5, "TERM"), ("tbptt", 4, "INT,INT")]
)
def test_runner_killed_or_preempted_resumes_bit_identical(
  tmp_path, uninterrupted, name, kill_at, signals
):
  """The same command run again after a SIGKILL, a SIGTERM or two SIGINTs mid-training ends with
  the same parameters, optimizer state, TBPTT carry and summary numbers (times aside) as an
  uninterrupted run. This is also the determinism check: two processes, same config and seed,
  bit-identical numbers.

  SIGKILL: the rerun resumes from the last periodic checkpoint. SIGTERM: the step in
  flight completes (step 6: the signal came as step 5 was logged, with 6 dispatched), its
  checkpoint is written, and the process prints one line naming the step and exits with 75; the
  rerun loses no step. A second SIGINT exits at once with the signal's status, no traceback and
  no checkpoint of its own (the rerun would resume from the last periodic one, as after a
  SIGKILL)."""
  killed = _run(tmp_path, name, kill_at, [signals])
  ckpt_dir = tmp_path / "checkpoints" / f"{name}-seed0"
  errors = killed.stderr.splitlines()
  if signals == "TERM":
    assert killed.returncode == 75, killed.stderr[-3000:]
    assert errors[-1] == (
      f"preempted: stopped by SIGTERM after step {kill_at + 1} of {name} seed 0, with its "
      f"checkpoint in {ckpt_dir}: run the same command again to resume from step {kill_at + 1}."
    ), killed.stderr[-3000:]
    assert Checkpointer(ckpt_dir).latest_step() == kill_at + 1
  else:
    died_by = -9 if signals == "KILL" else -2
    assert killed.returncode == died_by, killed.stderr[-3000:]
    assert "Traceback" not in killed.stderr and "KeyboardInterrupt" not in killed.stderr
  assert len(errors) <= 3, killed.stderr  # the signal's notice and the exit line, no noise
  assert not (tmp_path / "results").exists()  # it really stopped before finishing
  if signals == "INT,INT":  # nothing written at the signals: the newest is a periodic one
    assert Checkpointer(ckpt_dir).latest_step() % 3 == 0
    return  # resuming from a periodic checkpoint is the SIGKILL case's
  resumed = _run(tmp_path, name)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  got_arrays, got_stream, got = _final(tmp_path, name)
  want_arrays, want_stream, want = _final(uninterrupted, name)
  if signals == "TERM":
    assert got["resumed_from_step"] == kill_at + 1
  else:  # the newest complete periodic checkpoint (the last may have been mid-write)
    assert 0 < got["resumed_from_step"] < kill_at
  assert _bit_identical(got_arrays, want_arrays)  # params, opt_state, step, rng, carry
  assert [h["loss"] for h in got_stream["history"]] == [h["loss"] for h in want_stream["history"]]
  assert got.keys() == want.keys()
  timing = ("seconds", "tokens_per_second", "peak_rss_bytes", "time_to_target", "resumed_from")

  def untimed(v):  # nested dicts too (the class scores' predict seconds)
    if isinstance(v, dict):
      return {k: untimed(x) for k, x in v.items() if not any(t in k for t in timing)}
    return v

  for key in got:
    if not any(t in key for t in timing):
      assert untimed(got[key]) == untimed(want[key]), key  # eval loss, tokens, compiles, ...
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  steps = [line["step"] for line in lines if line["kind"] == "train"]
  assert steps == list(range(1, want["steps"] + 1))  # each step once, although some ran twice
  if tensorboard_available():  # the event files too (CI installs the tensorboard extra)
    check_tensorboard(tmp_path, name)


def check_tensorboard(workdir, name: str) -> None:
  """A row's TensorBoard runs as TensorBoard reads them: every step's train loss once, at its
  step and, in the tokens run, at the real tokens trained on by then, and every evaluation at
  the step and the real tokens it was made after, the values the row's own result holds."""
  from lstm_jax.metric_writers import read_scalars

  result = json.loads((workdir / "results" / f"{name}-seed0.json").read_text())
  hist, curve = result["history"], result["curve"]
  board = workdir / "tensorboard"
  by_step = read_scalars(str(board / "steps" / f"{name}-seed0"))
  by_tokens = read_scalars(str(board / "tokens" / f"{name}-seed0"))
  f32 = lambda values: [float(np.float32(v)) for v in values]  # noqa: E731
  assert [(s, v) for s, v, _ in by_step["train/loss"]] == list(
    zip(range(1, len(hist) + 1), f32(h["loss"] for h in hist))
  )
  tokens = [int(t) for t in np.cumsum([h["real_tokens"] for h in hist])]
  assert [s for s, _, _ in by_tokens["by_real_tokens/train_loss"]] == tokens
  step_at = {0: 0, **{t: i + 1 for i, t in enumerate(tokens)}}
  evals = [(step_at[c["real_tokens"]], float(np.float32(c["eval_loss"]))) for c in curve]
  assert [(s, v) for s, v, _ in by_step["eval/loss"]] == evals
  assert [s for s, _, _ in by_tokens["by_real_tokens/eval_loss"]] == [
    c["real_tokens"] for c in curve
  ]
  assert len(curve) >= 2


@pytest.mark.xdist_group("resume")  # the uninterrupted run's worker
@pytest.mark.skipif(not tensorboard_available(), reason="the optional extra lstm_jax[tensorboard]")
def test_a_two_strategy_run_shows_every_row_in_tensorboard(uninterrupted):
  for name in ("tbptt", "bucket"):
    check_tensorboard(uninterrupted, name)


def test_rerun_reads_finished_results_and_resume_false_starts_over(tmp_path, monkeypatch):
  """In process, the resume test's config: a rerun reads the finished row back (not retrained,
  the same summary); --config.resume=False trains it again to the same numbers.

  A re-render that fails midway (here report.md's text raises; a kill or a full disk
  does the same) leaves every report file as it was, never half-written or empty; meta.json
  keeps the first invocation's start and counts every invocation's seconds."""
  from lstm_jax.runner import experiment, report
  from scripts.resume_check import resume_config

  experiment.train_and_evaluate(resume_config(("pack",)), str(tmp_path), quiet=True)
  summary = json.loads((tmp_path / "summary.json").read_text())
  first = json.loads((tmp_path / "meta.json").read_text())
  files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name != ".lock"}
  assert {"report.md", "summary.csv", "curves.json", "runs.json"} <= set(files)
  stamp = (tmp_path / "results" / "pack-seed0.json").stat().st_mtime_ns

  def fail(*args, **kwargs):
    raise OSError(28, "No space left on device")

  with monkeypatch.context() as m:
    m.setattr(report, "markdown_report", fail)
    with pytest.raises(OSError, match="No space left"):
      experiment.train_and_evaluate(resume_config(("pack",)), str(tmp_path), quiet=True)
  for name in ("report.md", "summary.csv", "meta.json"):
    assert (tmp_path / name).read_bytes() == files[name], name
  assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

  experiment.train_and_evaluate(resume_config(("pack",)), str(tmp_path), quiet=True)
  assert (tmp_path / "results" / "pack-seed0.json").stat().st_mtime_ns == stamp  # not retrained
  assert json.loads((tmp_path / "summary.json").read_text()) == summary
  meta = json.loads((tmp_path / "meta.json").read_text())
  assert meta["started"] == first["started"] and meta["invocations"] == 3
  entries = json.loads((tmp_path / "invocations.json").read_text())
  assert [e["ended"] for e in entries] == ["finished", "failed", "finished"]
  # Every invocation's seconds, not only the re-render's (the earlier two were final before it
  # started; the first's own meta.json was written just before its last update):
  assert entries[0]["seconds"] >= first["total_seconds"] > 0
  assert meta["total_seconds"] >= entries[0]["seconds"] + entries[1]["seconds"]
  experiment.train_and_evaluate(resume_config(("pack",), fresh=True), str(tmp_path), quiet=True)
  assert (tmp_path / "results" / "pack-seed0.json").stat().st_mtime_ns != stamp
  row = json.loads((tmp_path / "results" / "pack-seed0.json").read_text())["row"]
  assert row["resumed_from_step"] is None and row["eval_loss"] == summary[0]["eval_loss"]
  assert json.loads((tmp_path / "meta.json").read_text())["invocations"] == 1  # started over


# --- a write that fails (disk full, permissions) ------------------------------------------
def _fail_writes_from(ckpt: Checkpointer, step: int, error: Exception):
  """From checkpoint `step` on, the manager's save leaves a partial step directory behind (as an
  interrupted orbax write does) and raises `error`, as orbax does when the disk is full."""
  real_save = ckpt.manager.save

  def save(s, *args, **kwargs):
    if s >= step:
      ckpt.manager.wait_until_finished()  # as orbax's own save does first
      (Path(ckpt.directory) / f"{s}.orbax-checkpoint-tmp" / "arrays").mkdir(parents=True)
      raise error
    return real_save(s, *args, **kwargs)

  ckpt.manager.save = save


def test_full_disk_stops_with_one_error_and_the_same_call_resumes_after(tmp_path, data):
  """A failed write (a simulated ENOSPC, as orbax reports it) stops fit with one CheckpointError
  naming the directory, the cause and the free space; no partial checkpoint is left; once the
  disk has room again, the same call resumes from the last good checkpoint and ends where an
  uninterrupted run does."""
  strategy = _strategies(data)["tbptt"]
  want = loop.fit(_state(data), strategy, epochs=2)
  ckpt = Checkpointer(tmp_path, every_steps=3, keep=5)
  enospc = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database: Failed to '
    "write 113474 bytes: No space left on device [os_error_code='28']"
  )
  _fail_writes_from(ckpt, 9, enospc)
  with pytest.raises(CheckpointError) as e:
    loop.fit(_state(data), strategy, epochs=2, checkpointing=loop.Checkpointing(ckpt))
  msg = str(e.value)
  assert f"could not write the checkpoint of step 9 in {tmp_path}" in msg
  assert "No space left on device" in msg and "MiB free there" in msg
  assert "partial write was removed (9.orbax-checkpoint-tmp)" in msg
  assert "steps [3, 6]) are intact" in msg and "resume from step 6" in msg
  assert sorted(p.name for p in tmp_path.iterdir()) == ["3", "6", "history.jsonl"]  # complete ones
  got = loop.fit(
    _state(data),
    strategy,
    epochs=2,
    checkpointing=loop.Checkpointing(Checkpointer(tmp_path, every_steps=3, keep=5)),
  )
  assert got.resumed_from == 6
  assert _bit_identical(got.state.params, want.state.params)
  assert [h["loss"] for h in got.history] == [h["loss"] for h in want.history]


def test_checkpoint_with_other_settings_is_refused_naming_the_keys(tmp_path, data):
  strategy = _strategies(data)["tbptt"]
  settings = {"optimizer.learning_rate": 0.003, "model.hidden_size": 8}
  loop.fit(
    _state(data),
    strategy,
    epochs=1,
    checkpointing=loop.Checkpointing(Checkpointer(tmp_path), settings=settings),
  )
  other = dict(settings, **{"optimizer.learning_rate": 0.03})
  with pytest.raises(
    CheckpointError,
    match=r"optimizer.learning_rate: 0.003 there, 0.03 here.*"
    r"--config.resume=False",
  ):
    loop.fit(
      _state(data),
      strategy,
      epochs=1,
      checkpointing=loop.Checkpointing(Checkpointer(tmp_path), settings=other),
    )
  with pytest.raises(CheckpointError, match="optimizer.learning_rate: 0.003 there, 0.03 here"):
    Checkpointer.check_settings(str(tmp_path), other)  # what the runner checks up front
  Checkpointer.check_settings(str(tmp_path), settings)
  again = loop.fit(
    _state(data),
    strategy,
    epochs=1,
    checkpointing=loop.Checkpointing(Checkpointer(tmp_path), settings=settings),
  )
  assert again.resumed_from is not None


def _can_make_unwritable(tmp_path) -> str | None:
  """Why the real-fault modes cannot run here (chattr and bind mounts need root), or None."""
  probe = tmp_path / "probe"
  probe.mkdir()
  for undo, cmd in (
    (["chattr", "-i", str(probe)], ["chattr", "+i", str(probe)]),
    (["umount", str(probe)], ["mount", "--bind", str(probe), str(probe)]),
  ):
    try:
      done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except OSError as e:
      return f"{cmd[0]}: {e}"
    if done.returncode != 0:
      return f"{' '.join(cmd[:2])} failed: {done.stderr.strip()[:200]}"
    subprocess.run(undo, check=False, capture_output=True)
  return None


@pytest.mark.parametrize("modes", [["orbax-eio"], ["immutable", "read-only"]])
def test_unwritable_checkpoint_directory_exits_at_once_with_one_line(tmp_path, modes):
  """A checkpoint write into an immutable directory (chattr +i: EPERM), a read-only
  mount (EROFS), or one whose step directory orbax fails to create (a simulated EIO, which left
  orbax's threads waiting forever: the process never exited) ends the command with exit status
  2 and one line, naming the right step (6, not the 9 that met the failure), the directory and
  the cause; the complete checkpoint (3) is intact."""
  if "immutable" in modes and (why := _can_make_unwritable(tmp_path)):
    pytest.skip(f"needs root to make a directory unwritable: {why}")
  got = subprocess.run(
    [sys.executable, str(SCRIPTS / "write_fault_check.py"), str(tmp_path), *modes],
    capture_output=True,
    text=True,
    timeout=120,  # hung, it would wait for orbax's 10-minute barrier timeout
    env=subprocess_env(),
  )
  assert got.returncode == 2, got.stderr[-3000:]
  assert len(got.stderr.splitlines()) == 1, got.stderr[-3000:]  # no orbax tracebacks around it
  faults = dict(line[6:].split(": ", 1) for line in got.stdout.splitlines() if line[:6] == "FAULT ")
  assert list(faults) == modes
  causes = dict(immutable="(EPERM)", **{"read-only": "(EROFS)", "orbax-eio": "(EIO)"})
  for mode, message in faults.items():
    assert message.startswith(f"could not write the checkpoint of step 6 in {tmp_path / mode}: ")
    assert causes[mode] in message and "resume from step 3" in message, message
    assert sorted(p.name for p in (tmp_path / mode).iterdir()) == ["3", "history.jsonl"]
  assert got.stderr.startswith(f"error (CheckpointError): {faults[modes[-1]]}")


def test_orbax_fault_noise_is_kept_off_the_terminal_and_summarised(tmp_path, capfd, caplog):
  """A damaged checkpoint printed 89-137 lines of orbax and tensorstore tracebacks
  around its one warning, a failed write ~310. Each of their four routes is fed one here (how
  many arrive in a real fault depends on thread timing): an orbax error logged through absl, an
  abandoned read's unretrieved future reported by asyncio, tensorstore's callback into a closed
  event loop, and an orbax thread's uncaught exception. None reaches the terminal; each is kept
  for the summary the fault's one message carries."""
  import logging
  import threading

  from lstm_jax.checkpoint import _NOISE

  quiet = quiet_orbax()
  quiet.__enter__()  # installs the filter
  mark = _NOISE.mark()
  record = logging.LogRecord(
    "absl", logging.ERROR, "/site-packages/orbax/checkpoint/x.py", 1, "write failed", (), None
  )
  logging.getLogger("absl").handle(record)
  stale = ValueError('Error opening "zarr" driver: Error reading "a/.zarray" in OCDBT database')
  logging.getLogger("asyncio").error(
    "Future exception was never retrieved", exc_info=(ValueError, stale, None)
  )

  def call_soon_threadsafe():  # where asyncio raises it
    raise RuntimeError("Event loop is closed")

  try:
    call_soon_threadsafe()
  except RuntimeError as e:
    sys.excepthook(RuntimeError, e, e.__traceback__)
  orbax_file = str(Path(ocp_path()) / "fake.py")
  code = compile("def run():\n  raise OSError(5, 'Input/output error')\n", orbax_file, "exec")
  namespace = {}
  exec(code, namespace)
  thread = threading.Thread(target=namespace["run"])
  thread.start()
  thread.join()
  err = capfd.readouterr().err
  assert err == "", err  # the printed routes
  assert not [r for r in caplog.records if r.name in ("absl", "asyncio")]  # the logged ones
  assert _NOISE.summary(mark).startswith("; orbax reported 4 errors (the first: write failed;")
  logging.getLogger("asyncio").error("an unrelated asyncio error")  # others still get through
  assert [r.getMessage() for r in caplog.records] == ["an unrelated asyncio error"]
  quiet.__exit__(None, None, None)


def test_a_checkpointer_changes_nothing_process_wide_and_quiet_orbax_undoes_itself(tmp_path):
  """Constructing a Checkpointer used to replace sys.excepthook, threading.excepthook and
  sys.unraisablehook, filter two loggers and add a warnings filter, for good. Now it touches
  none of them; quiet_orbax (the runner's and the mains' opt-in) installs them once however
  deeply it is entered, and leaving the outermost puts every one back."""
  import logging
  import threading
  import warnings

  def process():
    return (
      sys.excepthook,
      threading.excepthook,
      sys.unraisablehook,
      list(logging.getLogger("absl").filters),
      list(logging.getLogger("asyncio").filters),
      list(warnings.filters),
    )

  before = process()
  Checkpointer(tmp_path / "a").close()
  assert process() == before
  with quiet_orbax():
    inside = process()
    assert inside[0] is not before[0] and inside[3] != before[3]
    with quiet_orbax():  # nested: installed once
      assert process() == inside
    assert process() == inside
  assert process() == before


def ocp_path() -> str:
  import orbax.checkpoint

  return str(Path(orbax.checkpoint.__file__).parent)


# --- signals where nothing is unsaved ---------------------------------------------------------
def _signal_run(workdir, when) -> subprocess.CompletedProcess:
  args = [sys.executable, str(SCRIPTS / "signal_check.py"), str(workdir), when]
  return subprocess.run(args, capture_output=True, text=True, timeout=300, env=subprocess_env())


AT_ONCE = (
  "preempted: stopped by SIGTERM where nothing was unsaved (loading, planning, compiling or "
  "reporting; what earlier steps and rows wrote is kept): run the same command again to go on."
)


@pytest.mark.parametrize("when", ["calibration", "native", "precision"])
def test_a_signal_before_anything_trains_ends_the_run_at_once(tmp_path, when):
  """A SIGTERM during the cost model's calibration used to wait for the calibration, the first
  row's compile and one training step (~29 s), just to save step 1. Now nothing more runs: no
  step, no checkpoint; status 75 and one line. With the main thread held where no Python runs
  (a long XLA compile; here it blocks the signal and sleeps 120 s), the watchdog ends the
  process after its grace period. The same while matmul_dtype="auto" times its two precisions,
  and no precision.json is left."""
  got = _signal_run(tmp_path, when)
  assert got.returncode == 75, got.stderr[-3000:]
  assert when != "precision" or "SIGNAL at measure" in got.stdout  # it did time the two
  said = got.stderr.strip().splitlines()
  if when == "native":
    assert said[-1].startswith("preempted: stopped by SIGTERM where nothing was unsaved (the main")
  else:
    assert said[-1] == AT_ONCE, got.stderr[-3000:]
  assert "Traceback" not in got.stderr
  metrics = tmp_path / "metrics.jsonl"  # none yet where the precision is being chosen
  lines = metrics.read_text().splitlines() if metrics.exists() else []
  steps = [json.loads(line) for line in lines]
  assert not [r for r in steps if "step" in r and "loss" in r]  # not one training step
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").rglob("*"))
  assert not (tmp_path / "precision.json").exists()  # nothing half-decided is kept
  (inv,) = json.loads((tmp_path / "invocations.json").read_text())
  assert inv["ended"] in ("preempted", None)  # the watchdog's exit leaves the heartbeat's


def test_a_signal_after_the_last_row_stops_at_once_and_the_rerun_writes_the_report(tmp_path):
  """A SIGTERM as the report is written said "stopping after the current step, with a
  checkpoint", rendered the report anyway and exited 0. Now it stops at once (75) and says so;
  the rerun trains nothing and writes the report."""
  got = _signal_run(tmp_path, "report")
  assert got.returncode == 75 and got.stderr.strip().splitlines()[-1] == AT_ONCE, got.stderr
  assert (tmp_path / "results" / "tbptt-seed0.json").exists()
  assert not (tmp_path / "report.md").exists()
  again = _signal_run(tmp_path, "none")
  assert again.returncode == 0 and "FINISHED" in again.stdout, again.stderr[-3000:]
  assert (tmp_path / "report.md").exists()
  metrics = (tmp_path / "metrics.jsonl").read_text()
  assert "finished by an earlier run of this workdir" in metrics or '"step"' in metrics
  invocations = json.loads((tmp_path / "invocations.json").read_text())
  assert [i["ended"] for i in invocations] == ["preempted", "finished"]


def test_a_second_signal_once_the_checkpoint_is_written_keeps_status_75(tmp_path):
  """A second SIGTERM after the stop's checkpoint was complete exited 143, which a requeue-on-75
  script misses. Now it is noted and the status stays 75."""
  got = _signal_run(tmp_path, "after_save")
  assert got.returncode == 75, got.stderr[-3000:]
  assert "SIGTERM again: already stopping, nothing left to save." in got.stderr
  assert (
    got.stderr.strip().splitlines()[-1].startswith("preempted: stopped by SIGTERM after step 5")
  )
