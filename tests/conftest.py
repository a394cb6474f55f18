"""pytest's hooks and fixtures, and the environment every test process starts with (CPU, rank
promotion raising, XLA's flags, one JAX compilation cache per session). The helpers tests
import are in tests/helpers.py."""

import atexit
import gc
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A broadcast that adds a rank (a [B, H] + [H] bias) raises in the tests, here and in every
# subprocess they start: each one in the code is written out ([None, :]), so none is silent.
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")
# XLA's CPU backend emits its fused loops the older way, which compiles a train step in about
# half the time (4.2 -> 2.2 s for a 2-layer bucket step, Xeon, 2026-12-01), and as one LLVM
# module instead of split for parallel codegen (2.5 -> 1.9 s more: two workers already use both
# cores): the tests' time is mostly compiles. Here and in every subprocess the tests start (the
# same flags everywhere, so numbers compared between processes come from the same code); the
# page-fault probe keeps XLA's defaults.
from helpers import TEST_XLA_FLAGS  # noqa: E402 (after the two settings jax reads at import)

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}"

import jax
import numpy as np
import pytest

from helpers import run_smoke


def pytest_collection_modifyitems(items):
  """The long tests first: those that start fresh processes (`fresh_processes`, and the
  xdist_group ones, which share one subprocess run), so that on two workers they run beside the
  many short tests instead of after them. A stable sort: the order is otherwise unchanged."""
  items.sort(
    key=lambda item: (
      not (item.get_closest_marker("fresh_processes") or item.get_closest_marker("xdist_group"))
    )
  )


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
  """Collect the session's garbage until none is left, then freeze what survives
  (`gc.freeze`). pytest's unraisable-exception check, which runs after this, then collects five
  more times to find late finalizer errors: over a worker's ~1M live objects (compiled programs,
  traced functions) that kept it 9-10 s from its last test to its exit (0.5-0.9 s per collection
  after a quarter of the suite, 2026-12-07), and past 5 s pytest-xdist's controller
  interrupts the worker (a SIGINT, reported as a KeyboardInterrupt "ignored in" JAX's gc
  callback) while the suite's reported time waits. Nothing the check would find is skipped: a
  collection that finds nothing unreachable leaves nothing for the next ones to find."""
  for _ in range(5):
    if not gc.collect():
      break
  gc.freeze()


@pytest.fixture(autouse=True)
def _xla_optimizations(request):
  """In-process tests check numbers and behaviour, not the speed of the compiled code: they run
  with XLA's backend optimizations mostly off (`jax_disable_most_optimizations`, as the runner
  subprocesses do and as Flax's example tests do), which makes their many small compiles cheaper.
  A test that reads the compiled program opts out with `xla_optimized`."""
  optimized = request.node.get_closest_marker("xla_optimized") is not None
  jax.config.update("jax_disable_most_optimizations", not optimized)
  yield


@pytest.fixture
def rng():
  return np.random.default_rng(1234)


# One JAX compilation cache for every subprocess of a test session (pytest-xdist workers
# included): a program compiled by one run (the uninterrupted resume run, say) is loaded by the
# next run of the same program instead of compiled again.
if not os.environ.get("LSTM_JAX_TEST_CACHE"):  # the first process of the session makes it
  os.environ["LSTM_JAX_TEST_CACHE"] = tempfile.mkdtemp(prefix="lstm_jax_test_cache_")
  atexit.register(shutil.rmtree, os.environ["LSTM_JAX_TEST_CACHE"], ignore_errors=True)
_SUBPROCESS_CACHE = Path(os.environ["LSTM_JAX_TEST_CACHE"])  # inherited by xdist's workers
# The parsed standard library (sources.parse_cache_dir) too: parsed once per session, not in ~.
os.environ["LSTM_JAX_CACHE_DIR"] = str(_SUBPROCESS_CACHE / "parsed")
# The in-process tests use it too: a program another test (or the other worker) compiled is
# loaded instead of compiled again. Compile counts are unchanged (CountedJit still compiles
# each signature; XLA's part of that compile is what the cache skips).
jax.config.update("jax_compilation_cache_dir", str(_SUBPROCESS_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
  """(workdir, process) of one smoke run on one device, shared by the tests that read it."""
  workdir = tmp_path_factory.mktemp("smoke")
  return workdir, run_smoke(workdir, calibrate=True)
