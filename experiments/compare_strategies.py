"""Trains one LSTM under every batching strategy and reports them side by side.

    python experiments/compare_strategies.py --workdir runs/compare
    python experiments/compare_strategies.py --config configs/compare.py:smoke --workdir /tmp/smoke

See configs/compare.py for the presets and settings; any can be overridden, e.g.
--config.model.hidden_size=256 --config.seeds=3.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lstm_jax import errors  # noqa: E402
from lstm_jax.runner import experiment

_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "compare.py")
_CONFIG = config_flags.DEFINE_config_file(
  "config", _DEFAULT, "Experiment config (file:preset).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Where results, report and plots go.", required=True
)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep JAX's backend probing out of the output
  experiment.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(errors.exit_on_user_error(main), flags_parser=errors.parse_flags)
