"""Every bad input lstm_jax refuses, with the message it gets: the source of docs/errors.md.

    python tests/bad_inputs.py > docs/errors.md

tests/test_bad_inputs.py checks that each case raises a ValueError (or, for a loss that blows
up, a FloatingPointError) matching its pattern, and that docs/errors.md is what this prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import ml_collections  # noqa: E402
import optax  # noqa: E402

from configs import compare  # noqa: E402
from helpers import identity_dataset, override, ragged_features  # noqa: E402
from lstm_jax import batching, loop, prepare, sources, store, tasks, train, workdir  # noqa: E402
from lstm_jax.checkpoint import Checkpointer  # noqa: E402
from lstm_jax.data import RaggedDataset, from_sequences  # noqa: E402
from lstm_jax.model import SequenceModel  # noqa: E402
from lstm_jax.runner import config, guards
from lstm_jax.runner import data as runner_data

TMP = Path(tempfile.gettempdir()) / f"lstm_jax_bad_inputs_{os.getpid()}"  # one per test worker


@dataclasses.dataclass
class Case:
  area: str
  what: str
  run: Callable[[], object]  # must raise
  pattern: str  # the message must match (re.search)
  error: type = ValueError


def _carry_of_one_layer_for_two():
  import jax
  import jax.numpy as jnp

  from lstm_jax.model import LSTM

  x = jnp.zeros((2, 3, 4))
  LSTM(4, num_layers=2).init(jax.random.key(0), x, initial_carry=LSTM(4).zero_carry(2))


def _nnx_model():
  from flax import nnx

  from lstm_jax import nnx_model

  return nnx_model.SequenceModel(4, 1, num_features=3, rngs=nnx.Rngs(0))


def _floats(n, f=2):
  return np.zeros((n, f), np.float32)


def _cfg(**changes):
  """The smoke preset as a plain dict (as from JSON or YAML), with `changes` at dotted keys."""
  return ml_collections.ConfigDict(override(compare.get_config("smoke").to_dict(), **changes))


def _make_model(**changes):
  from lstm_jax.runner import build

  return build.make_model(_cfg(**changes), ragged_features([3, 5], num_features=2))


def _fit_packed(model):
  ds = ragged_features([3, 5, 2], num_features=2)
  state = train.create_train_state(model, optax.adam(1e-3), ds)
  return loop.fit(state, batching.Pack(ds, batch_size=2, row_length=8), epochs=1)


def _npz_without_lengths():
  TMP.mkdir(parents=True, exist_ok=True)
  np.savez(TMP / "no_lengths.npz", values=_floats(4), targets=np.zeros(2, np.int64))
  return sources.load_npz(str(TMP / "no_lengths.npz"))


def _npz(name: str, **arrays) -> str:
  TMP.mkdir(parents=True, exist_ok=True)
  np.savez(TMP / name, **arrays)
  return str(TMP / name)


def _file(name: str, content: bytes) -> str:
  TMP.mkdir(parents=True, exist_ok=True)
  (TMP / name).write_bytes(content)
  return str(TMP / name)


def _object_npz():
  path = TMP / "objects.npz"
  TMP.mkdir(parents=True, exist_ok=True)
  ragged = np.empty(2, dtype=object)
  ragged[0], ragged[1] = np.zeros(3), np.zeros(4)
  np.savez(path, values=ragged, lengths=np.array([3, 4]), targets=np.array([0, 1]))
  return sources.load_npz(str(path))


def _truncated_npz():
  path = _npz("cut.npz", values=_floats(40), lengths=np.array([20, 20]), targets=np.array([0, 1]))
  data = Path(path).read_bytes()
  Path(path).write_bytes(data[: len(data) // 2])
  return sources.load_npz(path)


def _run_in(workdir_path: Path):
  from lstm_jax.runner import experiment  # noqa: PLC0415 (the runner: only these cases need it)

  return experiment.train_and_evaluate(_cfg(), str(workdir_path), quiet=True)


def _workdir_is_a_file():
  return _run_in(Path(_file("a_file", b"not a directory")))


def _results_is_a_file():
  path = _empty_dir("results_file")
  (path / "results").write_text("a file where the results directory goes")
  return _run_in(path)


def _calibration(value) -> Callable[[], object]:
  def run():
    from lstm_jax.runner import costs  # noqa: PLC0415

    path = _empty_dir("calibration") / "calibration.json"
    fields = dict(compile_seconds=1.0, alpha=1e-4, beta=1e-6, memory_base=1e6)
    path.write_text(json.dumps(dict(fields, memory_per_token=value, key="k")))
    return costs.Calibration.load(str(path), "k")

  return run


def _precision(text: str) -> Callable[[], object]:
  def run():
    from lstm_jax.runner import precision  # noqa: PLC0415

    path = _empty_dir("precision") / "precision.json"
    path.write_text(text)
    return precision.PrecisionChoice.load(str(path), "k")

  return run


def _nan_at_step():
  targets = np.zeros((16, 1), np.float32)
  targets[12:] = 1e30  # squares to inf in the loss
  ds = RaggedDataset(_floats(16), np.full(4, 4), targets, name="blows-up")
  state = train.create_train_state(SequenceModel(4, num_outputs=1), optax.adam(1e-2), ds)
  loop.fit(state, batching.Pad(ds, batch_size=1, seed=0), epochs=1)


def _damaged_checkpoints():
  ds = ragged_features([3, 4, 5, 6], num_features=2)
  strategy = batching.Pad(ds, batch_size=2)

  def state():
    return train.create_train_state(SequenceModel(4, num_outputs=2), optax.adam(1e-2), ds)

  directory = TMP / "checkpoints"
  shutil.rmtree(directory, ignore_errors=True)
  loop.fit(
    state(),
    strategy,
    epochs=1,
    checkpointing=loop.Checkpointing(Checkpointer(directory, every_steps=1)),
  )
  fresh = TMP / "checkpoints-copy"  # a copy: this process's read cache has not seen its files
  shutil.rmtree(fresh, ignore_errors=True)
  shutil.copytree(directory, fresh)
  for f in fresh.rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(b"")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    loop.fit(state(), strategy, epochs=1, checkpointing=loop.Checkpointing(Checkpointer(fresh)))


def _pad_run(directory, settings=None, fail_from=None):
  """One epoch of a tiny padded run checkpointing every step into `directory`; with
  `fail_from`, every write from that step on fails as a full disk does."""
  ds = ragged_features([3, 4, 5, 6], num_features=2)
  state = train.create_train_state(SequenceModel(4, num_outputs=2), optax.adam(1e-2), ds)
  ckpt = Checkpointer(directory, every_steps=1)
  if fail_from is not None:
    real_save = ckpt.manager.save

    def save(step, *args, **kwargs):
      if step >= fail_from:
        ckpt.manager.wait_until_finished()
        (Path(ckpt.directory) / f"{step}.orbax-checkpoint-tmp").mkdir()
        raise OSError(28, "No space left on device")
      return real_save(step, *args, **kwargs)

    ckpt.manager.save = save
  loop.fit(
    state,
    batching.Pad(ds, batch_size=2),
    epochs=1,
    checkpointing=loop.Checkpointing(ckpt, settings=settings),
  )


def _fresh(name):
  shutil.rmtree(TMP / name, ignore_errors=True)
  return TMP / name


def _empty_dir(name) -> Path:
  path = _fresh(name)
  path.mkdir(parents=True)
  return path


def _checkpoint_of_other_settings():
  directory = _fresh("settings")
  _pad_run(directory, {"optimizer.learning_rate": 0.003})
  _pad_run(directory, {"optimizer.learning_rate": 0.03})


def _result_of_other_settings():
  path = _fresh("results") / "tbptt-seed0.json"
  workdir.write_json_atomically(str(path), dict(row={}, settings={"model.hidden_size": 16}))
  workdir.read_result(str(path), {"model.hidden_size": 32})


def _damaged_result():
  path = _fresh("results") / "tbptt-seed0.json"
  path.parent.mkdir(parents=True)
  path.write_text('{"row": {"strategy": "tbptt", "seed": 0, "ste')  # cut short by a kill
  workdir.read_result(str(path), {})


def _busy_workdir():
  with workdir.WorkdirLock(str(_fresh("busy"))):
    workdir.WorkdirLock(str(TMP / "busy"))


def _store(name: str, damage: Callable[[Path], None] | None = None) -> Path:
  """A small byte-level store at TMP/name, damaged by `damage(path)`."""
  path = TMP / name
  shutil.rmtree(path, ignore_errors=True)
  TMP.mkdir(parents=True, exist_ok=True)
  store.write_store(
    path, [(np.arange(10) % 256, None, None)] * 3, store.StoreSchema(vocab_size=256)
  )
  if damage is not None:
    damage(path)
  return path


def _truncate(path: Path) -> None:
  with open(path / "values.bin", "r+b") as f:
    f.truncate(7)


def _bad_record():
  records = [(np.array([1, 2, 3]), None, "notes.txt"), (np.array([4, 300]), None, "tokens.txt")]
  shutil.rmtree(TMP / "bad_record", ignore_errors=True)
  return store.write_store(TMP / "bad_record", records, store.StoreSchema(vocab_size=256))


def _store_meta(name: str, **changes) -> Path:
  """A small store whose meta.json is edited afterwards (`changes` at its keys)."""

  def edit(path: Path) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta.update(changes)
    (path / "meta.json").write_text(json.dumps(meta))

  return _store(name, edit)


def _overwrite_a_users_directory():
  mine = _empty_dir("mine")
  (mine / "thesis.tex").write_text("mine")
  return store.StoreWriter(mine, store.StoreSchema(vocab_size=256), overwrite=True)


def _sample_from(name: str, meta: str | None, summary: str | None):
  """experiments/sample.py's loader on a workdir holding these meta.json and summary.json."""
  from lstm_jax.runner import generate

  d = _empty_dir(name)
  for file, text in (("meta.json", meta), ("summary.json", summary)):
    if text is not None:
      (d / file).write_text(text)
  return generate.load_row(str(d))


