"""What a result was computed with: the numerical stack's versions and the machine.

Results files (the runner's, the benchmark's) record `versions()`, so a number can be traced to
the Python, jax, flax and optax that produced it and to the CPU it ran on: speed differs between
CPU models (bfloat16 matmuls were faster than float32 on one and slower on another).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

import flax
import jax
import numpy as np
import optax

from lstm_jax import host


def cpu_model() -> str:
  """The CPU's model name (Linux: /proc/cpuinfo; elsewhere: platform.processor())."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
  """The CPU's vector-instruction flags that matter to XLA's kernels (AVX, AVX-512, AMX...)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return sorted(
            f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "amx", "fma", "sse4"))
          )
  except OSError:
    pass
  return []


def versions() -> dict:
  """Python, jax, jaxlib, flax, optax and numpy versions, the backend and its devices, and the
  machine: architecture, CPU model and flags, core count, OS, and the allocator's state."""
  return dict(
    python=sys.version.split()[0],
    jax=jax.__version__,
    jaxlib=importlib.metadata.version("jaxlib"),
    flax=flax.__version__,
    optax=optax.__version__,
    numpy=np.__version__,
    backend=jax.default_backend(),
    devices=[str(d) for d in jax.devices()],
    machine=platform.machine(),
    cpu_model=cpu_model(),
    cpu_flags=cpu_flags(),
    cpu_count=os.cpu_count(),
    platform=platform.platform(),
    malloc=host.malloc_state(),
  )
