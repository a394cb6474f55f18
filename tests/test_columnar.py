"""Parquet and Arrow sources (lstm_jax.columnar, prepare_data --source parquet|arrow): each row's
sequence and label reach the store exactly, across record batches, shards and both Arrow IPC
formats; every bad file or row is one DataError naming it. pyarrow is the optional extra
`lstm_jax[parquet]`: these tests skip without it, except the one that says how to install it."""

import builtins
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import subprocess_env
from lstm_jax import columnar, prepare, sources, store
from lstm_jax.errors import DataError


@pytest.fixture
def pa():
  return pytest.importorskip("pyarrow", reason="the optional extra lstm_jax[parquet]")


def _token_table(pa, n=50, seed=0, labels="int"):
  rng = np.random.default_rng(seed)
  seqs = [rng.integers(0, 300, size=rng.integers(1, 40)).tolist() for _ in range(n)]
  cols = {"tokens": pa.array(seqs, pa.list_(pa.int32()))}
  if labels == "int":
    cols["label"] = pa.array(rng.integers(0, 4, size=n).tolist(), pa.int64())
  elif labels == "name":
    cols["label"] = pa.array([["cat", "dog", "emu"][i % 3] for i in range(n)])
  elif labels == "floats":
    cols["label"] = pa.array(rng.normal(size=(n, 2)).tolist(), pa.list_(pa.float32(), 2))
  return pa.table(cols), seqs


def _store_sequences(path):
  st = store.open_store(path)
  return [np.asarray(st.sequence(i)[0]).reshape(-1).tolist() for i in range(len(st))]


def test_parquet_token_ids_and_classes_round_trip_across_record_batches(tmp_path, pa, monkeypatch):
  import pyarrow.parquet as pq

  table, seqs = _token_table(pa, n=50)
  pq.write_table(table, tmp_path / "train.parquet", row_group_size=7)
  monkeypatch.setattr(columnar, "BATCH_ROWS", 5)  # batches cut across row groups and rows
  meta = prepare.prepare_store("parquet", str(tmp_path / "train.parquet"), str(tmp_path / "s"))
  assert meta["num_records"] == 50 and meta["targets"] == "sequence"
  assert meta["vocab_size"] == max(max(s) for s in seqs) + 1 and meta["num_classes"] == 4
  assert _store_sequences(tmp_path / "s") == seqs
  st = store.open_store(tmp_path / "s")
  want = table.column("label").to_pylist()
  assert st.sequence_targets(np.arange(50)).tolist() == want


def test_text_and_class_names_from_arrow_shards_in_both_ipc_formats(tmp_path, pa):
  texts = ["héllo wörld", "abc", "a longer line of text", "x", "zz top"]
  names = ["ham", "spam", "ham", "eggs", "spam"]
  shards = tmp_path / "shards"
  shards.mkdir()
  for k, (lo, hi) in enumerate(((0, 2), (2, 5))):
    t = pa.table({"text": texts[lo:hi], "label": names[lo:hi], "other": list(range(lo, hi))})
    opener = pa.ipc.new_file if k == 0 else pa.ipc.new_stream  # file format, stream format
    with pa.OSFile(str(shards / f"part-{k}.arrow"), "wb") as sink, opener(sink, t.schema) as w:
      w.write_table(t)
  meta = prepare.prepare_store("arrow", str(shards), str(tmp_path / "s"))
  assert meta["vocab_size"] == 256 and meta["source"]["classes"] == ["eggs", "ham", "spam"]
  assert _store_sequences(tmp_path / "s") == [list(t.encode("utf-8")) for t in texts]
  st = store.open_store(tmp_path / "s")
  assert st.sequence_targets(np.arange(5)).tolist() == [1, 2, 1, 0, 2]  # by sorted name
  ds, identity = sources.load_store(str(tmp_path / "s"))
  assert identity["classes"] == ["eggs", "ham", "spam"]  # the report's class names


def test_regression_targets_and_a_named_column(tmp_path, pa):
  import pyarrow.parquet as pq

  table, seqs = _token_table(pa, n=12, labels="floats")
  table = table.rename_columns(["ids", "y"])
  pq.write_table(table, tmp_path / "r.parquet")
  meta = prepare.prepare_store(
    "parquet",
    str(tmp_path / "r.parquet"),
    str(tmp_path / "s"),
    reading=prepare.Reading(column="ids", label_column="y"),
  )
  assert meta["target_dim"] == 2
  st = store.open_store(tmp_path / "s")
  got = np.stack([st.sequence_targets(np.array([i]))[0] for i in range(12)])
  np.testing.assert_array_equal(got, np.asarray(table.column("y").to_pylist(), np.float32))
  assert _store_sequences(tmp_path / "s") == seqs


