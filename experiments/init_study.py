"""The built-in LSTM's initialisations side by side (issue 24): keras (the default), flax and
pytorch (`config.model.initializer`), each with 3 seeds of the bucket strategy on two sequence
classification tasks and the byte-level LM, everything else as the task's preset.

    python experiments/init_study.py --root /tmp/init_study --out reports/2026-12-01-init-study

Each (task, initializer) is one runner workdir under --root (rerun: finished rows are read
back); the table goes to --out/report.md and the numbers to --out/study.json.
"""

import json
import os
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from configs import compare  # noqa: E402
from lstm_jax import environment, errors, experiment  # noqa: E402
from lstm_jax.files import write_json_atomically, write_text_atomically  # noqa: E402
from lstm_jax.model import INITIALIZERS  # noqa: E402

TASKS = ("gene_families", "digits", "default")
_ROOT = flags.DEFINE_string("root", None, "Where the runs' workdirs go.", required=True)
_OUT = flags.DEFINE_string("out", None, "Where report.md and study.json go.", required=True)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per (task, initializer).")


def config(task: str, initializer: str, seeds: int):
  cfg = compare.get_config(task)
  cfg.strategies = ("bucket",)
  cfg.seeds = seeds
  cfg.model.initializer = initializer
  cfg.plots, cfg.predict_costs = False, False
  return cfg


def _cell(row: dict, key: str, nd: int = 3) -> str:
  value, spread = row.get(key), row.get(f"{key}_std")
  if value is None:
    return "-"
  return f"{value:.{nd}f} ±{spread:.{nd}f}" if spread else f"{value:.{nd}f}"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  results = {}
  for task in TASKS:
    for init in INITIALIZERS:
      workdir = os.path.join(_ROOT.value, f"{task}-{init}")
      (row,) = experiment.train_and_evaluate(config(task, init, _SEEDS.value), workdir, quiet=True)
      results[f"{task}/{init}"] = row
      print(f"{task:14s} {init:8s} eval loss {_cell(row, 'eval_loss')}  "
            f"{row['metric']} {_cell(row, 'eval_metric')}", flush=True)  # fmt: skip
  lines = [
    f"# The built-in LSTM's initialisations ({time.strftime('%Y-%m-%d')})",
    "",
    f"bucket, {_SEEDS.value} seeds each; every other setting is the task's preset "
    "(configs/compare.py). Command: `python experiments/init_study.py --root DIR --out DIR`. "
    f"Versions: {json.dumps(environment.versions())}.",
    "",
    "| task | initializer | eval loss | metric | balanced accuracy | wall s |",
    "|---|---|---|---|---|---|",
  ]
  for key, row in results.items():
    task, init = key.split("/")
    lines.append(
      f"| {task} | {init} | {_cell(row, 'eval_loss')} | {row['metric']} "
      f"{_cell(row, 'eval_metric')} | {_cell(row, 'balanced_accuracy')} | "
      f"{_cell(row, 'wall_seconds', 1)} |"
    )
  notes = os.path.join(_OUT.value, "notes.md")  # a hand-written reading, kept on rerunning
  if os.path.exists(notes):
    lines += ["", open(notes).read().strip()]
  os.makedirs(_OUT.value, exist_ok=True)
  write_text_atomically(os.path.join(_OUT.value, "report.md"), "\n".join(lines) + "\n")
  write_json_atomically(os.path.join(_OUT.value, "study.json"), results, indent=1)


if __name__ == "__main__":
  app.run(errors.exit_on_user_error(main), flags_parser=errors.parse_flags)
