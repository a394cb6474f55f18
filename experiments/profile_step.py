"""Where the float32 train step's time goes (lstm_jax.benchmark.profile): XLA's trace of the
tbptt step on the benchmark's workload W, op time per category beside the GEMM-only references.

    python experiments/profile_step.py --out benchmarks/DATE-CPU-profile/PROFILE.md

Writes profile.json beside --out (the figures, the CPU model and flags, the versions). About a
minute on 2 cores. --quick: W's shapes cut down, for a check that it runs.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from configs import benchmark as benchmark_config  # noqa: E402
from lstm_jax import host  # noqa: E402
from lstm_jax.benchmark import (
  profile,  # noqa: E402
  sections,  # noqa: E402
)
from lstm_jax.environment import versions  # noqa: E402

flags.DEFINE_string("out", "PROFILE.md", "Markdown report; profile.json beside it.")
flags.DEFINE_integer("rounds", 5, "Untimed-then-timed rounds of the traced steps (wall: median).")
flags.DEFINE_integer("steps", 20, "Train steps per round (and traced).")
flags.DEFINE_string(
  "summary",
  "BENCHMARKS.md",
  "Also put the report in this file, as its step-profile section ('': not).",
)
flags.DEFINE_bool("quick", False, "Tiny shapes: a check that every part runs.")
F = flags.FLAGS


def main(_):
  cfg = benchmark_config.get_config("quick" if F.quick else "default")
  # The allocator as the benchmark's rows run (configs/benchmark.py: tune_malloc), before
  # anything is allocated: without it every step faults in its scratch afresh (docs/speed.md).
  host.tune_malloc(cfg.tune_malloc)
  result = profile.profile_step(cfg, rounds=F.rounds, traced_steps=F.steps)
  result["versions"] = versions()
  text = sections.write_report(
    F.out,
    result,
    "Where the train step's time goes",
    profile.markdown(result, sections.cpu_words(result["versions"])),
    json_name="profile.json",
    summary="" if F.quick else F.summary,  # the top-level BENCHMARKS.md's section, kept
    section="step-profile",
  )
  print(text)
  print(json.dumps({k: result[k] for k in ("wall_seconds_per_step", "op_seconds_per_step")}))


if __name__ == "__main__":
  app.run(main)
