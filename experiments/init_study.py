"""The initialisations of the built-in LSTM and the GRU side by side: keras, flax and pytorch
(`config.model.initializer`), each with 3 seeds of the bucket strategy on long sequence
classification tasks, the spoken digits and the byte-level LM; everything else as the task's
preset (configs/compare.py), with the budget overrides in STUDY_TASKS.

    python experiments/init_study.py --root /tmp/init_study --out reports/2026-12-01-init-study

Each (task, cell, initializer) is one runner workdir under --root (rerun: finished rows are
read back, so a study can be run a task at a time with --tasks); the table goes to
--out/report.md and the numbers to --out/study.json (rows of earlier runs kept).
"""

import json
import os
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from configs import compare  # noqa: E402
from lstm_jax import environment, errors  # noqa: E402
from lstm_jax.files import write_json_atomically, write_text_atomically  # noqa: E402
from lstm_jax.runner import experiment

# name -> (preset, overrides of cfg.train): the study's tasks
STUDY_TASKS = {
  # the preset's 2M real tokens end at the majority class for every initialisation: 3x that,
  # with a cosine decay
  "gene_families_6M": ("gene_families", dict(real_tokens=6_000_000)),
  "stdlib_packages": ("stdlib_packages", {}),
  "digits": ("digits", {}),
  "default": ("default", {}),
}
CHOICES = ("keras", "flax", "pytorch")
_ROOT = flags.DEFINE_string("root", None, "Where the runs' workdirs go.", required=True)
_OUT = flags.DEFINE_string("out", None, "Where report.md and study.json go.", required=True)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per (task, cell, initializer).")
_TASKS = flags.DEFINE_list("tasks", list(STUDY_TASKS), f"Tasks to run, of {list(STUDY_TASKS)}.")
_CELLS = flags.DEFINE_list("cells", ["lstm", "gru"], "Cells to run: lstm, gru.")


def config(task: str, cell: str, initializer: str, seeds: int):
  preset, train = STUDY_TASKS[task]
  cfg = compare.get_config(preset)
  cfg.strategies = ("bucket",)
  cfg.seeds = seeds
  cfg.model.update(cell=cell, initializer=initializer)
  cfg.train.update(**train)
  if train:
    cfg.optimizer.schedule = "cosine"
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
  for name in _TASKS.value:
    if name not in STUDY_TASKS:
      raise errors.ConfigError(f"--tasks: unknown task {name!r}; use some of {list(STUDY_TASKS)}.")
  for cell in _CELLS.value:
    if cell not in ("lstm", "gru"):
      raise errors.ConfigError(f"--cells: {cell!r} has no initializer choice; use lstm, gru.")
  path = os.path.join(_OUT.value, "study.json")
  results = json.load(open(path)) if os.path.exists(path) else {}
  for task in _TASKS.value:
    for cell in _CELLS.value:
      for init in CHOICES:
        workdir = os.path.join(_ROOT.value, f"{task}-{cell}-{init}")
        cfg = config(task, cell, init, _SEEDS.value)
        (row,) = experiment.train_and_evaluate(cfg, workdir, quiet=True)
        results[f"{task}/{cell}/{init}"] = row
        print(f"{task:16s} {cell:4s} {init:8s} eval loss {_cell(row, 'eval_loss')}  "
              f"{row['metric']} {_cell(row, 'eval_metric')}", flush=True)  # fmt: skip
        os.makedirs(_OUT.value, exist_ok=True)
        write_json_atomically(path, results, indent=1)
  lines = [
    f"# The LSTM's and the GRU's initialisations ({time.strftime('%Y-%m-%d')})",
    "",
    f"bucket, {_SEEDS.value} seeds each (mean ±std over seeds); every other setting is the "
    "task's preset (configs/compare.py) with the budget overrides in "
    "`experiments/init_study.py` (STUDY_TASKS). Command: `python experiments/init_study.py "
    f"--root DIR --out DIR`. Versions: {json.dumps(environment.versions())}.",
    "",
    "| task | cell | initializer | eval loss | metric | balanced accuracy | wall s |",
    "|---|---|---|---|---|---|---|",
  ]

  def order(key):  # the tasks, cells and initialisations in the order they are defined
    task, cell, init = key.split("/")
    known = list(STUDY_TASKS)
    return (known.index(task) if task in known else len(known), cell != "lstm", CHOICES.index(init))

  for key in sorted(results, key=order):
    row = results[key]
    task, cell, init = key.split("/")
    lines.append(
      f"| {task} | {cell} | {init} | {_cell(row, 'eval_loss')} | {row['metric']} "
      f"{_cell(row, 'eval_metric')} | {_cell(row, 'balanced_accuracy')} | "
      f"{_cell(row, 'wall_seconds', 1)} |"
    )
  notes = os.path.join(_OUT.value, "notes.md")  # a hand-written reading, kept on rerunning
  if os.path.exists(notes):
    lines += ["", open(notes).read().strip()]
  write_text_atomically(os.path.join(_OUT.value, "report.md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(errors.exit_on_user_error(main), flags_parser=errors.parse_flags)
