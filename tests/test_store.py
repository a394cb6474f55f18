"""The on-disk store: every kind of data round-trips exactly; every strategy assembles the same
batches from a store as from the data in memory, and trains to the same parameters; splits are
index lists over one memory map; bad or damaged stores give one clear error."""

import json
import os
import time
import traceback

import jax
import numpy as np
import optax
import pytest

from helpers import ragged_features
from lstm_jax import batching, data, evaluation, loop, store, train
from lstm_jax.errors import DataError
from lstm_jax.model import SequenceModel

RNG = np.random.default_rng(3)
LENGTHS = RNG.integers(2, 60, size=90)


def byte_lm() -> data.RaggedDataset:
  docs = [RNG.integers(0, 256, size=n + 1) for n in LENGTHS]
  return data.next_token_dataset(docs, vocab_size=256, name="bytes")


def kinds() -> dict:
  """Every kind of data a store holds."""
  total = int(LENGTHS.sum())
  tokens = RNG.integers(0, 300, size=total)
  return {
    "next_token_bytes": byte_lm(),
    "tokens_sequence_classes": data.RaggedDataset(
      tokens,
      LENGTHS,
      RNG.integers(0, 7, size=len(LENGTHS)),
      target_level="sequence",
      num_classes=7,
      vocab_size=300,
      name="tok",
    ),
    "tokens_step_classes": data.RaggedDataset(
      tokens,
      LENGTHS,
      RNG.integers(0, 4, size=total),
      target_level="step",
      num_classes=4,
      vocab_size=300,
      name="tokstep",
    ),
    "features_step_regression": ragged_features(LENGTHS, num_features=3, seed=1),
    "features_sequence_regression": ragged_features(LENGTHS, seed=2, target_level="sequence"),
    "features_sequence_classes": data.RaggedDataset(
      RNG.normal(size=(total, 5)).astype(np.float32),
      LENGTHS,
      RNG.integers(0, 3, size=len(LENGTHS)),
      target_level="sequence",
      num_classes=3,
      name="feat",
    ),
  }


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
  root = tmp_path_factory.mktemp("stores")
  out = {}
  for name, ds in kinds().items():
    store.from_dataset(ds, root / name)
    out[name] = (ds, store.open_store(root / name))
  return out


@pytest.mark.parametrize("kind", list(kinds()))
def test_a_store_round_trips_every_kind_of_data_exactly(stores, kind):
  ds, st = stores[kind]
  assert isinstance(st, data.RaggedDataset) and isinstance(st.values, np.memmap)
  assert np.array_equal(st.lengths, ds.lengths) and st.num_steps == ds.num_steps
  assert (st.target_level, st.num_classes, st.vocab_size) == (
    ds.target_level,
    ds.num_classes,
    ds.vocab_size,
  )
  assert (st.num_features, st.target_dim) == (ds.num_features, ds.target_dim)
  for i in range(len(ds)):
    (x, y), (sx, sy) = ds.sequence(i), st.sequence(i)
    assert sx.dtype == x.dtype and np.array_equal(sx, x)
    assert np.array_equal(np.asarray(sy), np.asarray(y))


def test_values_take_the_smallest_dtype_and_next_token_targets_are_not_stored(stores):
  _, st = stores["next_token_bytes"]
  assert st.values.dtype == np.uint8  # one byte a byte of text
  assert not os.path.getsize(os.path.join(st.store_path, "targets.bin"))
  assert os.path.getsize(os.path.join(st.store_path, "values.bin")) == st.num_steps + len(st)
  assert stores["tokens_sequence_classes"][1].values.dtype == np.uint16  # 300 symbols
  assert store.token_dtype(70_000) == np.uint32


STRATEGIES = {
  "pad": lambda d: batching.Pad(d, batch_size=8, seed=1),
  "bucket": lambda d: batching.Bucket(d, batch_size=8, num_buckets=3, seed=1),
  "bucket_rows": lambda d: batching.Bucket(d, tokens_per_step=300, num_buckets=3, pack_rows=True),
  "pack": lambda d: batching.Pack(d, batch_size=4, seed=2),
  "tbptt": lambda d: batching.TBPTT(d, num_streams=5, chunk_length=9, seed=1),
  "vbptt": lambda d: batching.VariableTBPTT(d, num_streams=4, base_length=12, seed=1),
}


