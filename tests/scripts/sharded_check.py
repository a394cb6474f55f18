"""Run by tests/test_sharding.py in a subprocess with 4 forced CPU devices; prints JSON.

python tests/scripts/sharded_check.py TESTS_DIR library   # each strategy for a few steps without a
                                                   # mesh, on a 1-device and a 4-device mesh
python tests/scripts/sharded_check.py TESTS_DIR runner    # the runner's smoke preset (two
                                                   # strategies, fewer sequences) on 1 and 4
"""

import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, sys.argv[1])
from helpers import ragged_features  # noqa: E402
from lstm_jax import batching, evaluation, loop, sharding, train  # noqa: E402
from lstm_jax.model import SequenceModel  # noqa: E402

LENGTHS = np.random.default_rng(5).integers(1, 20, size=48)
ds = ragged_features(LENGTHS, num_features=3, seed=0)
STRATEGIES = {
  "pad": lambda: batching.Pad(ds, batch_size=8),
  "bucket": lambda: batching.Bucket(ds, tokens_per_batch=96, num_buckets=2, batch_multiple=4),
  "tbptt": lambda: batching.TBPTT(ds, num_streams=8, chunk_length=5),
  "pack": lambda: batching.Pack(ds, batch_size=4, row_length=24),
  "pad_batch_max": lambda: batching.PadBatchMax(ds, batch_size=8),
}


def library() -> dict:
  out = {"devices": jax.device_count()}
  for name, make in STRATEGIES.items():
    runs = {}
    # No mesh against a 4-device one. (A 1-device mesh is the runner's on one device: the
    # shared smoke run, which test_runner_uses_all_local_devices_... compares with 4 devices.)
    for label, mesh in (("none", None), ("4", sharding.make_mesh(4))):
      model = SequenceModel(hidden_size=8, num_outputs=2)
      state = train.create_train_state(model, optax.adam(1e-2), ds, seed=0)
      steps = train.StepFunctions.create(mesh)
      strategy = make()
      plan = strategy.plan(0)[0]
      b = steps.batch(strategy.dataset, plan)  # what the step receives: with a mesh, split
      if mesh is not None:  # over the data axis
        seen = [list(s.data.shape) for s in b.inputs.addressable_shards]
        spec = str(b.inputs.sharding.spec)
      else:
        seen = [list(b.inputs.shape)]
      r = loop.fit(state, strategy, epochs=1, steps=steps)
      exe = next(iter(steps.train._executables.values()))
      runs[label] = dict(
        losses=[h["loss"] for h in r.history],
        params=[np.asarray(x).tolist() for x in jax.tree.leaves(r.state.params)],
        compiles=steps.train.compiles,
        shards=seen,
        spec=spec if mesh is not None else None,
        batch_in_sharding=str(exe.input_shardings[0][1]) if mesh is not None else None,
        eval_loss=evaluation.evaluate(r.state, strategy, steps=steps)["loss"],
      )
    out[name] = runs
  try:
    batching_err = None
    loop.fit(
      train.create_train_state(SequenceModel(8, 2), optax.adam(1e-2), ds),
      batching.Pad(ds, batch_size=6),
      epochs=1,
      steps=train.StepFunctions.create(sharding.make_mesh(4)),
    )
  except ValueError as e:
    batching_err = str(e)
  out["indivisible_error"] = batching_err
  return out


def runner() -> dict:
  """The runner's smoke preset on all 4 devices (tests/test_sharding.py compares it with the
  shared one-device smoke run)."""
  sys.path.insert(0, str(Path(sys.argv[1]).parent))
  from configs import compare
  from lstm_jax.runner import experiment

  cfg = compare.get_config("smoke")
  cfg.plots = False  # the PNGs: the shared smoke run's (test_smoke_writes_every_file_and_key)
  cfg.strategies = RUNNER_STRATEGIES
  cfg.predict_costs = False
  with tempfile.TemporaryDirectory() as workdir:
    experiment.train_and_evaluate(cfg, workdir, quiet=True)
    metrics = [json.loads(line) for line in open(Path(workdir) / "metrics.jsonl")]
    return dict(
      summary=json.loads((Path(workdir) / "summary.json").read_text()),
      bucket_shapes=[m["shape"] for m in metrics if m.get("strategy") == "bucket" and "shape" in m],
    )


RUNNER_STRATEGIES = ("bucket", "tbptt")  # token-budget bucketing, and streams
print("RESULT " + json.dumps(library() if sys.argv[2] == "library" else runner()))
