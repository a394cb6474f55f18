"""The host process's memory allocator, which sets a large part of a CPU train step's time.

XLA's CPU runtime allocates a train step's scratch memory afresh on every call: tens of MiB,
mostly the scan's stacked residuals. With its defaults, glibc's malloc serves a request that
large with a fresh `mmap` and unmaps it on `free`, so every call faults in each 4 KiB page again
and the kernel zeroes it: thousands of minor page faults per call, a sizeable share of the
step's time (how much: BENCHMARKS.md "Allocator", docs/speed.md).

`tune_malloc()` tells glibc (`mallopt`) to serve such requests from its heap and to keep freed
memory there for the next call: mmap threshold 1 GiB, trim threshold 2 GiB - 1, top pad 256 MiB,
and one arena (a thread arena's heap is capped at 64 MiB, so larger scratch would be mapped
afresh again). After it, most steady calls of a train step take no page faults; now and then
the heap still grows, when fragmentation leaves no free hole big enough for the scratch (a few
times early on, then it settles). What it costs: the process keeps its peak heap until it exits
instead of returning freed memory to the OS, and that heap holds a few times one step's scratch.
It is
process-wide, so everything in the process gets it, peers in a benchmark included; it affects
only allocations made after the call (call it first thing; the arena setting applies to threads
that have not allocated yet). Numbers do not change, only where memory comes from.

Elsewhere than glibc (macOS, musl) it does nothing and says why in the returned state.
Equivalent without code, before Python starts:

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647:glibc.malloc.top_pad=268435456:glibc.malloc.arena_max=1
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import resource

# mallopt parameters (glibc malloc.h) and the values tune_malloc sets. mallopt takes a C int.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
SETTINGS = {
  "mmap_threshold": (M_MMAP_THRESHOLD, 1 << 30),
  "trim_threshold": (M_TRIM_THRESHOLD, (1 << 31) - 1),
  "top_pad": (M_TOP_PAD, 256 << 20),
  "arena_max": (M_ARENA_MAX, 1),
}

_state: dict = {"tuned": False, "reason": "tune_malloc() not called"}


def libc() -> str:
  """'glibc 2.36', or what Python reports for another C library ('' when unknown)."""
  name, version = platform.libc_ver()
  return f"{name} {version}".strip()


def tune_malloc(enable: bool = True) -> dict:
  """Keep large freed buffers in glibc's heap (see the module docstring); returns `malloc_state()`.

  enable=False records that the allocator was left at its defaults (settings already made in
  this process stay: glibc cannot restore its dynamic defaults).
  """
  global _state
  if not enable:
    if not _state["tuned"]:
      _state = {"tuned": False, "reason": "disabled (tune_malloc=False)", "libc": libc()}
    return malloc_state()
  if platform.system() != "Linux" or not libc().startswith("glibc"):
    _state = {
      "tuned": False,
      "reason": f"not glibc ({platform.system()}, {libc() or 'unknown libc'})",
      "libc": libc(),
    }
    return malloc_state()
  c = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  refused = [name for name, (param, value) in SETTINGS.items() if c.mallopt(param, value) != 1]
  _state = {
    "tuned": not refused,
    "libc": libc(),
    "settings": {name: value for name, (_, value) in SETTINGS.items()},
  }
  if refused:
    _state["reason"] = f"mallopt refused {refused}"
  return malloc_state()


def malloc_state() -> dict:
  """What tune_malloc did in this process: {'tuned': bool, 'libc': ..., 'settings' | 'reason'}."""
  return dict(_state)


def minor_page_faults() -> int:
  """Minor page faults this process has taken so far (getrusage): the allocator's cost shows
  here."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