def test_prepare_data_reads_parquet_from_the_command_line(tmp_path, pa):
  import pyarrow.parquet as pq

  table, _ = _token_table(pa, n=20, labels="name")
  pq.write_table(table, tmp_path / "d.parquet")
  main = [sys.executable, "experiments/prepare_data.py", "--source=parquet"]
  got = subprocess.run(
    main + [f"--path={tmp_path / 'd.parquet'}", f"--out={tmp_path / 's'}"],
    capture_output=True,
    text=True,
    env=subprocess_env(),
    timeout=120,
  )
  assert got.returncode == 0, got.stderr
  assert got.stdout.startswith(f"wrote {tmp_path / 's'}: 20 records"), got.stdout
  bad = subprocess.run(
    main + [f"--path={tmp_path / 'd.parquet'}", f"--out={tmp_path / 't'}", "--column=nope"],
    capture_output=True,
    text=True,
    env=subprocess_env(),
    timeout=120,
  )
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
  assert "has no column 'nope' (it has ['tokens', 'label']); set --column." in bad.stderr
  assert not (tmp_path / "t").exists()


def _bad(tmp_path, pa, table, name="bad.parquet", **kwargs):
  import pyarrow.parquet as pq

  pq.write_table(table, tmp_path / name)
  return lambda: prepare.prepare_store(
    "parquet", str(tmp_path / name), str(tmp_path / "out"), **kwargs
  )


@pytest.mark.parametrize(
  "case,pattern",
  [
    ("no_sequence_column", r"has no column 'tokens' or 'text' \(it has \['ids'\]\); name the"),
    ("float_tokens", r"column 'tokens' is list<\w+: double>; a sequence column is a list of"),
    ("null_row", r"bad.parquet: row 1 has no 'tokens' \(null\)"),
    ("null_id", r"a token id in 'tokens' near row 0 is null"),
    ("negative_id", r"bad.parquet: row 2: token id -3 is outside \[0, 4,294,967,295\]"),
    ("mixed_labels", r"labels mix kinds"),
    ("bad_label_type", r"label column 'label' is bool; a label is an integer class"),
    ("missing_label", r"bad.parquet: row 1 has no label while other rows do"),
    ("not_parquet", r"not_parquet.parquet cannot be read as Parquet"),
  ],
)
def test_bad_files_and_rows_are_one_error_naming_them(tmp_path, pa, case, pattern):
  ints = pa.list_(pa.int64())
  tables = {
    "no_sequence_column": pa.table({"ids": pa.array([[1, 2]], ints)}),
    "float_tokens": pa.table({"tokens": pa.array([[1.0, 2.5]])}),
    "null_row": pa.table({"tokens": pa.array([[1], None], ints)}),
    "null_id": pa.table({"tokens": pa.array([[1, None]], ints)}),
    "negative_id": pa.table({"tokens": pa.array([[1], [2], [4, -3]], ints)}),
    "bad_label_type": pa.table({"tokens": pa.array([[1]], ints), "label": [True]}),
    "missing_label": pa.table({"tokens": pa.array([[1], [2]], ints), "label": [1, None]}),
  }
  if case == "mixed_labels":  # two shards: classes in one, names in the other
    import pyarrow.parquet as pq

    d = tmp_path / "mixed"
    d.mkdir()
    pq.write_table(pa.table({"tokens": pa.array([[1]], ints), "label": [0]}), d / "a.parquet")
    pq.write_table(pa.table({"tokens": pa.array([[2]], ints), "label": ["x"]}), d / "b.parquet")
    call = lambda: prepare.prepare_store("parquet", str(d), str(tmp_path / "out"))  # noqa: E731
  elif case == "not_parquet":
    (tmp_path / "not_parquet.parquet").write_bytes(b"PAR1 but not really")
    call = lambda: prepare.prepare_store(  # noqa: E731
      "parquet", str(tmp_path / "not_parquet.parquet"), str(tmp_path / "out")
    )
  else:
    call = _bad(tmp_path, pa, tables[case])
  with pytest.raises(DataError, match=pattern):
    call()
  assert not (tmp_path / "out").exists()  # nothing half-written left behind


def test_without_pyarrow_the_source_says_how_to_install_it(tmp_path, monkeypatch):
  real_import = builtins.__import__

  def no_pyarrow(name, *args, **kwargs):
    if name.startswith("pyarrow"):
      raise ImportError(name)
    return real_import(name, *args, **kwargs)

  (tmp_path / "x.parquet").write_bytes(b"")
  monkeypatch.setattr(builtins, "__import__", no_pyarrow)
  with pytest.raises(DataError, match=r"pip install 'lstm_jax\[parquet\]' \(pyarrow\)"):
    prepare.prepare_store("parquet", str(tmp_path / "x.parquet"), str(tmp_path / "s"))


