"""experiments/prepare_data.py as a user runs it: it writes only where it may, never loses a
store or a user's file, refuses a second writer, and meets signals and disk faults with one line
and nothing left behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import subprocess_env
from lstm_jax import store
from lstm_jax.files import LOCK_NAME, LeftoverWarning

MAIN = Path(__file__).resolve().parents[1] / "experiments" / "prepare_data.py"


def _corpus(root: Path, n: int = 40) -> Path:
  root.mkdir(parents=True)
  for i in range(n):
    (root / f"{i:03d}.txt").write_bytes(b"def f(x):\n  return x + %d\n" % i * (1 + i % 5))
  return root


def _run(*args, cwd=None, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, str(MAIN), "--quiet", *map(str, args)],
    capture_output=True,
    text=True,
    timeout=120,
    env=subprocess_env(),
    cwd=cwd,
    **kwargs,
  )


def _one_error_line(got, pattern: str) -> str:
  assert got.returncode == 2, got.stderr[-2000:]
  lines = got.stderr.strip().splitlines()
  assert len(lines) == 1, got.stderr[-2000:]
  assert pattern in lines[0], lines[0]
  return lines[0]


def _tree(root: Path) -> dict:
  """Every file under `root` with its bytes."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_replaces_only_a_store_never_a_users_directory_or_file(tmp_path):
  """--overwrite onto a runner's workdir, a file, or the input itself: refused in one line, and
  every file is where it was."""
  corpus = _corpus(tmp_path / "corpus")
  workdir = tmp_path / "workdir"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "results.jsonl").write_text('{"row": 1}\n')
  (workdir / "checkpoints" / "3").write_bytes(b"state")
  afile = tmp_path / "notes.txt"
  afile.write_text("mine")
  before = _tree(tmp_path)
  src = ["--source", "text_dir", "--path", corpus]
  _one_error_line(_run(*src, "--out", workdir, "--overwrite"), "never replaced, even with")
  _one_error_line(_run(*src, "--out", afile, "--overwrite"), "is a file, not a directory")
  for out in (corpus, corpus / "sub", tmp_path):  # is, inside, or contains the input
    _one_error_line(_run(*src, "--out", out, "--overwrite"), "lies inside the input --path")
  _one_error_line(_run(*src, "--out", ""), "the --out path is empty")
  assert _tree(tmp_path) == before
  assert sorted(os.listdir(tmp_path)) == ["corpus", "notes.txt", "workdir"]  # no .partial


def test_a_trailing_slash_writes_and_overwrites_the_same_store(tmp_path):
  corpus = _corpus(tmp_path / "corpus")
  out = f"{tmp_path / 'stores' / 'x'}/"
  first = _run("--source", "text_dir", "--path", corpus, "--out", out)
  assert first.returncode == 0, first.stderr
  assert f"wrote {tmp_path / 'stores' / 'x'}:" in first.stdout
  _one_error_line(_run("--source", "text_dir", "--path", corpus, "--out", out), "already exists")
  (corpus / "new.txt").write_bytes(b"x = 1\n" * 9)
  again = _run("--source", "text_dir", "--path", corpus, "--out", out, "--overwrite")
  assert again.returncode == 0, again.stderr
  assert os.listdir(tmp_path / "stores") == ["x"]  # nothing left beside it
  assert LOCK_NAME not in os.listdir(tmp_path / "stores" / "x")
  assert len(store.open_store(out)) == 41


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
  corpus = _corpus(tmp_path / "corpus")
  out = tmp_path / "s"
  holder = store.StoreWriter(out, store.StoreSchema(vocab_size=256))  # this process holds the lock
  got = _run("--source", "text_dir", "--path", corpus, "--out", out, "--overwrite")
  _one_error_line(got, f"is being written by pid {os.getpid()} on ")
  holder.add(np.arange(5))
  holder.close()  # the first writer's store is intact
  assert len(store.open_store(out)) == 1


def test_a_dead_writers_partial_is_cleared_and_said(tmp_path):
  """A writer killed mid-way (its lock released by the kernel) leaves OUT.partial; the next run
  clears it, says so in one warning line, and writes the store."""
  corpus = _corpus(tmp_path / "corpus")
  partial = tmp_path / "s.partial"
  partial.mkdir()
  (partial / "values.bin").write_bytes(b"half")
  (partial / LOCK_NAME).write_text("pid 1 on elsewhere")
  got = _run("--source", "text_dir", "--path", corpus, "--out", tmp_path / "s")
  assert got.returncode == 0, got.stderr
  assert "cleared" in got.stderr and "left by a writer that did not finish" in got.stderr
  assert sorted(os.listdir(tmp_path)) == ["corpus", "s"]
  # a partial holding something else is the user's: refused, kept
  partial.mkdir()
  (partial / "thesis.tex").write_text("mine")
  got = _run("--source", "text_dir", "--path", corpus, "--out", tmp_path / "s", "--overwrite")
  _one_error_line(got, "holds files this program did not write")
  assert (partial / "thesis.tex").read_text() == "mine"


def _two_stores(tmp_path) -> tuple[Path, dict, dict]:
  out = tmp_path / "s"
  old = store.write_store(out, [(np.arange(6), None, "a")], store.StoreSchema(vocab_size=256))
  return out, old, _tree(out)


