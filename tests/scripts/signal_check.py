"""Run by tests/test_checkpoint.py: the runner's resume preset (resume_check.py's) with a
signal sent at one moment where nothing is unsaved, or a second signal once a stop's checkpoint
is complete; through the command line's own wrapper, as compare_strategies.py runs.

    python tests/scripts/signal_check.py WORKDIR WHEN

WHEN: calibration (SIGTERM as the cost model's calibration starts: before anything trains),
precision (SIGTERM as matmul_dtype="auto" starts timing float32 against bfloat16, the CPU's
flags taken to have bfloat16 dot instructions so that it times),
report (SIGTERM as the report is written, after the last row), after_save (SIGTERM at step 4,
then another once its checkpoint is complete), native (SIGTERM while the main thread is held
where no Python runs: the watchdog ends the process), fresh (no signal).
"""

import os
import signal
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from resume_check import die_at, resume_config  # noqa: E402

from lstm_jax import errors, preemption  # noqa: E402
from lstm_jax.runner import costs, experiment, precision, report  # noqa: E402


def term_at_call(module, name: str) -> None:
  """`module.name` sends this process a SIGTERM as it is called, then runs as ever."""
  real = getattr(module, name)

  def wrapped(*args, **kwargs):
    print(f"SIGNAL at {name}", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)

  setattr(module, name, wrapped)


def held_in_native_code() -> None:
  """The main thread blocks SIGTERM and sleeps, as it is in a long XLA compile: no Python runs
  there, so the signal reaches the watchdog's thread only."""
  real = costs.calibrate

  def wrapped(*args, **kwargs):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    print("SIGNAL at a native hold", flush=True)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    time.sleep(120)
    return real(*args, **kwargs)

  costs.calibrate = wrapped


def second_term_once_saved() -> None:
  real = preemption.Preempted.for_row

  def for_row(self, row):
    os.kill(os.getpid(), signal.SIGTERM)  # the checkpoint is complete: fit raised
    time.sleep(0.3)  # the handler runs (it must not end the process)
    return real(self, row)

  preemption.Preempted.for_row = for_row


@errors.exit_on_user_error
def main(argv: list[str]) -> None:
  workdir, when = argv[1], argv[2]
  cfg = resume_config(("tbptt",))
  cfg.predict_costs = when in ("calibration", "native")  # the calibration runs
  if when == "calibration":
    term_at_call(costs, "calibrate")
  elif when == "native":
    held_in_native_code()
  elif when == "precision":
    cfg.model.matmul_dtype = "auto"
    precision.bfloat16_dot_instructions = lambda: True
    term_at_call(precision, "measure")
  elif when == "report":
    term_at_call(report, "write_all")
  elif when == "after_save":
    die_at(workdir, 4, ("TERM",))
    second_term_once_saved()
  experiment.train_and_evaluate(cfg, workdir, True)
  print("FINISHED")


if __name__ == "__main__":
  main(sys.argv)