@pytest.mark.parametrize("kind", ["next_token_bytes", "features_sequence_classes"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_assembles_the_same_batches_from_a_store(stores, kind, name):
  ds, st = stores[kind]
  a, b = STRATEGIES[name](ds), STRATEGIES[name](st)
  for epoch in (0, 1):
    for x, y in zip(a.batches(epoch), b.batches(epoch), strict=True):
      for field in ("inputs", "targets", "weights", "mask", "resets"):
        u, v = getattr(x, field), getattr(y, field)
        assert u.dtype == v.dtype and np.array_equal(u, v), field


@pytest.mark.parametrize("name", ["tbptt"])  # bucket: the runner test below
def test_training_on_a_store_gives_the_same_parameters(stores, name):
  ds, st = stores["next_token_bytes"]
  results = []
  for d in (ds, st):
    state = train.create_train_state(
      SequenceModel(8, num_outputs=256, vocab_size=256, embed_dim=4), optax.adam(1e-2), d
    )
    results.append(loop.fit(state, STRATEGIES[name](d), epochs=1))
  a, b = results
  assert jax.tree.all(jax.tree.map(np.array_equal, a.state.params, b.state.params))
  evals = [
    evaluation.evaluate(r.state, batching.Bucket(d, batch_size=8, num_buckets=2))
    for r, d in zip(results, (ds, st))
  ]
  assert evals[0] == evals[1]


def test_a_split_is_an_index_list_over_the_same_memory_map(stores):
  ds, st = stores["next_token_bytes"]
  tr, ev = st.split(0.2, seed=4)
  want_tr, want_ev = ds.split(0.2, seed=4)
  assert tr.values is st.values and ev.values is st.values  # nothing copied
  for got, want in ((tr, want_tr), (ev, want_ev)):
    assert np.array_equal(got.lengths, want.lengths)
    for i in (0, len(want) - 1):
      assert np.array_equal(got.sequence(i)[1], want.sequence(i)[1])
  assert len({st.fingerprint(), tr.fingerprint(), ev.fingerprint()}) == 3
  assert tr.fingerprint() == st.split(0.2, seed=4)[0].fingerprint()  # same selection, same id


def test_the_fingerprint_is_written_once_and_read_back(stores, tmp_path):
  ds, st = stores["features_step_regression"]
  assert st.fingerprint() == store.open_store(st.store_path).fingerprint()
  changed = ragged_features(LENGTHS, num_features=3, seed=9)
  store.from_dataset(changed, tmp_path / "other")
  assert store.open_store(tmp_path / "other").fingerprint() != st.fingerprint()


def test_a_grain_source_reads_records(stores):
  ds, st = stores["tokens_sequence_classes"]
  src = st.grain_source()
  assert len(src) == len(ds)
  rec = src[3]
  assert np.array_equal(rec["inputs"], ds.sequence(3)[0]) and rec["targets"] == ds.targets[3]
  with pytest.raises(IndexError):
    src[len(ds)]
  grain = pytest.importorskip("grain", reason="grain (optional: pip install lstm_jax[grain])")
  loaded = list(grain.MapDataset.source(src)[:4])
  assert [int(r["targets"]) for r in loaded] == [int(t) for t in ds.targets[:4]]


# --- bad input and damage --------------------------------------------------------------------
def _copy(stores, tmp_path, kind="next_token_bytes"):
  import shutil

  dst = tmp_path / "copy"
  shutil.copytree(stores[kind][1].store_path, dst)
  return dst


def test_a_truncated_values_file_is_one_clear_error(stores, tmp_path):
  path = _copy(stores, tmp_path)
  with open(path / "values.bin", "r+b") as f:
    f.truncate(100)
  with pytest.raises(store.StoreError, match=r"values.bin holds 100 bytes .* truncated"):
    store.open_store(path)


def test_an_unfinished_or_foreign_store_is_refused(stores, tmp_path):
  path = _copy(stores, tmp_path)
  with pytest.raises(store.StoreError, match="no store at"):
    store.open_store(tmp_path / "nowhere")
  (path / "meta.json").write_text("{not json")
  with pytest.raises(store.StoreError, match="meta.json cannot be read"):
    store.open_store(path)
  (path / "meta.json").write_text(json.dumps({"format": store.FORMAT, "version": 99}))
  with pytest.raises(store.StoreError, match="format version 99"):
    store.open_store(path)
  os.remove(path / "meta.json")
  with pytest.raises(store.StoreError, match="no meta.json"):
    store.open_store(path)


def test_damaged_offsets_are_refused(stores, tmp_path):
  path = _copy(stores, tmp_path)
  offsets = np.fromfile(path / "offsets.bin", np.int64)
  offsets[5] = offsets[4]  # a record of length 0
  offsets.tofile(path / "offsets.bin")
  with pytest.raises(store.StoreError, match="offsets.bin does not describe"):
    store.open_store(path)


def test_a_bad_record_names_itself_and_leaves_no_store(tmp_path):
  records = [(np.array([1, 2, 3]), None, "a.txt"), (np.array([4, 300]), None, "b.txt")]
  with pytest.raises(DataError, match=r"b.txt: token 300 is out of range \[0, 256\)"):
    store.write_store(tmp_path / "s", records, store.StoreSchema(vocab_size=256))
  assert not os.path.exists(tmp_path / "s") and not os.path.exists(tmp_path / "s.partial")
  with pytest.raises(DataError, match="c.txt has 1 token"):
    store.write_store(
      tmp_path / "s", [(np.array([7]), None, "c.txt")], store.StoreSchema(vocab_size=256)
    )
  store.write_store(tmp_path / "s", records[:1], store.StoreSchema(vocab_size=256))
  with pytest.raises(store.StoreError, match="already exists"):
    store.write_store(tmp_path / "s", records[:1], store.StoreSchema(vocab_size=256))


def _corpus(root, n=260):
  """Text files of varied length, with duplicates and files too short or too long."""
  rng = np.random.default_rng(5)
  root.mkdir()
  words = [b"def ", b"return ", b"x", b" + ", b"(", b")", b":\n", b"    ", b"if ", b"y", b"1"]
  for i in range(n):
    k = int(rng.integers(1, 60)) if i % 17 else 200  # a few too long for max_length=160
    (root / f"{i:04d}.txt").write_bytes(b"".join(words[j] for j in rng.integers(0, 11, size=k)))
  (root / "dup.txt").write_bytes((root / "0001.txt").read_bytes())
  return root


def test_prepare_store_keeps_the_in_memory_loaders_sequences(tmp_path):
  from lstm_jax import prepare, sources

  corpus = _corpus(tmp_path / "corpus")
  ds, _ = sources.load_text(str(corpus), False, 16, 160)
  meta = prepare.prepare_store(
    "text_dir",
    str(corpus),
    str(tmp_path / "s"),
    reading=prepare.Reading(min_length=16, max_length=160),
  )
  st = store.open_store(tmp_path / "s")
  assert np.array_equal(st.lengths, ds.lengths)
  assert all(np.array_equal(st.sequence(i)[1], ds.sequence(i)[1]) for i in range(len(ds)))
  src = meta["source"]
  assert src["duplicates_dropped"] == 1 and src["dropped_by_length"] > 0
  assert (
    src["sequences_found"] == 261 == len(ds) + src["duplicates_dropped"] + src["dropped_by_length"]
  )
  lines = tmp_path / "lines.txt"
  lines.write_bytes(b"first line\r\nsecond\rthird\n\nfirst line\nlast")
  ds, _ = sources.load_text(str(lines), True, 2, 0)
  prepare.prepare_store("text_lines", str(lines), str(tmp_path / "l"))
  st = store.open_store(tmp_path / "l")
  assert [bytes(st.sequence(i)[0].astype(np.uint8)) for i in range(len(st))] == [
    bytes(ds.sequence(i)[0].astype(np.uint8)) for i in range(len(ds))
  ]


def test_the_runner_takes_a_store_as_it_takes_the_files(tmp_path):
  """The same comparison from a directory of text files and from the store written from it:
  the same rows, steps and eval losses to the last bit."""
  from configs import compare
  from lstm_jax import prepare
  from lstm_jax.runner import experiment

  corpus = _corpus(tmp_path / "corpus", n=400)
  prepare.prepare_store(
    "text_dir",
    str(corpus),
    str(tmp_path / "s"),
    reading=prepare.Reading(min_length=16, max_length=160),
  )
  rows = {}
  for source, path in (("text_dir", corpus), ("store", tmp_path / "s")):
    cfg = compare.get_config("smoke")
    cfg.plots = False  # the PNGs: the shared smoke run's (test_smoke_writes_every_file_and_key)
    cfg.data.update(source=source, path=str(path), min_length=16, max_length=160, max_sequences=0)
    cfg.update(strategies=("bucket",), predict_costs=False, background_compiles=0)
    cfg.train.tokens_per_step = 1024
    cfg.checkpoint.enabled = False
    rows[source] = experiment.train_and_evaluate(cfg, str(tmp_path / source), quiet=True)
  for a, b in zip(rows["text_dir"], rows["store"], strict=True):
    assert (a["strategy"], a["steps"], a["eval_loss"]) == (
      b["strategy"],
      b["steps"],
      b["eval_loss"],
    )


def test_byte_sources_subsample_before_converting_to_the_same_sequences(tmp_path):
  """data.max_sequences is applied to the kept byte strings, before conversion, and picks
  exactly the sequences that subsetting the converted dataset picked."""
  from lstm_jax import sources

  corpus = _corpus(tmp_path / "corpus")
  whole, _ = sources.load_text(str(corpus), False, 16, 160)
  some, identity = sources.load_text(str(corpus), False, 16, 160, subsample=(50, 3))
  want = whole.subset(sources.subsample_indices(len(whole), 50, 3))
  assert len(some) == 50 and identity["subsampled_to"] == 50
  assert some.fingerprint() == want.fingerprint()


def test_records_added_many_at_a_time_make_the_same_store(tmp_path):
  docs = [RNG.integers(0, 1000, size=n) for n in (5, 2, 9, 3)]
  one = store.write_store(
    tmp_path / "one", [(d, None, None) for d in docs], store.StoreSchema(vocab_size=1000)
  )
  with store.StoreWriter(tmp_path / "many", store.StoreSchema(vocab_size=1000)) as w:
    w.add_many(np.concatenate(docs[:3]), [5, 2, 9])
    w.add_many(docs[3], [3])
  assert store.read_meta(tmp_path / "many")["fingerprint"] == one["fingerprint"]
  with pytest.raises(DataError, match=r"record 2: token 1000 is out of range"):
    with store.StoreWriter(tmp_path / "bad", store.StoreSchema(vocab_size=1000)) as w:
      w.add_many(np.array([1, 2, 3, 4, 5, 1000]), [2, 2, 2])
  assert not os.path.exists(tmp_path / "bad.partial")


def test_prepare_store_reads_text_records_from_an_array_record_file(tmp_path):
  pytest.importorskip("grain", reason="grain (optional: pip install lstm_jax[grain])")
  from array_record.python import array_record_module

  from lstm_jax import prepare

  texts = [b"def f(x):\n  return x\n", b"class A:\n  pass\n", b"def f(x):\n  return x\n", b"x"]
  writer = array_record_module.ArrayRecordWriter(str(tmp_path / "t.array_record"), "group_size:1")
  for t in texts:
    writer.write(t)
  writer.close()
  meta = prepare.prepare_store(
    "array_record", str(tmp_path / "t.array_record"), str(tmp_path / "s")
  )
  st = store.open_store(tmp_path / "s")
  got = [
    bytes(st.sequence(i)[0].astype(np.uint8)) + bytes([st.sequence(i)[1][-1]])
    for i in range(len(st))
  ]
  assert got == texts[:2]  # the duplicate and the one-byte record dropped
  assert meta["source"]["duplicates_dropped"] == 1 and meta["source"]["dropped_by_length"] == 1


def test_prepare_store_reads_json_lines_and_says_what_it_inferred(tmp_path):
  from lstm_jax import prepare

  lines = tmp_path / "tokens.jsonl"
  lines.write_text('[3, 1, 4, 1, 5]\n{"tokens": [9, 2, 6]}\n\n[5, 3]\n')
  meta = prepare.prepare_store("jsonl", str(lines), str(tmp_path / "lm"))
  assert meta["vocab_size"] == 10 and meta["source"]["inferred"] == {"vocab_size": 10}
  st = store.open_store(tmp_path / "lm")
  assert st.values.dtype == np.uint8 and np.array_equal(st.lengths, [4, 2, 1])
  assert np.array_equal(st.sequence(1)[1], [2, 6])  # next-token targets
  labelled = tmp_path / "labelled.jsonl"
  labelled.write_text('{"text": "ab", "label": 2}\n{"text": "xyz", "label": 0}\n')
  meta = prepare.prepare_store("jsonl", str(labelled), str(tmp_path / "cls"))
  assert meta["targets"] == "sequence" and meta["num_classes"] == 3
  st = store.open_store(tmp_path / "cls")
  assert st.vocab_size == 256 and list(st.sequence_targets(np.arange(2))) == [2, 0]
  bad = tmp_path / "bad.jsonl"
  bad.write_text('[1, 2]\n{"tokns": [1]}\n')
  with pytest.raises(DataError, match=r"bad.jsonl:2: a line is a list of token ids"):
    prepare.prepare_store("jsonl", str(bad), str(tmp_path / "bad"))


@pytest.mark.parametrize("level", ["sequence", "step"])
def test_a_stores_held_out_split_is_scored_class_by_class_as_in_memory(tmp_path, level):
  """Class scores stream batch by batch (evaluation.predict_batches), so a store's split is scored
  too: the same confusion matrix from an npz and from the store written from it."""
  from configs import compare
  from lstm_jax import prepare
  from lstm_jax.runner import experiment

  rng = np.random.default_rng(5)
  lengths = rng.integers(3, 30, size=80)
  total = int(lengths.sum())
  labels = rng.integers(0, 3, size=total if level == "step" else len(lengths))
  ds = data.RaggedDataset(
    rng.normal(size=(total, 4)).astype(np.float32),
    lengths,
    labels,
    target_level=level,
    num_classes=3,
    name="c",
  )
  ds.save(tmp_path / "c.npz")
  prepare.prepare_store("npz", str(tmp_path / "c.npz"), str(tmp_path / "s"))
  scores = {}
  for source, path in (("npz", tmp_path / "c.npz"), ("store", tmp_path / "s")):
    cfg = compare.get_config("smoke")
    cfg.plots = False
    cfg.data.update(source=source, path=str(path), eval_fraction=0.25, min_length=1, max_length=0)
    cfg.update(strategies=("pad",), predict_costs=False, background_compiles=0)
    cfg.train.tokens_per_step = 128
    cfg.checkpoint.enabled = False
    (row,) = experiment.train_and_evaluate(cfg, str(tmp_path / source), quiet=True)
    scores[source] = row["classes"]
  assert scores["store"] == scores["npz"] and scores["store"]["level"] == level
  held_out = 20 if level == "sequence" else None
  assert held_out is None or sum(scores["store"]["support"]) == held_out


# --- a store changed after it was written -----------------------------------------------------
def _edit_meta(path, **changes):
  meta = json.loads((path / "meta.json").read_text())
  meta.update(changes)
  (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
  "kind, changes, said",
  [
    ("next_token_bytes", dict(values_dtype="bool"), "does not go with vocab_size 256"),
    ("tokens_sequence_classes", dict(values_dtype="float16"), "does not go with vocab_size"),
    ("tokens_sequence_classes", dict(num_classes=9), "changed after the store was written"),
    ("features_step_regression", dict(values_dtype="uint8"), "features are float16 or float32"),
    ("tokens_step_classes", dict(targets_dtype="float32"), "do not go together"),
    ("tokens_sequence_classes", dict(max_target=7), "largest class written is 7"),
  ],
)
def test_an_edited_meta_json_is_refused_not_read_as_other_numbers(
  stores, tmp_path, kind, changes, said
):
  """meta.json edited to another dtype (bool over bytes, float16 over uint16 ids) or another
  class count used to open and train on garbage with an unchanged fingerprint."""
  path = _copy(stores, tmp_path, kind)
  _edit_meta(path, **changes)
  with pytest.raises(store.StoreError, match=said):
    store.open_store(path)


def _big_store(path, n=300) -> list:
  """A byte store of ~1.2 MB: 19 checksummed chunks, 8 of them checked at open."""
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 256, size=int(k)) for k in rng.integers(2000, 6000, size=n)]
  store.write_store(
    path, [(d, None, f"doc {i}") for i, d in enumerate(docs)], store.StoreSchema(vocab_size=256)
  )
  return docs


