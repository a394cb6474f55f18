"""The runner's workdir: one runner at a time, results read back only under the settings that
made them, and user errors printed as one message (no traceback)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import override, run_smoke, subprocess_env
from lstm_jax import errors
from lstm_jax.errors import CheckpointError, ConfigError, DataError
from lstm_jax.runner import experiment, row
from lstm_jax.workdir import WorkdirLock, settings_difference

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import compare  # noqa: E402


def _tiny_config(**changes):
  """One strategy, one epoch of a small synthetic task: a few seconds in process."""
  cfg = compare.get_config("smoke")
  cfg.plots = False  # the PNGs: the shared smoke run's (test_smoke_writes_every_file_and_key)
  cfg.strategies = ("tbptt",)
  cfg.data.update(source="parity", num_sequences=200)
  cfg.data.lengths.update(min_length=2, max_length=40, median=12.0)
  cfg.train.tokens_per_step = 256  # about 10 steps
  cfg.checkpoint.every_steps = 2
  cfg.tune_malloc = False  # in process: leave the test worker's allocator as it is
  cfg.predict_costs = False  # the cost model's calibration: tests/test_costs.py
  return override(cfg, **changes)


def test_second_runner_on_a_busy_workdir_stops_at_once(tmp_path):
  with WorkdirLock(str(tmp_path)):
    with pytest.raises(
      ConfigError,
      match=rf"workdir {tmp_path} is in use by another runner "
      rf"\(pid {os.getpid()} on .*another --workdir",
    ):
      experiment.train_and_evaluate(_tiny_config(), str(tmp_path), quiet=True)
  assert not (tmp_path / "results").exists()  # it stopped before doing anything
  WorkdirLock(str(tmp_path)).release()  # released on leaving the first runner's block


def test_lock_of_a_killed_runner_does_not_block_the_next(tmp_path):
  code = (
    "import os, signal, sys; from lstm_jax.workdir import WorkdirLock; "
    "lock = WorkdirLock(sys.argv[1]); os.kill(os.getpid(), signal.SIGKILL)"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code, str(tmp_path)],
    env=subprocess_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == -signal.SIGKILL
  assert "pid" in (tmp_path / ".lock").read_text()  # the file stays; the lock went with it
  WorkdirLock(str(tmp_path)).release()


def test_results_and_checkpoints_are_read_back_only_under_the_same_settings(tmp_path):
  """The reported case: a rerun with another hidden size read back the first run's result as
  its own; a killed run rerun with another learning rate resumed its checkpoint. Both are now
  refused before anything trains, naming the keys that differ."""
  first = experiment.train_and_evaluate(_tiny_config(), str(tmp_path), quiet=True)
  # config.plots=False (the tiny config's): report.md and the data files, no PNG, no image link
  assert (
    not list(tmp_path.glob("*.png"))
    and "--config.plots=False" in (tmp_path / "report.md").read_text()
  )
  assert "](" not in (tmp_path / "report.md").read_text()
  with pytest.raises(
    ConfigError,
    match=r"results/tbptt-seed0.json was made with different "
    r"settings \(model.hidden_size: 16 there, 32 here\).*"
    r"--config.resume=False",
  ):
    experiment.train_and_evaluate(
      _tiny_config(**{"model.hidden_size": 32}), str(tmp_path), quiet=True
    )
  (tmp_path / "results" / "tbptt-seed0.json").unlink()  # as if killed after its last checkpoint
  with pytest.raises(
    CheckpointError,
    match=r"checkpoints/tbptt-seed0/\d+ was made with different "
    r"settings \(optimizer.learning_rate: 0.003 there, "
    r"0.03 here\)",
  ):
    experiment.train_and_evaluate(
      _tiny_config(**{"optimizer.learning_rate": 0.03}), str(tmp_path), quiet=True
    )
  # settings that do not change the numbers (checkpoint cadence, caches, ...) keep results valid
  again = experiment.train_and_evaluate(
    _tiny_config(**{"checkpoint.keep": 5}), str(tmp_path), quiet=True
  )
  assert again[0]["eval_loss"] == first[0]["eval_loss"]
  fresh = experiment.train_and_evaluate(
    _tiny_config(**{"model.hidden_size": 32, "resume": False}), str(tmp_path), quiet=True
  )
  assert fresh[0]["eval_loss"] != first[0]["eval_loss"]


def test_settings_difference_names_each_key():
  assert settings_difference({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == (
    "b: 2 there, 3 here; c: '(absent)' there, 4 here"
  )
  assert settings_difference({"a": 1}, {"a": 1}) == ""


def test_runner_prints_a_user_error_as_one_message_and_exits_2(tmp_path):
  """A config error is one line and exit 2, and so is a bad flag: a misspelt key
  (53 lines of traceback and exit 1 before). `--config.strategy.pack.row_length=None`, as the
  README writes it, is accepted: the run goes on to the hidden size's error."""
  proc = run_smoke(
    tmp_path, 1, "--config.strategy.pack.row_length=None", "--config.model.hidden_size=0",
    check=False,
  )  # fmt: skip
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
    "error (ConfigError): config.model.hidden_size must be >= 1, got 0."
  )
  typo = run_smoke(tmp_path, 1, "--config.model.hiden_size=3", check=False)
  assert typo.returncode == 2 and len(typo.stderr.strip().splitlines()) == 1, typo.stderr
  assert typo.stderr.startswith(
    "error (ConfigError): bad flag (in --config.model.hiden_size=3): 'hiden_size' Did you "
    'mean "hidden_size" instead of "hiden_size"?'
  )


