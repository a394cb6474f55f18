"""Training throughput of each strategy and of peers, on the fixed workload W.

    python experiments/benchmark.py --out BENCHMARKS.md

Writes benchmark.json beside --out and the markdown table to --out; prints both.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lstm_jax import errors  # noqa: E402
from lstm_jax.benchmark import suite as bench_report  # noqa: E402

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "benchmark.py")
_CONFIG = config_flags.DEFINE_config_file(
  "config", _DEFAULT, "Benchmark config (file:preset).", lock_config=True
)
_OUT = flags.DEFINE_string(
  "out", "BENCHMARKS.md", "Markdown report; benchmark.json goes beside it."
)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  bench_report.run(_CONFIG.value, _OUT.value)


if __name__ == "__main__":
  app.run(errors.exit_on_user_error(main), flags_parser=errors.parse_flags)