def _flip(path, name, at):
  with open(path / name, "r+b") as f:
    f.seek(at)
    b = f.read(1)
    f.seek(at)
    f.write(bytes([b[0] ^ 0xFF]))


def test_values_changed_in_place_are_refused_when_read_naming_the_file(tmp_path):
  """Values changed between a preemption and the resume used to train on a mix of old and new
  data. A chunk in the open-time sample is caught at open; any other the first time a batch
  reads it, before the data reaches a step; unchanged chunks read as before."""
  path = tmp_path / "s"
  docs = _big_store(path)
  ds = store.open_store(path)
  meta = store.read_meta(path)
  chunks = meta["checksums"]["chunks"]["values.bin"]
  assert chunks == -(-meta["num_values"] // store.CHUNK_BYTES) and chunks > 8
  last_doc_byte = meta["num_values"] - 10  # in the last chunk: sampled at open
  _flip(path, "values.bin", last_doc_byte)
  with pytest.raises(store.StoreError, match=r"values.bin changed after the store was written"):
    store.open_store(path)
  _flip(path, "values.bin", last_doc_byte)  # restored: opens again
  offsets = np.fromfile(path / "offsets.bin", np.int64)
  k = 3  # a chunk between the sampled ones
  byte = k * store.CHUNK_BYTES + 100
  rec = int(np.searchsorted(offsets, byte, side="right")) - 1
  ds = store.open_store(path)
  x, _ = ds.sequence(0)  # a record in an unchanged chunk reads as ever
  assert np.array_equal(x, docs[0][:-1])
  _flip(path, "values.bin", byte)
  fresh = store.open_store(path)  # a rerun's process: the sample does not see chunk 3
  with pytest.raises(store.StoreError, match=r"s/values.bin changed .* bytes 196,608 to 262,144"):
    fresh.sequence(rec)
  ok = np.flatnonzero(offsets[1:] < 2 * store.CHUNK_BYTES)[:5]
  for i in ok:  # other records still read
    assert np.array_equal(fresh.sequence(int(i))[0], docs[i][:-1])


def test_out_of_range_ids_in_an_old_store_name_the_record_not_a_nan(tmp_path):
  """A version 1 store (no checksums) whose values were changed: token 65535 with vocab 1000
  used to train to a NaN loss; now the batch that reads it is refused, naming the record."""
  path = tmp_path / "v1"
  docs = [np.arange(5) + i for i in range(6)]
  store.write_store(path, [(d, None, None) for d in docs], store.StoreSchema(vocab_size=1000))
  meta = json.loads((path / "meta.json").read_text())
  for key in ("checksums", "digests", "max_value", "max_target"):
    meta.pop(key)
  meta["version"] = 1
  (path / "meta.json").write_text(json.dumps(meta))
  os.remove(path / "checksums.bin")
  values = np.fromfile(path / "values.bin", np.uint16)
  values[4 * 5 + 2] = 65535  # record 4
  values.tofile(path / "values.bin")
  ds = store.open_store(path)
  assert np.array_equal(ds.sequence(3)[0], docs[3][:-1])
  with pytest.raises(
    store.StoreError, match=r"v1: record 4 holds token id 65535, outside \[0, 1000\)"
  ):
    next(batching.Pad(ds, batch_size=6).batches())


def test_a_token_store_of_any_vocabulary_gets_its_baselines_and_report(tmp_path):
  """A JSONL token-id store (vocabulary 1,000) used to train its row and then crash in the
  classification baselines (targets derived, not stored); and a target met at the first
  evaluation (every row's loss ending above where it began) divided by its 0 s. Both give a
  summary and a report now."""
  from configs import compare
  from lstm_jax import prepare
  from lstm_jax.runner import experiment

  rng = np.random.default_rng(1)
  lines = [
    json.dumps(rng.integers(0, 1000, size=int(n)).tolist()) for n in rng.integers(8, 60, 300)
  ]
  (tmp_path / "ids.jsonl").write_text("\n".join(lines) + "\n")
  prepare.prepare_store(
    "jsonl",
    str(tmp_path / "ids.jsonl"),
    str(tmp_path / "s"),
    reading=prepare.Reading(vocab_size=1000),
  )
  cfg = compare.get_config("smoke")
  cfg.plots = False
  cfg.data.update(source="store", path=str(tmp_path / "s"), min_length=0, max_length=0)
  cfg.update(strategies=("pad", "tbptt"), predict_costs=False, background_compiles=0)
  cfg.train.update(tokens_per_step=512, real_tokens=4096)
  cfg.target_eval_loss = 100.0  # met before training: the untrained loss is ln(1000) = 6.9
  cfg.checkpoint.enabled = False
  summary = experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  assert [r["strategy"] for r in summary] == ["pad", "tbptt"]
  meta = json.loads((tmp_path / "w" / "meta.json").read_text())
  base = meta["class_baselines"]
  assert base["classes"] == 1000 and base["held_out_targets"] > 0
  text = (tmp_path / "w" / "report.md").read_text()
  assert "was met at the first evaluation, before training" in text
  assert all(r["time_to_target_seconds"] == 0 for r in summary)


def test_a_rerun_on_a_store_changed_since_the_run_started_is_refused_naming_the_file(tmp_path):
  """Store values changed in place between a SIGTERM and the rerun: the rerun resumed and
  finished on a mix of old and new data. A rerun now checks, before any step, every chunk of a
  store whose files were modified after the run first started, and refuses naming the file;
  an untouched store is not read again."""
  from configs import compare
  from lstm_jax.runner import experiment

  _big_store(tmp_path / "s")  # 19 chunks, 8 of them checked at open
  cfg = compare.get_config("smoke")
  cfg.plots = False
  cfg.data.update(source="store", path=str(tmp_path / "s"), min_length=0, max_length=0)
  cfg.update(strategies=("tbptt",), predict_costs=False, background_compiles=0)
  cfg.train.update(tokens_per_step=1024, real_tokens=8192)
  workdir = str(tmp_path / "w")
  experiment.train_and_evaluate(cfg, workdir, quiet=True)
  st = store.open_store(tmp_path / "s")
  assert not st.check_unchanged_since(time.time())  # untouched: nothing read
  experiment.train_and_evaluate(cfg, workdir, quiet=True)  # a rerun on the same data: fine
  count = store.read_meta(tmp_path / "s")["checksums"]["chunks"]["values.bin"]
  sampled = set(np.linspace(0, count - 1, 8).astype(int))
  k = min(set(range(count)) - sampled)  # a chunk that opening does not check
  _flip(tmp_path / "s", "values.bin", k * store.CHUNK_BYTES + 100)
  store.open_store(tmp_path / "s")  # opening alone does not see it
  with pytest.raises(
    store.StoreError, match=rf"s/values.bin changed .* bytes {k * 65536:,} to"
  ) as e:
    experiment.train_and_evaluate(cfg, workdir, quiet=True)
  where = [f.name for f in traceback.extract_tb(e.value.__traceback__)]
  assert "check_stores_unchanged" in where  # before anything ran, not when a batch met it


@pytest.mark.parametrize(
  "fields, said",
  [
    (dict(), "a store holds token ids .* or features"),
    (dict(vocab_size=256, num_features=3), "a store holds token ids .* or features"),
    (dict(vocab_size=256, targets="words"), "targets must be one of"),
    (dict(num_features=3), "next-token targets need token inputs"),
    (dict(num_features=3, targets="step"), "step-level targets need num_classes=... or target_dim"),
    (dict(vocab_size=9, targets="sequence", num_classes=2, target_dim=1), "sequence-level"),
    (dict(num_features=3, targets="step", target_dim=1, values_dtype="int8"), "float16 or float32"),
  ],
)
def test_a_schema_that_cannot_be_a_store_is_refused_when_built(fields, said):
  """StoreSchema checks itself when built, before a directory is made; a writer given anything
  else (the old keywords' dict, say) names what it takes."""
  with pytest.raises(DataError, match=said):
    store.StoreSchema(**fields)


def test_the_writer_takes_a_schema_and_nothing_else(tmp_path):
  with pytest.raises(DataError, match=r"StoreWriter takes a StoreSchema .* got dict"):
    store.StoreWriter(tmp_path / "s", dict(vocab_size=256))
  assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()
