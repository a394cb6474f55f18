"""The candidates for a faster train step against the default step, side by side
(lstm_jax.benchmark.candidates): hoisted input projection, unrolled scans, autodiff backward,
and XLA CPU options (each in a fresh process).

    python experiments/speed_candidates.py --out benchmarks/DATE-CPU-candidates/CANDIDATES.md

Writes candidates.json beside --out (figures per round, CPU model and flags, versions). A few
minutes on 2 cores. --quick: W's shapes cut down, a check that it runs.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from configs import benchmark as benchmark_config  # noqa: E402
from lstm_jax import host  # noqa: E402
from lstm_jax.benchmark import (
  candidates,  # noqa: E402
  sections,  # noqa: E402
)
from lstm_jax.environment import versions  # noqa: E402

flags.DEFINE_string("out", "CANDIDATES.md", "Markdown report; candidates.json beside it.")
flags.DEFINE_integer("rounds", 5, "Rounds, each timing every variant once.")
flags.DEFINE_string(
  "summary",
  "BENCHMARKS.md",
  "Also put the report in this file, as its speed-candidates section ('': not).",
)
flags.DEFINE_bool("quick", False, "Tiny shapes: a check that every part runs.")
flags.DEFINE_integer(
  "xla_rounds", 2, "Rounds of the XLA options (a fresh process per variant and round; 0: none)."
)
F = flags.FLAGS


def main(_):
  cfg = benchmark_config.get_config("quick" if F.quick else "default")
  # The allocator as the benchmark's rows run (configs/benchmark.py: tune_malloc), before
  # anything is allocated: without it every step faults in its scratch afresh (docs/speed.md).
  host.tune_malloc(cfg.tune_malloc)
  result = candidates.run(cfg, rounds=F.rounds)
  if F.xla_rounds:
    result["xla_options"] = candidates.run_xla_options(cfg, rounds=F.xla_rounds)
  result["versions"] = versions()
  text = sections.write_report(
    F.out,
    result,
    "Candidates for a faster step",
    candidates.markdown(result, sections.cpu_words(result["versions"])),
    json_name="candidates.json",
    summary="" if F.quick else F.summary,  # the top-level BENCHMARKS.md's section, kept
    section="speed-candidates",
  )
  print(text)


if __name__ == "__main__":
  app.run(main)