def test_class_names_are_numbered_in_sorted_order(tmp_path, pa):
  import pyarrow.parquet as pq

  names = [chr(ord("z") - i) for i in range(26)]  # z, y, ..., a: sorted is the reverse
  pq.write_table(pa.table({"text": names, "label": names}), tmp_path / "n.parquet")
  meta = prepare.prepare_store("parquet", str(tmp_path / "n.parquet"), str(tmp_path / "s"))
  assert meta["source"]["classes"] == sorted(names)
  st = store.open_store(tmp_path / "s")
  assert st.sequence_targets(np.arange(26)).tolist() == list(range(25, -1, -1))


def test_rows_of_a_sliced_record_batch_keep_their_own_ids(tmp_path, pa, monkeypatch):
  """A batch that is a slice of a larger one (its list offsets do not start at 0) yields the
  slice's rows, not the start of the underlying buffer."""
  import pyarrow.parquet as pq

  table, seqs = _token_table(pa, n=10)
  pq.write_table(table, tmp_path / "t.parquet")
  real = columnar._batches

  def sliced(kind, path, columns):
    schema, batches = real(kind, path, columns)
    return schema, (b.slice(3, 4) for b in batches)

  monkeypatch.setattr(columnar, "_batches", sliced)
  got = [v.tolist() for v, _, _ in columnar.rows("parquet", tmp_path / "t.parquet")]
  assert got == seqs[3:7]


def test_reading_a_parquet_file_holds_one_batch_not_the_file(tmp_path, pa, monkeypatch):
  """pyarrow's own allocations while every row is read stay a small fraction of the file
  (counted by pyarrow's memory pool, not timed): with ParquetFile's default pre_buffer=True,
  iter_batches kept every row group it had read, and memory grew to the file's size."""
  import pyarrow.parquet as pq

  rng = np.random.default_rng(0)
  n, width = 40_000, 100
  tokens = pa.ListArray.from_arrays(
    pa.array(np.arange(0, n * width + 1, width, dtype=np.int32)),
    pa.array(rng.integers(0, 1000, size=n * width, dtype=np.int32)),
  )
  pq.write_table(
    pa.table({"tokens": tokens}),
    tmp_path / "big.parquet",
    row_group_size=1000,
    compression="none",
    use_dictionary=False,
  )
  size = (tmp_path / "big.parquet").stat().st_size
  peak = 0
  for i, _ in enumerate(columnar.rows("parquet", tmp_path / "big.parquet")):
    if i % 1000 == 0:
      peak = max(peak, pa.total_allocated_bytes())
  assert i == n - 1
  assert peak < size / 10, (peak, size)


def _big_parquet(pa, path, rows: int) -> None:
  import pyarrow.parquet as pq

  rng = np.random.default_rng(0)
  width = 100
  tokens = pa.ListArray.from_arrays(
    pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32)),
    pa.array(rng.integers(0, 1000, size=rows * width, dtype=np.int32)),
  )
  pq.write_table(pa.table({"tokens": tokens}), path, row_group_size=2000, use_dictionary=False)


def test_a_full_disk_mid_parquet_is_one_line_and_leaves_nothing(tmp_path, pa):
  from test_prepare_data import _mount, _one_error_line, _run

  _big_parquet(pa, tmp_path / "d.parquet", 20_000)  # ~8 MB of ids: more than the 1 MiB disk
  small = tmp_path / "small"
  small.mkdir()
  if why := _mount("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)):
    pytest.skip(f"needs root to mount a small tmpfs: {why}")
  try:
    got = _run("--source", "parquet", "--path", tmp_path / "d.parquet", "--out", small / "s")
    assert "(ENOSPC)" in _one_error_line(got, "could not prepare the store")
    assert os.listdir(small) == []
  finally:
    _mount("umount", str(small))


def test_a_signal_mid_parquet_removes_the_partial_and_says_so(tmp_path, pa):
  from test_prepare_data import MAIN, _tree, _two_stores

  _big_parquet(pa, tmp_path / "d.parquet", 300_000)  # a few seconds of writing
  out, _, old_files = _two_stores(tmp_path)
  proc = subprocess.Popen(
    [sys.executable, str(MAIN), "--source=parquet", f"--path={tmp_path / 'd.parquet'}"]
    + [f"--out={out}", "--overwrite"],
    stderr=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
    env=subprocess_env(),
  )
  deadline = time.monotonic() + 60
  while not os.path.exists(f"{out}.partial/values.bin") and time.monotonic() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  said = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
  assert said[-1].startswith("prepare_data: stopped by SIGTERM; "), err[-2000:]
  assert _tree(out) == old_files and sorted(os.listdir(tmp_path)) == ["d.parquet", "s"]