_META = json.dumps({"config": {"model": {"hidden_size": 8}, "seed": 0}})


def _missing_eval_path():

  train_ts = _ts("given.ts", "1,2,3:a", "4,5:b")
  cfg = _cfg(**{"data.source": "ts", "data.path": train_ts, "data.eval_path": str(TMP / "no.ts")})
  return runner_data.split_data(cfg)


def _ts(name: str, *data_lines: str) -> str:
  head = "@problemName x\n@univariate false\n@equalLength false\n@classLabel true a b c\n@data\n"
  return _file(name, (head + "\n".join(data_lines) + "\n").encode())


def _jsonl(name: str, *lines: str):
  path = _file(name, ("\n".join(lines) + "\n").encode())
  shutil.rmtree(TMP / f"{name}.store", ignore_errors=True)
  return prepare.prepare_store("jsonl", path, str(TMP / f"{name}.store"))


def _class_weights(weights: str, classification: bool):
  from lstm_jax import train

  targets = np.array([0, 1, 2], np.int32) if classification else np.zeros((3, 1), np.float32)
  ds = RaggedDataset(
    _floats(6),
    np.array([2, 2, 2]),
    targets,
    target_level="sequence",
    num_classes=3 if classification else None,
    name="three",
  )
  return train.resolve_class_weights(weights, ds)


