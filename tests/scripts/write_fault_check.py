"""Run by tests/test_checkpoint.py: checkpoint writes that fail, each in its own directory under
WORKDIR, in one process. A tbptt fit checkpoints every 3 steps; once step 3's checkpoint is on
disk, the directory is made unwritable, so step 6's write fails:

  immutable  chattr +i (EPERM, even for root)
  read-only  a read-only bind mount of the directory onto itself (EROFS)
  orbax-eio  simulated: orbax's own creation of the step's directory raises EIO (the directory
             itself stays writable), which leaves orbax's threads waiting for it

Each fault's CheckpointError is printed as "FAULT <mode>: <message>"; the last one is re-raised
through the command line's wrapper, which must exit with 2, without hanging on orbax's threads.

    python tests/scripts/write_fault_check.py WORKDIR MODE [MODE ...]
"""

import errno
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402
import optax  # noqa: E402
from orbax.checkpoint._src.path import async_path  # noqa: E402

from helpers import ragged_features  # noqa: E402
from lstm_jax import batching, errors, loop, train  # noqa: E402
from lstm_jax.checkpoint import Checkpointer, quiet_orbax  # noqa: E402
from lstm_jax.errors import CheckpointError  # noqa: E402
from lstm_jax.model import SequenceModel  # noqa: E402

UNDO = []  # what restores each directory, run at the end


def break_directory(mode: str, directory: str) -> None:
  if mode == "immutable":
    subprocess.run(["chattr", "+i", directory], check=True)
    UNDO.append(["chattr", "-i", directory])
  elif mode == "read-only":
    subprocess.run(["mount", "--bind", directory, directory], check=True)
    UNDO.append(["umount", directory])
    subprocess.run(["mount", "-o", "remount,ro,bind", directory], check=True)
  elif mode == "orbax-eio":
    real = async_path.mkdir

    async def mkdir(path, *args, **kwargs):
      if ".orbax-checkpoint-tmp" in str(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
      return await real(path, *args, **kwargs)

    async_path.mkdir = mkdir
  else:
    raise SystemExit(f"unknown mode {mode}")


def fault(mode: str, directory: str) -> CheckpointError:
  ds = ragged_features(np.random.default_rng(5).integers(1, 30, size=48), num_features=3, seed=1)
  state = train.create_train_state(SequenceModel(8, num_outputs=2), optax.adam(1e-2), ds)
  ckpt = Checkpointer(directory, every_steps=3, keep=3)

  def after_step(record):
    if record["step"] == 4:
      ckpt.wait()  # step 3 is on disk
      break_directory(mode, directory)

  try:
    loop.fit(
      state,
      batching.TBPTT(ds, num_streams=4, chunk_length=7, seed=2),
      epochs=2,
      checkpointing=loop.Checkpointing(ckpt),
      hooks=loop.Hooks(on_step=after_step),
    )
  except CheckpointError as e:
    return e
  raise SystemExit(f"{mode}: the write did not fail")


@errors.exit_on_user_error
def main(workdir: str, modes: list[str]) -> None:
  last = None
  try:
    with quiet_orbax():  # a main opts in: orbax's tracebacks summarised in the one line
      for mode in modes:
        last = fault(mode, os.path.join(workdir, mode))
        print(f"FAULT {mode}: {last}", flush=True)
  finally:
    for undo in reversed(UNDO):
      subprocess.run(undo, check=False)
  raise last


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
