"""Text from a finished comparison run: a row's checkpoint, sampled byte by byte.

    python experiments/sample.py --workdir runs/compare --prompt "def " --length 300
    python experiments/sample.py --workdir runs/compare --strategy tbptt --temperature 0

--strategy defaults to the comparable row with the lowest final eval loss, --seed to the run's
first seed, --step to the newest checkpoint (the end of training); lstm_jax.runner.generate does it.
"""

import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lstm_jax import errors  # noqa: E402
from lstm_jax.runner import generate

_WORKDIR = flags.DEFINE_string("workdir", None, "A compare_strategies.py workdir.", required=True)
_STRATEGY = flags.DEFINE_string("strategy", None, "Which row (default: the best comparable one).")
_SEED = flags.DEFINE_integer("seed", None, "Which seed's row (default: the run's first).")
_STEP = flags.DEFINE_integer("step", None, "Which checkpoint step (default: the newest).")
_PROMPT = flags.DEFINE_string("prompt", "def ", "Text to continue (at least one byte).")
_LENGTH = flags.DEFINE_integer("length", 300, "Bytes to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature (0: most likely).")
_SAMPLE_SEED = flags.DEFINE_integer("sample_seed", 0, "Seed of the sampling generator.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  model, params, info = generate.load_row(_WORKDIR.value, _STRATEGY.value, _SEED.value, _STEP.value)
  prompt = _PROMPT.value.encode()
  text = generate.sample(
    model, params, prompt, _LENGTH.value, _TEMPERATURE.value, _SAMPLE_SEED.value
  )
  print(
    f"# {info['strategy']} seed {info['seed']}, checkpoint step {info['step']} "
    f"({info['real_tokens']:,} real tokens), temperature {_TEMPERATURE.value}",
    file=sys.stderr,
  )
  sys.stdout.write((prompt + text).decode("utf-8", errors="replace") + "\n")


if __name__ == "__main__":
  app.run(errors.exit_on_user_error(main), flags_parser=errors.parse_flags)
