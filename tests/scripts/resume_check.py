"""Run by tests/test_checkpoint.py: the runner's smoke preset on the running-parity task and the
named strategies, trained for two epochs with a checkpoint every 3 steps. With a kill step, the
process sends itself SIGNALS (default KILL: no clean-up, no atexit, as a machine failure would)
once that train step has been logged and at least one checkpoint is complete; through the
command line's own wrapper, so a preempted run exits as compare_strategies.py does.

    python tests/scripts/resume_check.py WORKDIR STRATEGIES [KILL_AT_STEP [SIGNALS|fresh]]

KILL_AT_STEP 0: no kill; SIGNALS: e.g. TERM, or INT,INT (two at once); "fresh":
--config.resume=False.
"""

import os
import signal
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)

from configs import compare  # noqa: E402
from lstm_jax import errors  # noqa: E402
from lstm_jax.runner import experiment, report  # noqa: E402


def resume_config(strategies: tuple, fresh: bool = False):
  """The smoke preset on the running-parity task: two epochs, a checkpoint every 3 steps."""
  cfg = compare.get_config("smoke")
  cfg.plots = False  # the PNGs: the shared smoke run's (test_smoke_writes_every_file_and_key)
  cfg.strategies = strategies
  cfg.train.epochs = 2
  cfg.data.update(source="parity", num_sequences=300)  # synthetic: no time spent parsing files
  cfg.data.lengths.update(min_length=2, max_length=80, median=24.0)
  cfg.checkpoint.every_steps = 3
  cfg.predict_costs = False  # the cost model's calibration is not what is tested here
  cfg.resume = not fresh
  return cfg


def die_at(workdir: str, kill_at: int, signals: tuple = ("KILL",)) -> None:
  """At train step `kill_at`, once a checkpoint is complete, send this process `signals`."""
  log_step = report.ProgressLog.step

  def step_then_die(self, rec):
    log_step(self, rec)
    if rec["step"] == kill_at:
      # Die once at least one checkpoint is complete (orbax writes in a background thread, so
      # the newest may still be half-written: that is part of what is tested).
      ckpt_dir = os.path.join(workdir, "checkpoints", f"{self.name}-seed{self.seed}")
      for _ in range(300):
        if any(d.isdigit() for d in os.listdir(ckpt_dir)):
          break
        time.sleep(0.1)
      self.file.flush()
      for name in signals:
        os.kill(os.getpid(), signal.Signals[f"SIG{name}"])

  report.ProgressLog.step = step_then_die


@errors.exit_on_user_error
def main(argv: list[str]) -> None:
  workdir, strategies = argv[1], tuple(argv[2].split(","))
  kill_at = int(argv[3]) if len(argv) > 3 else 0
  fresh = argv[4:] == ["fresh"]
  if kill_at:
    die_at(workdir, kill_at, tuple(argv[4].split(",")) if argv[4:] and not fresh else ("KILL",))
  experiment.train_and_evaluate(resume_config(strategies, fresh), workdir, True)
  print("FINISHED")


if __name__ == "__main__":
  main(sys.argv)
