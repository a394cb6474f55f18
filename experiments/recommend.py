"""Which strategy for this data, before training: predicted padding, shapes and compiles, the
largest step's memory, compile and training seconds for the budget, and whether gradients are
truncated, for each strategy of the config; then a recommendation with its reason.

    python experiments/recommend.py --config configs/compare.py:default
    python experiments/recommend.py --config configs/compare.py:digits --workdir runs/digits

The same config as experiments/compare_strategies.py (data, model, budget, strategies). The
costs come from a calibration on this machine (runner.costs: two shapes compiled and timed, a
few seconds), saved in --workdir/calibration.json when a workdir is given and read back there
(the runner uses the same file for num_buckets="auto"). Writes recommend.json there too.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lstm_jax import errors, workdir  # noqa: E402
from lstm_jax.runner import recommend

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "compare.py")
_CONFIG = config_flags.DEFINE_config_file(
  "config", _DEFAULT, "Experiment config (file:preset).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Optional: where the calibration is kept and recommend.json goes."
)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  result = recommend.run_recommender(_CONFIG.value, _WORKDIR.value)
  print(recommend.recommendation_text(result))
  if _WORKDIR.value:
    workdir.write_json_atomically(os.path.join(_WORKDIR.value, "recommend.json"), result, indent=1)


if __name__ == "__main__":
  app.run(errors.exit_on_user_error(main), flags_parser=errors.parse_flags)