def test_exit_on_user_error_keeps_tracebacks_for_everything_else(capsys):
  def main(e):
    raise e

  with pytest.raises(SystemExit) as ex:
    errors.exit_on_user_error(main)(DataError("sequence 3 is empty; drop it."))
  assert ex.value.code == 2
  assert capsys.readouterr().err == "error (DataError): sequence 3 is empty; drop it.\n"
  with pytest.raises(RuntimeError, match="a bug"):  # not a user error: its traceback stays
    errors.exit_on_user_error(main)(RuntimeError("a bug"))


def test_a_result_that_is_not_a_row_is_refused_in_one_line(tmp_path):
  """results/<row>.json holding a key the row record (report.Row) has not, or lacking one it
  needs: one ConfigError naming the file and the way out, not a KeyError later."""
  first = experiment.train_and_evaluate(_tiny_config(), str(tmp_path), quiet=True)
  path = tmp_path / "results" / "tbptt-seed0.json"
  done = json.loads(path.read_text())
  assert row._read_row(str(path), done["row"]).eval_loss == first[0]["eval_loss"]
  for broken in (
    dict(done["row"], speed=1.0),
    {k: v for k, v in done["row"].items() if k != "steps"},
  ):
    path.write_text(json.dumps(dict(done, row=broken)))
    with pytest.raises(ConfigError, match=r"tbptt-seed0.json does not hold a row this runner"):
      experiment.train_and_evaluate(_tiny_config(), str(tmp_path), quiet=True)


def test_calibration_is_kept_only_once_the_settings_check_passed(tmp_path, monkeypatch):
  """Num_buckets="auto" measures this machine's costs before the workdir's settings
  check (the count enters the settings); a config the check then refuses used to leave its
  calibration.json behind, which the workdir's own runs then read. Now it is saved only after
  the check passes, atomically, under the workdir's lock."""
  from lstm_jax.runner import costs
  from lstm_jax.workdir import write_json_atomically

  fake = costs.Calibration(1.0, 1e-5, 1e-7, 1e6, 4.0)
  monkeypatch.setattr(costs, "calibrate", lambda state, ds, shapes, key, *a, **k: fake)
  cfg = _tiny_config(strategies=("bucket",))
  cfg.strategy.bucket.num_buckets = "auto"
  write_json_atomically(  # a finished row of another configuration
    str(tmp_path / "results" / "bucket-seed0.json"),
    dict(row={}, history=[], curve=[], settings={"model.hidden_size": 3}),
  )
  with pytest.raises(ConfigError, match="made with different settings"):
    experiment.train_and_evaluate(cfg, str(tmp_path), quiet=True)
  assert not (tmp_path / "calibration.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root")
def test_an_unwritable_results_directory_is_one_line_before_anything_trains(tmp_path):
  """Results/ made immutable (EPERM even for root) used to surface as a traceback
  after the first row had trained; the workdir is now probed first."""
  (tmp_path / "results").mkdir()
  if subprocess.run(["chattr", "+i", str(tmp_path / "results")]).returncode != 0:
    pytest.skip("chattr +i is not supported on this file system")
  try:
    with pytest.raises(ConfigError, match=r"cannot write the workdir .*\(EPERM\) at .*results"):
      experiment.train_and_evaluate(_tiny_config(), str(tmp_path), quiet=True)
  finally:
    subprocess.run(["chattr", "-i", str(tmp_path / "results")])


