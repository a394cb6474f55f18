"""The candidates for a faster train step against the default step, side by side
(lstm_jax.benchmark.candidates): hoisted input projection, unrolled scans, autodiff backward.

    python experiments/speed_candidates.py --out benchmarks/DATE-CPU-candidates/CANDIDATES.md

Writes candidates.json beside --out (figures per round, CPU model and flags, versions). A few
minutes on 2 cores. --quick: W's shapes cut down, a check that it runs.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from configs import benchmark as benchmark_config  # noqa: E402
from lstm_jax.benchmark import (
  candidates,  # noqa: E402
  sections,  # noqa: E402
)
from lstm_jax.environment import versions  # noqa: E402
from lstm_jax.files import write_json_atomically, write_text_atomically  # noqa: E402

flags.DEFINE_string("out", "CANDIDATES.md", "Markdown report; candidates.json beside it.")
flags.DEFINE_integer("rounds", 5, "Rounds, each timing every variant once.")
flags.DEFINE_string(
  "summary",
  "BENCHMARKS.md",
  "Also put the report in this file, as its speed-candidates section ('': not).",
)
flags.DEFINE_bool("quick", False, "Tiny shapes: a check that every part runs.")
F = flags.FLAGS


def main(_):
  cfg = benchmark_config.get_config("quick" if F.quick else "default")
  result = candidates.run(cfg, rounds=F.rounds)
  v = versions()
  result["versions"] = v
  cpu = f"{v.get('cpu_model', 'CPU model not recorded')}, {v.get('cpu_count')} cores"
  out_json = os.path.join(os.path.dirname(os.path.abspath(F.out)), "candidates.json")
  write_json_atomically(out_json, result, indent=1)
  text = "# Candidates for a faster step\n\n" + candidates.markdown(result, cpu)
  write_text_atomically(F.out, text)
  if F.summary and not F.quick:  # a section of the top-level BENCHMARKS.md, kept by its rewrites
    link = os.path.relpath(os.path.abspath(F.out), os.path.dirname(os.path.abspath(F.summary)))
    section = text.replace("# ", "## ", 1) + f"\nFiles: [{link}]({link}).\n"
    sections.put(F.summary, "speed-candidates", section)
  print(text)


if __name__ == "__main__":
  app.run(main)
