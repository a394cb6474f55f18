"""Text from a trained byte-level model: what a runner row learned, read back from its checkpoint.

    model, params, row = load_row("runs/compare")            # the best row's final checkpoint
    text = sample(model, params, b"def ", length=200, temperature=0.8, seed=0)

`load_row` rebuilds the model from the workdir's meta.json (the config's model section, as the
runner built it) and the checkpoint's own parameter shapes (vocabulary, outputs), so no data is
loaded. `sample` feeds the prompt through `streaming.Streamer` once, then one byte per call, the
LSTM state carried between calls: the outputs equal one forward pass over the whole text.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from lstm_jax.checkpoint import Checkpointer, quiet_orbax
from lstm_jax.errors import CheckpointError, ConfigError
from lstm_jax.model import SequenceModel
from lstm_jax.streaming import Streamer
from lstm_jax.workdir import run_dir


def _read_json(workdir: str, name: str, kind: type):
  """A runner workdir's JSON file, as `kind`: missing, cut short or of another shape is one
  ConfigError naming it and the fix."""
  path = os.path.join(workdir, name)
  again = f"run experiments/compare_strategies.py with --workdir {workdir} to the end first"
  if not os.path.isfile(path):
    raise ConfigError(f"{workdir} has no {name}: {again}.")
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} cannot be read ({type(e).__name__}: {e}); {again}.") from None
  if not isinstance(obj, kind):
    raise ConfigError(
      f"{path} holds a {type(obj).__name__}, not the runner's {kind.__name__}; {again}."
    )
  return obj


def load_row(
  workdir: str, strategy: str | None = None, seed: int | None = None, step: int | None = None
) -> tuple[SequenceModel, Any, dict]:
  """(model, params, info) of one row's checkpoint in a runner workdir: `strategy` (default the
  comparable row with the lowest final eval loss in summary.json), `seed` (default the config's
  first) and `step` (default the newest checkpoint, the end of training)."""
  meta = _read_json(workdir, "meta.json", dict)
  cfg = meta.get("config")
  if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "seed" not in cfg:
    raise ConfigError(
      f"{os.path.join(workdir, 'meta.json')} has no config with a model section and a seed (it "
      f"was damaged or written by something else); run experiments/compare_strategies.py with "
      f"--workdir {workdir} again to rewrite it."
    )
  if strategy is None:
    rows = _read_json(workdir, "summary.json", list)
    scored = [r for r in rows if isinstance(r, dict) and "eval_loss" in r and "strategy" in r]
    comparable = [r for r in scored if r.get("comparable", True)]
    if not comparable:
      names = sorted({r["strategy"] for r in scored})
      raise ConfigError(
        f"{os.path.join(workdir, 'summary.json')} has no comparable row to pick as the best; "
        f"name one with --strategy (rows: {names})."
      )
    strategy = min(comparable, key=lambda r: r["eval_loss"])["strategy"]
  seed = cfg["seed"] if seed is None else int(seed)
  directory = run_dir(workdir, "checkpoints", strategy, seed)
  if not os.path.isdir(directory):
    parent = os.path.dirname(directory)
    rows = sorted(os.listdir(parent)) if os.path.isdir(parent) else []
    raise CheckpointError(
      f"no checkpoints for {strategy} seed {seed} in {directory}; the runner keeps them when "
      f"config.checkpoint.enabled is True (the default). Rows with checkpoints there: {rows}."
    )
  with quiet_orbax():  # a damaged checkpoint: one message, not orbax's tracebacks
    checkpointer = Checkpointer(directory)
    try:
      step = checkpointer.latest_step() if step is None else int(step)
      if step not in checkpointer.steps():
        raise CheckpointError(
          f"no checkpoint of step {step} in {directory}: {checkpointer.steps()}."
        )
      arrays, stream = checkpointer.read(step)
    finally:
      checkpointer.close()
  params = arrays["params"]
  if "embed" not in params:
    raise ConfigError(
      f"{strategy}'s model takes float features, not tokens; sampling needs a token language "
      f"model (the byte-level presets: default, smoke, files)."
    )
  vocab = int(np.shape(params["embed"]["embedding"])[0])
  model = SequenceModel(
    **cfg["model"], num_outputs=int(np.shape(params["head"]["kernel"])[-1]), vocab_size=vocab
  )
  info = dict(strategy=strategy, seed=seed, step=step, real_tokens=stream["real_tokens"])
  return model, params, info


def sample(
  model: SequenceModel,
  params: Any,
  prompt: bytes,
  length: int,
  temperature: float = 1.0,
  seed: int = 0,
  with_logits: bool = False,
) -> bytes | tuple[bytes, np.ndarray]:
  """`length` bytes continuing `prompt` (at least one byte), each drawn from the model's softmax
  at `temperature` (0: the most likely byte) with a numpy generator seeded by `seed`.
  with_logits: also return the logits each byte was drawn from, <float32>[length, vocab]."""
  if not prompt:
    raise ConfigError("the prompt is empty; give at least one byte (e.g. a newline).")
  if length < 0 or temperature < 0:
    raise ConfigError(f"length and temperature must be >= 0, got {length} and {temperature}.")
  rng = np.random.default_rng(seed)
  streamer = Streamer(model, params, batch_size=1)
  logits = streamer(np.frombuffer(prompt, np.uint8).astype(np.int32)[None])
  out, scores = bytearray(), []
  for _ in range(length):
    scores.append(np.asarray(logits[0, -1]))
    last = scores[-1].astype(np.float64)
    if temperature == 0:
      token = int(np.argmax(last))
    else:
      z = last / temperature
      p = np.exp(z - z.max())
      token = int(rng.choice(len(p), p=p / p.sum()))
    out.append(token)
    logits = streamer(np.array([[token]], np.int32))
  if with_logits:
    return bytes(out), np.stack(scores) if scores else np.zeros((0, model.num_outputs), np.float32)
  return bytes(out)