def test_a_rerun_with_fewer_strategies_keeps_the_earlier_rows_in_the_table(tmp_path):
  """The table grows, never shrinks. A rerun of one strategy (to give it another seed,
  say) rebuilds the report from every finished result of this configuration in the workdir;
  a result made with other settings stays out."""
  experiment.train_and_evaluate(_tiny_config(strategies=("tbptt", "pack")), str(tmp_path), True)
  first = json.loads((tmp_path / "summary.json").read_text())
  assert [r["strategy"] for r in first] == ["tbptt", "pack"]
  again = experiment.train_and_evaluate(_tiny_config(strategies=("pack",)), str(tmp_path), True)
  assert sorted(r["strategy"] for r in again) == ["pack", "tbptt"]
  by_name = {r["strategy"]: r for r in again}
  for r in first:
    assert by_name[r["strategy"]]["eval_loss"] == r["eval_loss"]
  saved = json.loads((tmp_path / "results" / "tbptt-seed0.json").read_text())
  saved["settings"]["optimizer.learning_rate"] = 0.5  # as if another configuration made it
  (tmp_path / "results" / "tbptt-seed0.json").write_text(json.dumps(saved))
  rows = experiment.train_and_evaluate(_tiny_config(strategies=("pack",)), str(tmp_path), True)
  assert [r["strategy"] for r in rows] == ["pack"]


def test_a_config_key_given_twice_takes_its_last_value_and_comma_lists_split():
  """`--config.strategies` given twice ran both lists (ml_collections joins a tuple key's
  values); `--config.strategies=pad,bucket,pack`, as docs/data.md writes it, was one unknown
  strategy 'pad,bucket,pack'."""
  code = (
    "import sys\n"
    "from absl import app, flags\n"
    "from ml_collections import config_flags\n"
    "from lstm_jax import errors\n"
    f"config_flags.DEFINE_config_file('config', {str(ROOT / 'configs' / 'compare.py:smoke')!r})\n"
    "app.run(lambda argv: print(flags.FLAGS.config.strategies, flags.FLAGS.config.seed,"
    " flags.FLAGS.config.data.normalize, flags.FLAGS.config.strategy.pack.row_length),"
    " flags_parser=errors.parse_flags)\n"
  )

  def parsed(*args):
    got = subprocess.run(
      [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert got.returncode == 0, got.stderr[-2000:]
    return got.stdout.strip()

  twice = ("--config.strategies=('pad',)", "--config.strategies=('bucket','tbptt')")
  assert parsed(*twice, "--config.seed=1", "--config.seed=2") == "('bucket', 'tbptt') 2 none 160"
  assert parsed("--config.strategies=pad,bucket,pack") == "('pad', 'bucket', 'pack') 0 none 160"
  # "none" is a word for a string setting, None for any other
  assert parsed("--config.strategies=pad", "--config.data.normalize=global",
                "--config.data.normalize=none", "--config.strategy.pack.row_length=None"
                ) == "('pad',) 0 none None"  # fmt: skip


def test_a_killed_invocation_counts_up_to_its_last_heartbeat(tmp_path):
  """After a kill -9 mid-row, invocations.json recorded the killed attempt at 1e-05 s (its
  first write), so total_seconds undercounted; a heartbeat now rewrites the running entry."""
  from lstm_jax.workdir import Invocations

  inv = Invocations(str(tmp_path), heartbeat_seconds=0.01)
  path = tmp_path / "invocations.json"
  deadline = time.monotonic() + 30
  while json.loads(path.read_text())[-1]["seconds"] < 0.05 and time.monotonic() < deadline:
    time.sleep(0.01)
  (entry,) = json.loads(path.read_text())  # what a kill -9 now would leave
  assert entry["seconds"] >= 0.05 and entry["ended"] is None
  inv.update("finished")
  inv.close()
  final = json.loads(path.read_text())
  time.sleep(0.05)
  assert json.loads(path.read_text()) == final and final[-1]["ended"] == "finished"
  again = Invocations(str(tmp_path), heartbeat_seconds=0.01)  # a rerun counts both
  again.update("finished")
  again.close()
  assert again.total_seconds >= entry["seconds"]