def test_an_interrupted_swap_leaves_a_complete_store_that_is_named_and_put_back(tmp_path):
  """A kill between the swap's two renames leaves the old store at OUT.replaced and the new at
  OUT.partial: opening OUT names the complete one; the next writer puts the old one back (and
  says so) before writing."""
  out, old, old_files = _two_stores(tmp_path)
  os.rename(out, f"{out}.replaced")
  with pytest.raises(store.StoreError, match=r"left a complete one at .*s.replaced: rename it"):
    store.open_store(out)
  with pytest.warns(LeftoverWarning, match="put back the previous one"):
    writer = store.StoreWriter(out, store.StoreSchema(vocab_size=256), overwrite=True)
  assert _tree(out) == old_files  # back in place while the new one is written
  writer.add(np.arange(9))
  writer.close()
  assert len(store.open_store(out)) == 1 and store.read_meta(out)["num_values"] == 9
  assert sorted(os.listdir(tmp_path)) == ["s"]


@pytest.mark.parametrize("fail_at", [1, 2])
def test_an_exception_mid_swap_keeps_the_old_store_or_the_new_one_whole(
  tmp_path, monkeypatch, fail_at
):
  """A signal or fault at either rename of the swap: the old store is put back (first rename
  done, second not) or the new one stands (both done); never neither."""
  out, _, old_files = _two_stores(tmp_path)
  writer = store.StoreWriter(out, store.StoreSchema(vocab_size=256), overwrite=True)
  writer.add(np.arange(9))
  real, calls = os.rename, []

  def rename(a, b):
    real(a, b)
    if str(a) not in (writer.path, writer.partial):  # another rename in this process: as ever
      return
    calls.append(a)
    if len(calls) == fail_at:
      raise KeyboardInterrupt

  monkeypatch.setattr(os, "rename", rename)
  with pytest.raises(KeyboardInterrupt):
    writer.close()
  monkeypatch.setattr(os, "rename", real)
  writer.abort()  # what the writer's `with` block does on the way out
  if fail_at == 1:
    assert _tree(out) == old_files
  else:
    assert store.read_meta(out)["num_values"] == 9
  assert sorted(os.listdir(tmp_path)) == ["s"]


def _mount(*args) -> str | None:
  """Runs mount/umount; the reason it failed, or None."""
  try:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
  except OSError as e:
    return str(e)
  return None if done.returncode == 0 else done.stderr.strip()[:200]


def test_a_full_disk_and_a_read_only_directory_are_one_line_and_leave_nothing(tmp_path):
  """ENOSPC mid-write (a 1 MiB tmpfs) and EROFS (a read-only bind mount): exit 2, one line naming
  the cause, the old store intact, no partial left."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  (corpus / "big.txt").write_bytes(np.random.default_rng(0).bytes(3 << 20))
  small, ro = tmp_path / "small", tmp_path / "ro"
  small.mkdir()
  ro.mkdir()
  if why := _mount("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)):
    pytest.skip(f"needs root to mount a small tmpfs: {why}")
  try:
    got = _run("--source", "text_dir", "--path", corpus, "--out", small / "s")
    line = _one_error_line(got, "could not prepare the store")
    assert "(ENOSPC)" in line, line
    assert os.listdir(small) == []
  finally:
    _mount("umount", str(small))
  _, _, old_files = _two_stores(ro)
  if why := _mount("mount", "--bind", str(ro), str(ro)):
    pytest.skip(f"needs root for a read-only bind mount: {why}")
  try:
    _mount("mount", "-o", "remount,ro,bind", str(ro))
    got = _run("--source", "text_dir", "--path", corpus, "--out", ro / "s", "--overwrite")
    assert "(EROFS)" in _one_error_line(got, "could not prepare the store")
  finally:
    _mount("umount", str(ro))
  assert _tree(ro / "s") == old_files and os.listdir(ro) == ["s"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_write_removes_the_partial_and_says_so_in_one_line(tmp_path, signum):
  lines = tmp_path / "lines.txt"
  with open(lines, "wb") as f:
    for i in range(40):
      f.write(b"".join(b"line %d of %d\n" % (j, i) for j in range(25_000)))
  out, _, old_files = _two_stores(tmp_path)
  proc = subprocess.Popen(
    [
      sys.executable,
      str(MAIN),
      "--source",
      "text_lines",
      "--path",
      lines,
      "--out",
      out,
      "--overwrite",
    ],
    stderr=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
    env=subprocess_env(),
  )
  deadline = time.monotonic() + 60
  while not os.path.exists(f"{out}.partial/values.bin") and time.monotonic() < deadline:
    time.sleep(0.01)
  time.sleep(0.2)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signum, err[-2000:]
  said = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
  assert said[-1] == (
    f"prepare_data: stopped by {signal.Signals(signum).name}; {out} is as it was (the "
    f"unfinished store was removed): run the same command again."
  ), err[-2000:]
  assert "Traceback" not in err
  assert _tree(out) == old_files and sorted(os.listdir(tmp_path)) == ["lines.txt", "s"]


def test_a_store_path_that_is_a_file_is_not_an_invitation_to_overwrite_it(tmp_path):
  f = tmp_path / "data.npz"
  f.write_bytes(b"PK")
  with pytest.raises(store.StoreError, match="is a file, not a store") as e:
    store.open_store(f)
  assert "--out" not in str(e.value)
  assert json.loads(json.dumps(str(e.value)))  # one plain line
