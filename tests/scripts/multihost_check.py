"""Run by tests/test_sharding.py as two processes on localhost (CPU, gloo collectives): trains
pad and tbptt for one epoch on a 2-device global mesh (one device per process), from memory and
from the store at argv[4] (the same data); process 0 prints the losses as JSON, and each process
prints how many steps of values it read from the store and how many the batches held.

Then preemption: tbptt again with checkpoints in argv[5], and process 1 alone sends itself a
SIGTERM as its step 3 is logged. Each process prints the step it stopped at (they must agree),
then resumes from the checkpoint there and trains the epoch out; process 0 prints the losses."""

import json
import os
import signal
import sys
import time

sys.path.insert(0, sys.argv[1])
from lstm_jax import sharding  # noqa: E402

sharding.initialize(f"localhost:{sys.argv[2]}", 2, int(sys.argv[3]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from test_sharding import MULTIHOST_LENGTHS  # noqa: E402

from helpers import ragged_features  # noqa: E402
from lstm_jax import batching, loop, metric_writers, store, train  # noqa: E402
from lstm_jax.checkpoint import Checkpointer  # noqa: E402
from lstm_jax.model import SequenceModel  # noqa: E402
from lstm_jax.preemption import Preempted, Preemption  # noqa: E402

read = {"steps": 0}
gather = store.StoredDataset.gather


def counted_gather(self, seq, start, n):  # the steps this process reads from the store
  read["steps"] += int(np.sum(n))
  return gather(self, seq, start, n)


store.StoredDataset.gather = counted_gather
mesh = sharding.make_mesh()
out = dict(processes=jax.process_count(), devices=jax.device_count())
held = 0  # real steps in the global batches this process took part in
for source, ds in (
  ("", ragged_features(MULTIHOST_LENGTHS, num_features=3, seed=0)),
  ("store_", store.open_store(sys.argv[4])),
):
  for name, strategy in (
    ("pad", batching.Pad(ds, batch_size=8)),
    ("tbptt", batching.TBPTT(ds, num_streams=8, chunk_length=5)),
  ):
    state = train.create_train_state(SequenceModel(8, num_outputs=2), optax.adam(1e-2), ds)
    r = loop.fit(state, strategy, epochs=1, steps=train.StepFunctions.create(mesh))
    out[source + name] = [h["loss"] for h in r.history]
    held += sum(h["real_tokens"] for h in r.history) if source else 0
print(f"READ {jax.process_index()} {read['steps']} {held}")


def sigterm_at_step_3(record):
  """Process 1 alone is signalled. JAX's preemption service takes some rounds to agree on the
  stop (under a second here), so from then on each step takes 0.1 s."""
  if record["step"] == 3 and jax.process_index() == 1:
    os.kill(os.getpid(), signal.SIGTERM)
  if record["step"] >= 3:
    time.sleep(0.1)


ds = ragged_features(MULTIHOST_LENGTHS, num_features=3, seed=0)
strategy = batching.TBPTT(ds, num_streams=8, chunk_length=5)
steps = train.StepFunctions.create(mesh)
EPOCHS = 12  # steps enough for the agreement


def tbptt_fit(**kwargs):
  state = train.create_train_state(SequenceModel(8, num_outputs=2), optax.adam(1e-2), ds)
  return loop.fit(state, strategy, epochs=EPOCHS, steps=steps, **kwargs)


# TensorBoard from process 0 only (CLU's just_logging), when the extra is installed
writer = (
  metric_writers.create_default_writer(sys.argv[5] + "-tb", just_logging=jax.process_index() > 0)
  if metric_writers.tensorboard_available()
  else None
)
out["uninterrupted"] = [h["loss"] for h in tbptt_fit(hooks=loop.Hooks(writer=writer)).history]
if writer is not None:
  writer.close()
stopped = None
with Preemption() as preemption:
  try:
    tbptt_fit(
      checkpointing=loop.Checkpointing(
        Checkpointer(sys.argv[5], every_steps=0), preemption=preemption
      ),
      hooks=loop.Hooks(on_step=sigterm_at_step_3),
    )
  except Preempted as e:
    stopped = e.step
print(f"STOPPED {jax.process_index()} {stopped}", flush=True)
r = tbptt_fit(checkpointing=loop.Checkpointing(Checkpointer(sys.argv[5], every_steps=0)))
out["resumed_from"], out["resumed"] = r.resumed_from, [h["loss"] for h in r.history]
if jax.process_index() == 0:
  print("RESULT " + json.dumps(out))