CASES = [
  # data
  Case(
    "data",
    "an empty sequence",
    lambda: RaggedDataset(_floats(5), np.array([2, 0, 3]), np.zeros(5, np.float32)),
    r"sequence 1 is empty",
  ),
  Case("data", "no sequences at all", lambda: from_sequences([], []), "the dataset is empty"),
  Case(
    "store",
    "no store at the path",
    lambda: store.open_store(TMP / "no_such_store"),
    r"no store at .*prepare_data.py --out",
  ),
  Case(
    "store",
    "a store whose writer did not finish (no meta.json)",
    lambda: store.open_store(_store("unfinished", lambda p: os.remove(p / "meta.json"))),
    r"has no meta.json, so it is not a complete store",
  ),
  Case(
    "store",
    "a truncated values file",
    lambda: store.open_store(_store("truncated", _truncate)),
    r"values.bin holds 7 bytes but meta.json describes 30",
  ),
  Case(
    "store",
    "a record the writer cannot store (a token outside the vocabulary)",
    _bad_record,
    r"tokens.txt: token 300 is out of range",
  ),
  Case(
    "store",
    "a store path that is a file (not its directory)",
    lambda: store.open_store(_file("values.npz", b"PK")),
    r"is a file, not a store; a store is the directory prepare_data.py writes",
  ),
  Case(
    "store",
    "meta.json edited to another values dtype (bool over bytes)",
    lambda: store.open_store(_store_meta("bool_meta", values_dtype="bool")),
    r"values_dtype 'bool' does not go with vocab_size 256 \(token ids are uint8\)",
  ),
  Case(
    "store",
    "meta.json edited in a field its fingerprint covers",
    lambda: store.open_store(_store_meta("renumbered", num_values=29)),
    r"meta.json was changed after the store was written",
  ),
  Case(
    "store",
    "values.bin changed after the store was written",
    lambda: store.open_store(
      _store("rewritten", lambda p: (p / "values.bin").write_bytes(bytes(30)))
    ),
    r"values.bin changed after the store was written: its bytes 0 to 30 differ",
  ),
  Case(
    "store",
    "prepare_data --out inside its input --path",
    lambda: prepare.prepare_store("text_dir", str(_empty_dir("corpus")), str(TMP / "corpus" / "s")),
    r"--out .* is, contains or lies inside the input --path",
  ),
  Case(
    "store",
    "prepare_data --max_length below --min_length",
    lambda: prepare.Reading(min_length=16, max_length=8),
    r"--max_length 8 is below --min_length 16 .* no sequence could be kept; raise --max_length",
  ),
  Case(
    "store",
    "prepare_data --max_length negative",
    lambda: prepare.Reading(max_length=-1),
    r"--min_length and --max_length must be >= 0 \(--max_length 0: no maximum\), got 2 and -1",
  ),
  Case(
    "store",
    "prepare_data --vocab_size 0",
    lambda: prepare.Reading(vocab_size=0),
    r"--vocab_size must be >= 1 \(or unset: inferred\), got 0",
  ),
  Case(
    "store",
    "prepare_data --overwrite onto a directory that is not a store",
    _overwrite_a_users_directory,
    r"is a directory that this program did not write .* never replaced, even with",
  ),
  Case(
    "store",
    "a JSONL token id that is a float (1.5)",
    lambda: _jsonl("floats.jsonl", "[1, 2, 3]", "[1.5, 2, 3]"),
    r"floats.jsonl:2: \"tokens\" must be a list of non-negative integer ids; item 0 is float 1.5",
  ),
  Case(
    "store",
    "JSONL token ids that are booleans",
    lambda: _jsonl("bools.jsonl", "[true, false, true]"),
    r"bools.jsonl:1: .* item 0 is bool True",
  ),
  Case(
    "store",
    "JSONL token ids that are strings",
    lambda: _jsonl("strings.jsonl", '{"tokens": ["1", "2", "3"]}'),
    r"strings.jsonl:1: .* item 0 is str '1'",
  ),
  Case(
    "store",
    "a JSONL token id beyond 32 bits",
    lambda: _jsonl("huge.jsonl", "[1, 2]", "[3, 99999999999999999999]"),
    r"huge.jsonl:2: token id 99999999999999999999 \(item 1\) is outside \[0, 4,294,967,295\]",
  ),
  Case(
    "sample",
    "sample.py on a workdir whose meta.json is cut short",
    lambda: _sample_from("cut_meta", '{"config": {"mod', None),
    r"meta.json cannot be read \(JSONDecodeError: .*compare_strategies.py with --workdir",
  ),
  Case(
    "sample",
    "sample.py on a workdir whose meta.json is not an object",
    lambda: _sample_from("list_meta", "[1, 2]", None),
    r"meta.json holds a list, not the runner's dict",
  ),
  Case(
    "sample",
    "sample.py on a workdir without summary.json",
    lambda: _sample_from("no_summary", _META, None),
    r"has no summary.json: run experiments/compare_strategies.py",
  ),
  Case(
    "sample",
    "sample.py when every row is marked not comparable",
    lambda: _sample_from(
      "none_comparable",
      _META,
      json.dumps([{"strategy": "pad", "eval_loss": 2.0, "comparable": False}]),
    ),
    r"has no comparable row to pick as the best; name one with --strategy \(rows: \['pad'\]\)",
  ),
  Case(
    "store",
    "data.source=store without data.path",
    lambda: sources.load_store(""),
    r"data.source=store needs config.data.path",
  ),
  Case(
    "data",
    "a negative length",
    lambda: RaggedDataset(_floats(1), np.array([3, -2]), np.zeros(1, np.float32)),
    r"negative length",
  ),
  Case(
    "data",
    "NaN or inf in the inputs",
    lambda: RaggedDataset(
      np.array([[0.0], [np.nan], [1.0]], np.float32), np.array([1, 2]), np.zeros(3, np.float32)
    ),
    r"NaN in the inputs at step 0 of sequence 1",
  ),
  Case(
    "data",
    "integer features (wrong dtype)",
    lambda: RaggedDataset(np.zeros((3, 2), np.int64), np.array([3]), np.zeros(3, np.float32)),
    r"must be floating point",
  ),
  Case(
    "data",
    "labels out of range",
    lambda: RaggedDataset(_floats(4), np.array([2, 2]), np.array([0, 1, 2, 5]), num_classes=3),
    r"label 5 .* out of range",
  ),
  Case(
    "data",
    "labels of the wrong shape",
    lambda: RaggedDataset(
      _floats(4),
      np.array([2, 2]),
      np.zeros((2, 3), np.int64),
      target_level="sequence",
      num_classes=2,
    ),
    r"must be a 1-D .* one integer class id per sequence",
  ),
  Case(
    "data",
    "targets whose length differs from the inputs'",
    lambda: RaggedDataset(_floats(6), np.array([3, 3]), np.zeros(5, np.float32)),
    r"one row per step \(6\)",
  ),
  Case("data", "an .npz missing an array", _npz_without_lengths, r"has no lengths array"),
  Case(
    "data",
    "an .npz with no sequences",
    lambda: sources.load_npz(
      _npz("empty.npz", values=_floats(0), lengths=np.zeros(0, int), targets=np.zeros(0, int))
    ),
    r"holds no sequences \(its lengths array is empty\)",
  ),
  Case(
    "data",
    "an .npz of Python objects (a list of arrays)",
    _object_npz,
    r"its 'values' array holds Python objects .*np.concatenate",
  ),
  Case(
    "data",
    "a .ts case without a label",
    lambda: sources.load_ts(_ts("nolabel.ts", "1,2,3:a", "1,2,3")),
    r"nolabel.ts:7: the case has no label",
  ),
  Case(
    "data",
    "a .ts line cut short (its label lost)",
    lambda: sources.load_ts(_ts("cut.ts", "1,2,3:4,5,6:a", "1,2,3:4,5")),
    r"cut.ts:7: label '4,5' is not one of the @classLabel line's",
  ),
  Case(
    "data",
    "a .ts file whose cases have different dimensions",
    lambda: sources.load_ts(_ts("dims.ts", "1,2:3,4:a", "1,2:b")),
    r"dims.ts:7: this case has 1 dimension\(s\), the first case \(line 6\) 2",
  ),
  Case(
    "data",
    "inf in a .ts file",
    lambda: sources.load_ts(_ts("inf.ts", "1,2:a", "1,inf:b")),
    r"inf.ts:7: a value is inf",
  ),
  Case(
    "data",
    "inf in an .npz (the file named)",
    lambda: sources.load_npz(
      _npz(
        "inf.npz",
        values=np.array([[0.0], [np.inf]]),
        lengths=np.array([1, 1]),
        targets=np.array([0, 1]),
      )
    ),
    r"inf.npz: inf in the inputs at step 0 of sequence 1",
  ),
  Case(
    "data",
    "a data.eval_path file that does not exist",
    _missing_eval_path,
    r"no.ts is not a file; set data.eval_path to a .ts file",
  ),
  Case("data", "an .npz cut short", _truncated_npz, r"is not a readable .npz \(truncated"),
  Case(
    "data",
    "a file that is not an .npz",
    lambda: sources.load_npz(_file("notes.npz", b"plain text, not an archive\n")),
    r"is not a readable .npz .*np.savez",
  ),
  Case(
    "data",
    "an .npz path that is a directory",
    lambda: sources.load_npz(str(_empty_dir("npz_dir"))),
    r"is not a file; set data.path to a ragged .npz",
  ),
  Case(
    "data",
    "a stray label far above the others (999 among 0..2)",
    lambda: sources.load_npz(
      _npz("stray.npz", values=_floats(8), lengths=np.full(4, 2), targets=np.array([0, 1, 2, 999]))
    ),
    r"1 label 999, far above all others \(the next largest is 2\), would make num_classes 1000",
  ),
  Case(
    "data",
    "a stray token id far above the others",
    lambda: sources.load_npz(
      _npz(
        "stray_token.npz",
        values=np.array([3, 40, 255, 100_000, 7, 9]),
        lengths=np.array([3, 3]),
        targets=np.array([1, 2, 3, 4, 5, 6]),
      )
    ),
    r"1 token id 100000, far above .* would make vocab_size 100001",
  ),
  Case(
    "data",
    "labels that match neither the sequences nor the steps",
    lambda: sources.load_npz(
      _npz("few_labels.npz", values=_floats(10), lengths=np.full(5, 2), targets=np.arange(4) % 2)
    ),
    r"has 4 labels for 5 sequences of 10 steps in all: give one label per sequence \(5\)",
  ),
  Case(
    "data",
    "text_lines pointing at a directory",
    lambda: sources.load_text(str(_empty_dir("lines_dir")), one_per_line=True),
    r"is not a file; text_lines reads one text file.*use data.source=text_dir",
  ),
  Case(
    "data",
    "text_dir pointing at a file",
    lambda: sources.load_text(_file("one.txt", b"a line\n"), one_per_line=False),
    r"is not a directory; text_dir reads .*use data.source=text_lines",
  ),
  Case(
    "data",
    "a token outside the vocabulary",
    lambda: RaggedDataset(
      np.array([1, 9], np.int32), np.array([2]), np.zeros(2, np.int32), num_classes=2, vocab_size=5
    ),
    r"token 9 .* out of range",
  ),
  # data against the strategy or the model
  Case(
    "batching",
    "a sequence longer than the largest bucket",
    lambda: batching.Bucket(identity_dataset([3, 30]), batch_size=1, boundaries=[10, 20]),
    r"longer than the largest bucket boundary",
  ),
  Case(
    "batching",
    "a batch size larger than the data",
    lambda: batching.Pad(identity_dataset([3, 5, 4]), batch_size=8),
    r"batch_size 8 is larger than the data",
  ),
  Case(
    "batching",
    "more TBPTT streams than sequences",
    lambda: batching.TBPTT(identity_dataset([3, 5]), num_streams=4, chunk_length=2),
    r"num_streams 4 is larger than the data",
  ),
  Case(
    "batching",
    "a chunk length < 1",
    lambda: batching.TBPTT(identity_dataset([3, 5]), num_streams=2, chunk_length=0),
    r"chunk_length must be an integer >= 1",
  ),
  Case(
    "model",
    "a feature size that differs from the model's",
    lambda: loop.fit(
      train.create_train_state(
        SequenceModel(4, num_outputs=2), optax.adam(1e-2), ragged_features([3, 4])
      ),
      batching.Pad(ragged_features([3, 4], num_features=5), batch_size=2),
      epochs=1,
    ),
    r"5 features per step but the model was initialised for 3",
  ),
  Case(
    "model",
    "an NNX model given to linen's train state",
    lambda: train.create_train_state(_nnx_model(), optax.adam(1e-3), ragged_features([3, 4])),
    r"the train state takes a linen model .* For an NNX model use nnx_model.train_state",
  ),
  Case(
    "model",
    "an initial carry for another number of layers",
    lambda: _carry_of_one_layer_for_two(),
    r"initial_carry has 1 layers, the model 2; pass one carry per layer",
  ),
  Case(
    "model",
    "labels out of range for the head",
    lambda: train.create_train_state(
      SequenceModel(4, num_outputs=1), optax.adam(1e-3), tasks.running_parity(4, [3, 4], seed=0)
    ),
    r"out of range for a head with 1 outputs",
  ),
  # config
  Case(
    "config",
    "class weights that are not one per class (`train.class_weights`)",
    lambda: _class_weights("1,2", classification=True),
    r"class weights \[1.0, 2.0\]: need 3 finite weights >= 0",
  ),
  Case(
    "config",
    "class weights for regression targets",
    lambda: _class_weights("balanced", classification=False),
    r"class weights apply to classification",
  ),
  Case(
    "config",
    "an unknown (misspelt) key",
    lambda: config.validate_config(_cfg(**{"model.hiden_size": 64})),
    r"unknown config key config.model.hiden_size. Did you mean 'hidden_size'",
  ),
  Case(
    "config",
    "a wrong type",
    lambda: config.validate_config(_cfg(**{"model.hidden_size": "128"})),
    r"config.model.hidden_size must be int, got str",
  ),
  Case(
    "config",
    "an initialisation asked of a cell that has only its own",
    lambda: config.validate_config(_cfg(**{"model.cell": "mgu", "model.initializer": "flax"})),
    r"config.model.initializer='flax' is a choice for the LSTM and the GRU; cell 'mgu'",
  ),
  Case(
    "config",
    "a matmul precision that does not exist",
    lambda: config.validate_config(_cfg(**{"model.matmul_dtype": "float16"})),
    r"config.model.matmul_dtype must be one of \('float32', 'bfloat16', 'auto'\), got 'float16'",
  ),
  Case(
    "config",
    "the fused LSTM asked to train with dropout",
    lambda: config.validate_config(
      _cfg(**{"model.backend": "reference", "model.dropout_rate": 0.2})
    ),
    r"config.model.backend='reference' is the fused LSTM's: it needs config.model.cell=lstm",
  ),
  Case(
    "config",
    "the cuDNN backend on a machine without a GPU",
    lambda: _make_model(**{"model.backend": "cudnn"}),
    r"config.model.backend: backend='cudnn' needs a CUDA GPU; this machine runs cpu",
  ),
  Case(
    "model",
    "an explicit fused backend asked to train packed rows",
    lambda: _fit_packed(SequenceModel(4, 2, backend="reference")),
    r"backend='reference' runs right-padded rows, one sequence each \(strategies pad",
  ),
  Case(
    "config",
    "a learning-rate schedule that does not exist",
    lambda: config.validate_config(_cfg(**{"optimizer.schedule": "linear"})),
    r"config.optimizer.schedule must be one of \('constant', 'cosine'\), got 'linear'",
  ),
  Case(
    "config",
    "a strategy that does not exist",
    lambda: config.validate_config(_cfg(strategies=("pad", "bucketing"))),
    r"unknown strategy name\(s\) \['bucketing'\]",
  ),
  Case(
    "config",
    "bucket boundaries that do not increase",
    lambda: config.validate_config(
      _cfg(**{"strategy.bucket.boundaries": (64, 32, 128), "strategy.bucket.num_buckets": None})
    ),
    r"boundaries must be positive and strictly increasing",
  ),
  Case(
    "config",
    "a token budget of zero",
    lambda: config.validate_config(_cfg(**{"strategy.bucket.tokens_per_batch": 0})),
    r"tokens_per_batch must be >= 1, got 0",
  ),
  Case(
    "config",
    "no rule for when to stop",
    lambda: config.validate_config(_cfg(**{"train.epochs": 0, "train.real_tokens": 0})),
    r"set config.train.real_tokens or config.train.epochs",
  ),
  # the runner's row guards, before anything trains
  Case(
    "guards",
    "a strategy that would take too few optimizer steps (pack on long documents)",
    lambda: guards.check_steps(
      "pack", batching.Pack(identity_dataset([500] * 10), batch_size=1), 2000, None, 20
    ),
    r"pack would take only 4 optimizer step\(s\) within the budget of 2,000 real tokens.*"
    r"min_steps=20.*use tbptt or vbptt",
  ),
  Case(
    "guards",
    "one step holding more real tokens than the whole budget",
    lambda: guards.check_steps(
      "pad", batching.Pad(identity_dataset([50] * 40), batch_size=8), 300, None, 20
    ),
    r"pad: one step holds 400 real tokens, more than the budget of 300 real tokens\. Lower "
    r"its rows per step",
  ),
  Case(
    "guards",
    "a train step too big for memory (by XLA's memory analysis)",
    lambda: guards.check_memory("pack", (1, 189_480), 13_743_895_347, 12 * 2**30),
    r"pack: its largest train step, a \[1, 189480\] batch, needs 13,107 MiB .*"
    r"max_step_memory \(12,288 MiB\).*use tbptt or vbptt",
  ),
  # training and checkpoints
  Case(
    "training",
    "fit's Hooks: an on_eval with no eval_every_tokens",
    lambda: loop.Hooks(on_eval=lambda state, tokens: None),
    r"Hooks got on_eval without eval_every_tokens: an evaluation needs both",
  ),
  Case(
    "training",
    "fit's Pipeline: compile_workers=2 without background compiles",
    lambda: loop.Pipeline(compile_workers=2),
    r'compile_workers=2 compiles in the background; set compile_shapes="background"',
  ),
  Case(
    "training",
    "a loss that becomes NaN or inf",
    _nan_at_step,
    r"the loss became inf at step 4",
    FloatingPointError,
  ),
  Case(
    "checkpoint",
    "every checkpoint damaged (truncated files)",
    _damaged_checkpoints,
    r"(?s)every checkpoint in .* is damaged or incomplete.*resume=False",
  ),
  Case(
    "checkpoint",
    "a checkpoint write that fails (disk full, permissions)",
    lambda: _pad_run(_fresh("full"), fail_from=2),
    r"could not write the checkpoint of step 2 .* No space left on device .* MiB free there"
    r".*partial write was removed.*resume from step 1",
  ),
  Case(
    "checkpoint",
    "a checkpoint made with other settings (e.g. learning rate)",
    _checkpoint_of_other_settings,
    r"made with different settings \(optimizer.learning_rate: 0.003 there, 0.03 here\)",
  ),
  # the runner's workdir
  Case(
    "workdir",
    "a finished result made with other settings (e.g. hidden size)",
    _result_of_other_settings,
    r"made with different settings \(model.hidden_size: 16 there, 32 here\).*new --workdir",
  ),
  Case(
    "workdir",
    "a finished result cut short (a kill while it was written by hand, a full disk)",
    _damaged_result,
    r"tbptt-seed0.json is damaged \(JSONDecodeError: .*delete it to train that row again",
  ),
  Case(
    "workdir",
    "a second runner on a busy workdir",
    _busy_workdir,
    r"is in use by another runner \(pid \d+",
  ),
  Case(
    "workdir",
    "a workdir path that is a file",
    _workdir_is_a_file,
    r"cannot write the workdir .*a_file: .*a file stands where a directory must be",
  ),
  Case(
    "workdir",
    "a workdir name over the file system's limit",
    lambda: _run_in(TMP / ("x" * 300)),
    r"File name too long \(ENAMETOOLONG\).*at most 255 bytes",
  ),
  Case(
    "workdir",
    "results/ that cannot be written (here a file stands there)",
    _results_is_a_file,
    r"cannot write the workdir .*results_file: .*results.*Give --workdir a directory",
  ),
  Case(
    "workdir",
    "a string inside calibration.json",
    _calibration("fast"),
    r"calibration.json: memory_per_token is 'fast', not a finite number; delete it",
  ),
  Case(
    "workdir",
    "NaN inside calibration.json",
    _calibration(float("nan")),
    r"calibration.json: memory_per_token is nan, not a finite number",
  ),
  Case(
    "workdir",
    "precision.json (what matmul_dtype=auto chose) cut short",
    _precision('{"chosen": "bfloat16", "rea'),
    r"precision.json is damaged \(JSONDecodeError.*delete it to measure again",
  ),
  Case(
    "workdir",
    "a precision that does not exist inside precision.json",
    _precision('{"chosen": "float16", "reason": "x", "key": "k"}'),
    r"precision.json is damaged \(ValueError: chosen is 'float16'\).*or set "
    r"config.model.matmul_dtype",
  ),
]


