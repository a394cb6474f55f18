"""Data parallelism with JAX's own SPMD engine (`jax.sharding`), on one host or several.

A `Mesh` over the devices with one axis, "data". Batches and the truncated-BPTT carry are split
along their batch axis; parameters and optimizer state are replicated. The train step is the
same function, jitted with these in/out shardings, so XLA inserts the gradient all-reduce; the
compile counts do not change.

Each process assembles only its own rows of every global batch (`process_rows`) and the global
array is put together with `jax.make_array_from_process_local_data`; on one host that is simply
all the rows. The global batch size must divide by the number of devices.

Multi-host: call `initialize(coordinator, num_processes, process_id)` in every process before
anything else touches JAX, e.g. for two processes on one machine:

    python experiments/compare_strategies.py --workdir runs/p0 --config.distributed.enabled=True \
        --config.distributed.coordinator=localhost:12355 --config.distributed.num_processes=2 \
        --config.distributed.process_id=0 &
    python experiments/compare_strategies.py --workdir runs/p1 ... --config.distributed.process_id=1
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lstm_jax.batching import Batch, BatchPlan, assemble
from lstm_jax.data import RaggedDataset
from lstm_jax.errors import ConfigError

DATA = "data"


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
  """jax.distributed.initialize, with CPU collectives over gloo so CPU-only hosts work too.

  Must run before anything starts JAX's backend (even jax.devices()). The gloo setting only
  affects the CPU backend.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
  )


def make_mesh(num_devices: int = 0) -> Mesh:
  """A one-axis ("data") mesh over the first `num_devices` devices (0: all of them)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ConfigError(
      f"asked for {n} devices but only {len(devices)} are visible; lower "
      f"mesh.num_devices (on the CPU, XLA_FLAGS="
      f"--xla_force_host_platform_device_count={n} makes {n})."
    )
  return Mesh(np.array(devices[:n]), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(
      f"the {what} {batch_size} does not divide by the {n} devices of the mesh; "
      f"use a multiple of {n} (e.g. {(batch_size // n + 1) * n}) or fewer devices."
    )


def process_rows(batch_size: int, mesh: Mesh) -> slice:
  """The rows of a global batch that this process holds (its devices' contiguous share)."""
  n_proc, pid = jax.process_count(), jax.process_index()
  per = batch_size // n_proc
  return slice(pid * per, (pid + 1) * per)


def shard_batch(
  dataset: RaggedDataset,
  plan: BatchPlan,
  mesh: Mesh,
  local: Batch | None = None,
  right_padded: bool = False,
) -> Batch:
  """A global `Batch` of jax.Arrays split over the mesh's data axis.

  Only this process's rows are assembled from the data (or taken from `local`, a full batch);
  right_padded: as `assemble`'s (the rows' lengths come along, split as the rows are).
  """
  check_divisible(plan.batch_size, mesh)
  rows = process_rows(plan.batch_size, mesh)
  if local is None:
    mine = plan.take_rows(rows.start, rows.stop)
    local = assemble(dataset, mine, right_padded)
  else:
    local = jax.tree.map(lambda a: a[rows], local)
  sharding = batch_sharding(mesh)
  return jax.tree.map(
    lambda a: jax.make_array_from_process_local_data(sharding, a, (plan.batch_size,) + a.shape[1:]),
    local,
  )


def shard_carry(carry: Any, mesh: Mesh) -> Any:
  return jax.device_put(carry, batch_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
  return jax.device_put(tree, replicated(mesh))
