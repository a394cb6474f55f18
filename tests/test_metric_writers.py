"""Metric writers (lstm_jax.metric_writers) and progress bars (lstm_jax.progress).

TensorBoard event files (tensorboardX, the optional extra `tensorboard`): held until a flush,
flushed by `fit` at each checkpoint save and no sooner, a resume's restart marker hiding what an
earlier process wrote past its checkpoint, a full disk one warning. The runner's rows in
TensorBoard, also after a SIGKILL or a SIGTERM and a resume, are checked in
tests/test_checkpoint.py against the rows' own histories."""

import io
import json
import os
import warnings

import numpy as np
import pytest

from lstm_jax import metric_writers
from lstm_jax.progress import Progress


def _needs_tensorboardx():
  return pytest.importorskip("tensorboardX", reason="the optional extra lstm_jax[tensorboard]")


def test_events_wait_for_a_flush_and_a_restart_marker_hides_what_a_resume_rewrites(tmp_path):
  _needs_tensorboardx()
  w = metric_writers.TensorBoardWriter(str(tmp_path))
  for step in range(1, 6):
    w.write_scalars(step, {"train/loss": 10.0 + step}, walltime=float(step))
  assert not tmp_path.exists() or not os.listdir(tmp_path)  # nothing before the flush
  w.flush()
  w.write_scalars(6, {"train/loss": 16.0})  # never flushed: as after a kill
  got = metric_writers.read_scalars(str(tmp_path))
  assert [(s, v, t) for s, v, t in got["train/loss"]] == [
    (s, 10.0 + s, float(s)) for s in range(1, 6)
  ]
  # a resume from step 3's checkpoint writes steps 4.. again: the earlier 4 and 5 are hidden
  r = metric_writers.TensorBoardWriter(str(tmp_path), purge_step=4)
  for step in range(4, 8):
    r.write_scalars(step, {"train/loss": 20.0 + step})
  r.close()
  got = metric_writers.read_scalars(str(tmp_path))["train/loss"]
  assert [(s, v) for s, v, _ in got] == [(1, 11.0), (2, 12.0), (3, 13.0)] + [
    (s, 20.0 + s) for s in range(4, 8)
  ]


def test_a_full_disk_is_one_warning_and_the_writer_stops(tmp_path, monkeypatch):
  _needs_tensorboardx()
  from tensorboardX import record_writer

  w = metric_writers.TensorBoardWriter(str(tmp_path / "tb"))
  w.write_scalars(1, {"a": 1.0})

  def full(self, data):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(record_writer.RecordWriter, "write", full)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    w.flush()
    w.write_scalars(2, {"a": 2.0})
    w.flush()  # stopped: no second warning
  assert len(caught) == 1, [str(c.message) for c in caught]
  text = str(caught[0].message)
  assert "No space left on device (ENOSPC)" in text and "metrics.jsonl" in text
  assert w.failed


def test_other_processes_write_nothing(tmp_path):
  w = metric_writers.create_default_writer(str(tmp_path / "tb"), just_logging=True)
  w.write_scalars(1, {"a": 1.0})
  w.write_hparams({"x": 1})
  w.write_texts(1, {"t": "x"})
  w.close()
  assert not (tmp_path / "tb").exists()


def test_without_tensorboardx_the_writer_is_one_config_error(tmp_path, monkeypatch):
  import builtins

  from lstm_jax.errors import ConfigError
  from lstm_jax.runner import config as runner_config

  real_import = builtins.__import__

  def no_tensorboardx(name, *args, **kwargs):
    if name.startswith("tensorboardX"):
      raise ImportError(name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
  with pytest.raises(ConfigError, match=r"pip install 'lstm_jax\[tensorboard\]'"):
    metric_writers.TensorBoardWriter(str(tmp_path))
  cfg = runner_config.base_config()
  cfg.tensorboard = "on"
  with pytest.raises(ConfigError, match="config.tensorboard='on' needs tensorboardX"):
    runner_config.validate_config(cfg)
  cfg.tensorboard = "yes"
  with pytest.raises(ConfigError, match="config.tensorboard must be one of"):
    runner_config.validate_config(cfg)


def _fit_setup(tmp_path):
  import optax

  from lstm_jax import Bucket, SequenceModel, create_train_state, tasks

  ds = tasks.running_parity(60, tasks.LengthDistribution("uniform", 3, 20))
  state = create_train_state(SequenceModel(hidden_size=8, num_outputs=2), optax.adam(1e-2), ds)
  return state, Bucket(ds, tokens_per_step=96, num_buckets=2)


def test_fit_flushes_the_writer_at_each_checkpoint_and_no_sooner(tmp_path):
  """While fit runs, the event file never holds a step past the newest checkpoint save; at
  the end it holds every step once, its loss as fit's history has it (float32)."""
  _needs_tensorboardx()
  from lstm_jax import Checkpointer, Checkpointing, Hooks, fit

  state, strategy = _fit_setup(tmp_path)
  logdir = str(tmp_path / "tb")
  writer = metric_writers.TensorBoardWriter(logdir)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), every_steps=3)
  saved = []
  real_save = ckpt.save

  def save(step, *args, **kwargs):
    saved.append(step)
    return real_save(step, *args, **kwargs)

  ckpt.save = save
  seen = []

  def on_step(rec):
    on_disk = metric_writers.read_scalars(logdir).get("train/loss", []) if saved else []
    seen.append((rec["step"], max([s for s, _, _ in on_disk], default=0), max(saved, default=0)))

  result = fit(
    state,
    strategy,
    epochs=2,
    checkpointing=Checkpointing(ckpt),
    hooks=Hooks(on_step=on_step, writer=writer),
  )
  assert all(on_disk == last_save for _, on_disk, last_save in seen), seen
  assert any(on_disk > 0 for _, on_disk, _ in seen)  # it did flush mid-run
  got = metric_writers.read_scalars(logdir)
  hist = result.history
  assert [s for s, _, _ in got["train/loss"]] == list(range(1, len(hist) + 1))
  assert [v for _, v, _ in got["train/loss"]] == [float(np.float32(h["loss"])) for h in hist]
  clock = np.cumsum([h["step_seconds"] for h in hist])
  np.testing.assert_allclose([t for _, _, t in got["train/loss"]], clock, rtol=1e-6)
  assert set(got) == {"train/loss", "train/real_tokens_per_second", "train/padding"}


