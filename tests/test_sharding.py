"""Data parallel on 4 CPU devices (forced with XLA_FLAGS, in a subprocess so this process keeps
its one device): 1 device and 4 devices give the same losses and parameters for every strategy,
the batch really is split, compile counts do not change."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from helpers import SCRIPTS, subprocess_env  # noqa: E402


def _sharded_check(part: str) -> dict:
  """tests/scripts/sharded_check.py's `part` ("library" or "runner") on 4 forced CPU devices."""
  proc = subprocess.run(
    [sys.executable, str(SCRIPTS / "sharded_check.py"), str(HERE), part],
    capture_output=True,
    text=True,
    timeout=600,
    env=subprocess_env(4),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT ") :])


@pytest.fixture(scope="session")  # once per worker, although other modules' tests run between
def result():
  return _sharded_check("library")


@pytest.fixture(scope="session")
def runner_result():
  return _sharded_check("runner")


STRATEGIES = ["pad", "bucket", "tbptt", "pack", "pad_batch_max"]
MULTIHOST_LENGTHS = [3, 9, 1, 12, 7, 5, 11, 2, 8, 6, 4, 10, 9, 3, 7, 12]


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.xdist_group("sharded")  # one worker runs the module's subprocess once
@pytest.mark.parametrize("name", STRATEGIES)
def test_one_and_four_devices_give_the_same_losses_and_params(result, name):
  assert result["devices"] == 4
  four, one = result[name]["4"], result[name]["none"]
  assert len(one["losses"]) == len(four["losses"]) > 1
  assert _rel(four["losses"], one["losses"]) <= 1e-5
  assert len(four["params"]) == len(one["params"]) > 0
  for a, b in zip(four["params"], one["params"]):
    assert _rel(a, b) <= 1e-5
  assert abs(four["eval_loss"] - one["eval_loss"]) <= 1e-5 * abs(one["eval_loss"])


@pytest.mark.xdist_group("sharded")
@pytest.mark.parametrize("name", STRATEGIES)
def test_batch_is_split_and_compiles_unchanged(result, name):
  four, one = result[name]["4"], result[name]["none"]
  assert len(four["shards"]) == 4
  rows = {s[0] for s in four["shards"]}
  assert len(rows) == 1 and 4 * rows.pop() == sum(s[0] for s in one["shards"])
  assert "data" in four["spec"] and "data" in four["batch_in_sharding"]
  assert four["compiles"] == one["compiles"]


@pytest.mark.xdist_group("sharded")
def test_batch_that_does_not_divide_by_devices(result):
  assert "batch size 6 does not divide by the 4 devices" in result["indivisible_error"]


@pytest.mark.xdist_group("smoke")  # after the shared one-device smoke run, on its worker
def test_runner_uses_all_local_devices_and_matches_one_device(runner_result, smoke_run):
  """The runner's smoke preset (bucket and tbptt; in tests/scripts/sharded_check.py) on 4
  devices against the shared smoke run on 1: rows say how many devices they used and every
  strategy gives the one-device numbers, token-budget bucketing included (its batches are
  composed as on one device, then widened with empty rows to a multiple of 4)."""
  one_dir, _ = smoke_run
  one = {r["strategy"]: r for r in json.loads((one_dir / "summary.json").read_text())}
  four = {r["strategy"]: r for r in runner_result["summary"]}
  assert all(r["devices"] == 4 for r in four.values())
  assert all(r["devices"] == 1 for r in one.values())
  assert set(four) == {"bucket", "tbptt"} <= set(one)
  for name in four:
    assert abs(four[name]["eval_loss"] - one[name]["eval_loss"]) <= 1e-5 * one[name]["eval_loss"]
    assert four[name]["compiles"] == one[name]["compiles"]
    assert four[name]["real_tokens"] == one[name]["real_tokens"]
    assert four[name]["steps"] == one[name]["steps"] >= 5
  shapes = runner_result["bucket_shapes"]
  assert shapes and all(int(shape.split("x")[0]) % 4 == 0 for shape in shapes)


@pytest.mark.fresh_processes
def test_two_processes_on_localhost_match_one_process(tmp_path):
  """Multi-host on the CPU: two processes (one device each, gloo collectives) joined by
  jax.distributed give the losses of one process with one device, from memory and from a store;
  from the store, each process reads only its own rows: about half of each batch's steps, and
  together every step once."""
  import socket

  import optax

  from helpers import ragged_features
  from lstm_jax import batching, loop, store, train
  from lstm_jax.model import SequenceModel

  store.from_dataset(ragged_features(MULTIHOST_LENGTHS, num_features=3, seed=0), tmp_path / "st")
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = subprocess_env(None)
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        str(SCRIPTS / "multihost_check.py"),
        str(HERE),
        str(port),
        str(i),
        str(tmp_path / "st"),
        str(tmp_path / "ckpt"),
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for i in (0, 1)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
  got = json.loads([line for line in outs[0][0].splitlines() if line.startswith("RESULT ")][-1][7:])
  assert got["processes"] == 2 and got["devices"] == 2
  ds = ragged_features(MULTIHOST_LENGTHS, num_features=3, seed=0)
  for name, strategy in (
    ("pad", batching.Pad(ds, batch_size=8)),
    ("tbptt", batching.TBPTT(ds, num_streams=8, chunk_length=5)),
  ):
    state = train.create_train_state(SequenceModel(8, num_outputs=2), optax.adam(1e-2), ds)
    want = [h["loss"] for h in loop.fit(state, strategy, epochs=1).history]
    assert len(got[name]) == len(want) and _rel(got[name], want) <= 1e-5, name
    assert got["store_" + name] == got[name], name  # the same batches, the same numbers
  reads = [
    [int(x) for x in line.split()[1:]]
    for out, _ in outs
    for line in out.splitlines()
    if line.startswith("READ ")
  ]
  (p0, read0, held0), (p1, read1, held1) = sorted(reads)
  assert (p0, p1) == (0, 1) and held0 == held1 == read0 + read1  # every step read once
  assert 0.3 < read0 / held0 < 0.7 and 0.3 < read1 / held1 < 0.7  # each its own share
  # Preemption: a SIGTERM to process 1 alone stops both at the same step, each after
  # the checkpoint there; resumed, the epoch's losses are the uninterrupted run's.
  stopped = sorted(
    line.split()[1:] for out, _ in outs for line in out.splitlines() if line.startswith("STOPPED ")
  )
  assert [p for p, _ in stopped] == ["0", "1"] and stopped[0][1] == stopped[1][1] != "None"
  assert 3 <= got["resumed_from"] == int(stopped[0][1]) < len(got["uninterrupted"])
  assert got["resumed"] == got["uninterrupted"]
  from lstm_jax import metric_writers

  if metric_writers.tensorboard_available():  # one event file, process 0's, every step once
    assert len(list((tmp_path / "ckpt-tb").iterdir())) == 1
    steps = [s for s, _, _ in metric_writers.read_scalars(str(tmp_path / "ckpt-tb"))["train/loss"]]
    assert steps == list(range(1, len(got["uninterrupted"]) + 1))
