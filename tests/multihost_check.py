"""Run by tests/test_sharding.py as two processes on localhost (CPU, gloo collectives): trains
pad and tbptt for one epoch on a 2-device global mesh (one device per process); process 0
prints the losses as JSON."""

import json
import sys

sys.path.insert(0, sys.argv[1])
from lstm_jax import sharding  # noqa: E402

sharding.initialize(f"localhost:{sys.argv[2]}", 2, int(sys.argv[3]))

import jax  # noqa: E402
import optax  # noqa: E402
from test_sharding import MULTIHOST_LENGTHS  # noqa: E402

from conftest import ragged_features  # noqa: E402
from lstm_jax import batching, train  # noqa: E402
from lstm_jax.model import SequenceModel  # noqa: E402

ds = ragged_features(MULTIHOST_LENGTHS, num_features=3, seed=0)
mesh = sharding.make_mesh()
out = dict(processes=jax.process_count(), devices=jax.device_count())
for name, strategy in (
  ("pad", batching.Pad(ds, batch_size=8)),
  ("tbptt", batching.TBPTT(ds, num_streams=8, chunk_length=5)),
):
  state = train.create_train_state(SequenceModel(8, num_outputs=2), optax.adam(1e-2), ds)
  r = train.fit(state, strategy, epochs=1, steps=train.StepFunctions.create(mesh))
  out[name] = [h["loss"] for h in r.history]
if jax.process_index() == 0:
  print("RESULT " + json.dumps(out))