def raised(case: Case) -> Exception:
  """The exception `case` raises (AssertionError if none, or not of its kind)."""
  try:
    case.run()
  except case.error as e:
    return e
  raise AssertionError(f"{case.what}: no {case.error.__name__} was raised")


def render() -> str:
  lines = [
    "# Bad input and the messages it gets",
    "",
    "Generated by `python tests/bad_inputs.py > docs/errors.md`; "
    "`tests/test_bad_inputs.py` checks that each case still raises this message and that "
    "this file is current. Every error is a `ValueError` subclass (`DataError`, "
    "`ConfigError`, `CheckpointError` from `lstm_jax.errors`), except a loss that stops "
    "being finite, a `FloatingPointError`. Paths under the temporary directory are shown "
    "as `<tmp>`, orbax's hashed file names as `<hash>`, the array whose read failed "
    "first (reads run concurrently) as `<array>`, free space as `<n>` and the holder of a "
    "workdir lock as `<pid>`, `<host>` and `<time>`. The runner and the benchmark print "
    "these errors as one line, `error (ConfigError): ...`, and exit with status 2.",
    "",
    "| area | bad input | error | message |",
    "| --- | --- | --- | --- |",
  ]
  for case in CASES:
    e = raised(case)
    text = re.sub(r"\s+", " ", str(e).replace(str(TMP), "<tmp>")).replace("|", "\\|")
    text = re.sub(r"[0-9a-f]{32}", "<hash>", text)  # orbax's file names differ run to run
    text = re.sub(r"[\d,.]+ MiB free", "<n> MiB free", text)  # the machine's free space
    text = re.sub(
      r"pid \d+ on [^,]+, started [\d: -]+", "pid <pid> on <host>, started <time>", text
    )
    text = re.sub(r'Error reading "[^"]*"', 'Error reading "<array>"', text)  # concurrent reads:
    # which array's read fails first varies
    lines.append(f"| {case.area} | {case.what} | `{type(e).__name__}` | {text} |")
  lines += [
    "",
    "Exit statuses of the command lines: 0 finished; 2 one of the errors above (also a "
    "checkpoint write that failed: no space, read-only, immutable, an I/O error); 75 "
    "preempted by a SIGTERM or SIGINT after writing the checkpoint of the step in flight "
    "(run the same command again to resume; a batch script can requeue on it); 143 or 130 a "
    "second SIGTERM or SIGINT, which exits at once. A bad flag is one line and status 2 too "
    "(a misspelt key: `error (ConfigError): bad flag (in --config.model.hiden_size=3): "
    '\'hiden_size\' Did you mean "hidden_size" instead of "hiden_size"? ...`; a value of the '
    "wrong type; an unknown preset). What the runner does on each fault (signals, damaged "
    "checkpoints, failed writes) is the table under 'Faults' in docs/checkpoints.md.",
    "",
    "Not an error: a row whose optimizer step count differs from the median row's by "
    "more than `config.guards.step_tolerance` (e.g. a batch size set by hand instead of "
    "derived from `config.train.tokens_per_step`). The runner trains it, marks it `*` in "
    "the table with the reason, and leaves it out of the target loss and the report's "
    "reading; it says so before training, with the fix.",
    "",
    "Not an error: a text file that is not valid UTF-8. The byte-level sources "
    "(`text_dir`, `text_lines`, the standard library) model raw bytes and never decode, "
    "so any encoding trains as it is; the data's identity in `meta.json` counts the files "
    "that are not valid UTF-8 (`non_utf8_files`).",
    "",
  ]
  return "\n".join(lines)


if __name__ == "__main__":
  print(render(), end="")
