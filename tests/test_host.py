"""lstm_jax.host: the allocator setting that keeps a CPU train step's scratch memory in the heap."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import SCRIPTS
from lstm_jax import host

glibc_only = pytest.mark.skipif(
  not host.libc().startswith("glibc"),
  reason=f"glibc's mallopt only; this is {host.libc() or 'unknown'}",
)


def _faults(arm: str) -> dict:
  proc = subprocess.run(
    [sys.executable, str(SCRIPTS / "page_faults_check.py"), arm],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(  # glibc's and XLA's defaults; the second arm loads the step the first compiled
      {
        k: v
        for k, v in os.environ.items()
        if k not in ("GLIBC_TUNABLES", "XLA_FLAGS") and not k.startswith("MALLOC_")
      },
      JAX_COMPILATION_CACHE_DIR=os.environ["LSTM_JAX_TEST_CACHE"],
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    ),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@glibc_only
@pytest.mark.fresh_processes
def test_tuned_train_step_takes_no_page_faults():
  """After tune_malloc, a steady gradient step with ~75 MiB of XLA scratch (more than a thread
  arena's 64 MiB heap) reuses the heap: the median call takes (almost) no page faults, where
  glibc's defaults map and fault in the scratch afresh on every call (unless the kernel backs it
  with huge pages anyway). A median: the tuned heap still grows now and then when fragmentation
  leaves no hole big enough (seen at up to 3 of 12 calls; CI once caught one in a 4-call mean)."""
  tuned, default = _faults("tuned"), _faults("default")
  pages = tuned["temp_bytes"] / 4096
  assert tuned["temp_bytes"] > 64 * 2**20
  assert tuned["malloc"]["tuned"] and not default["malloc"]["tuned"]
  seen = f"pages {pages:.0f}; tuned faults per call {tuned['faults']}; default {default['faults']}"
  assert tuned["faults_per_call"] < 0.01 * pages, seen
  thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
  if thp.exists() and "[always]" not in thp.read_text():  # 4 KiB pages: one fault per page
    assert default["faults_per_call"] > 0.5 * pages, seen
    assert sum(tuned["faults"]) < 0.5 * sum(default["faults"]), seen


@glibc_only
def test_tune_malloc_reports_what_it_set(monkeypatch):
  state = host.tune_malloc()
  assert state["tuned"] and state["libc"].startswith("glibc")
  assert state["settings"] == {name: value for name, (_, value) in host.SETTINGS.items()}
  assert host.malloc_state() == state
  state["tuned"] = False  # a copy: callers cannot change the record
  assert host.malloc_state()["tuned"]
  host.tune_malloc(False)  # settings made stay made: the record says tuned
  assert host.malloc_state()["tuned"]


def test_elsewhere_than_glibc_it_does_nothing_and_says_why(monkeypatch):
  monkeypatch.setattr(host, "_state", {"tuned": False, "reason": "tune_malloc() not called"})
  monkeypatch.setattr(host.platform, "libc_ver", lambda: ("musl", "1.2"))
  monkeypatch.setattr(host.ctypes, "CDLL", lambda *a, **k: pytest.fail("mallopt called"))
  state = host.tune_malloc()
  assert not state["tuned"] and "not glibc" in state["reason"] and "musl 1.2" in state["reason"]
  assert host.tune_malloc(False)["reason"] == "disabled (tune_malloc=False)"