def test_progress_plain_lines_are_few_and_end_at_the_total():
  out = io.StringIO()
  bar = Progress(stream=out, every_seconds=1e9)
  bar.start("row", 1000)
  for done in range(100, 1001, 100):
    bar.update(done, f"loss {done}")
  bar.note("a note")
  bar.end()
  lines = out.getvalue().splitlines()
  assert len(lines) == 3, lines  # the start, the note, the end: none per update
  assert lines[0].startswith("row [........................]   0.0%")
  assert lines[1] == "a note"
  assert lines[2] == "row [########################] 100.0% loss 1000"  # done: no time left
  out = io.StringIO()
  bar = Progress(stream=out, every_seconds=0)
  bar.start("row", 1000, done=500)  # a resume: the bar starts where it stood
  bar.update(750, "x")
  assert out.getvalue().splitlines()[-1].startswith("row [##################......]  75.0% x left ")
  bar.end()
  quiet = io.StringIO()
  bar = Progress(stream=quiet, quiet=True)
  bar.start("row", 10)
  bar.update(5, "x")
  bar.note("n")
  bar.end()
  assert quiet.getvalue() == ""


def test_progress_in_a_terminal_is_richs_bar():
  out = io.StringIO()
  bar = Progress(stream=out, terminal=True)
  bar.start("bucket s0", 200)
  bar.update(100, "loss 0.5")
  bar.note("a note")
  bar.update(200, "loss 0.25")
  bar.end()
  text = out.getvalue()
  assert "bucket s0" in text and "100%" in text and "loss 0.25" in text and "a note" in text
  assert "\x1b[" in text  # drawn as a terminal's live line


def test_fit_draws_a_progress_bar_when_asked(tmp_path):
  from lstm_jax import Hooks, fit

  state, strategy = _fit_setup(tmp_path)
  out = io.StringIO()
  result = fit(
    state, strategy, epochs=2, hooks=Hooks(progress=Progress(stream=out, every_seconds=1e9))
  )
  lines = out.getvalue().splitlines()
  tokens = sum(h["real_tokens"] for h in result.history)
  assert lines[0].startswith("fit [....") and lines[-1].startswith("fit [####") and len(lines) == 2
  assert f"step {len(result.history)} loss" in lines[-1] and "100.0%" in lines[-1], lines
  assert tokens == 2 * int(strategy.plan(0).real_tokens.sum())


def test_metrics_jsonl_and_results_are_unchanged_by_tensorboard(tmp_path):
  """config.tensorboard=off writes no event files; the row's numbers are the same either way."""
  _needs_tensorboardx()
  from lstm_jax.runner import experiment
  from scripts.resume_check import resume_config

  rows = {}
  for setting in ("on", "off"):
    cfg = resume_config(("pad",))
    cfg.tensorboard = setting
    cfg.train.epochs = 1
    workdir = tmp_path / setting
    experiment.train_and_evaluate(cfg, str(workdir), quiet=True)
    rows[setting] = json.loads((workdir / "results" / "pad-seed0.json").read_text())
  run = tmp_path / "on" / "tensorboard" / "steps" / "pad-seed0"
  from tensorboardX.proto import event_pb2

  texts, hparams = [], 0
  for f in run.iterdir():
    for data in metric_writers._records(str(f)):
      for v in event_pb2.Event.FromString(data).summary.value:
        if v.tag.startswith("row"):
          texts.append(v.tensor.string_val[0].decode())
        hparams += v.metadata.plugin_data.plugin_name == "hparams"
  assert len(texts) == 1 and "| eval_loss |" in texts[0] and "| steps |" in texts[0]
  assert hparams == 3  # the experiment, the session's start and its end
  assert not (tmp_path / "off" / "tensorboard").exists()
  assert [h["loss"] for h in rows["on"]["history"]] == [h["loss"] for h in rows["off"]["history"]]
