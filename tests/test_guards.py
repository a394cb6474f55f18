"""The runner's row guards (lstm_jax.runner.guards) and equal work per step (train.tokens_per_step):
every row the runner prints is one a researcher can compare, or says why not.

Cases from the runner-integrity issue: long documents made `pack` a one-step row that became the
target (case 1), and batch settings tuned by hand for one data set gave other data 537 pad steps
against 85 for tbptt and pack (case 6).
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import identity_dataset, override
from lstm_jax import batching, compiles
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.runner import build, config, experiment, guards, precision, report
from lstm_jax.runner import data as runner_data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import compare  # noqa: E402


def _documents(directory: Path, count: int = 20, length: int = 6000) -> Path:
  """`count` distinct long text files, one sequence each."""
  rng = np.random.default_rng(0)
  directory.mkdir()
  for i in range(count):
    words = rng.choice(["lstm", "jax", "scan", "carry", "mask", "pad", "bucket"], length // 5)
    (directory / f"doc{i}.md").write_text(f"# doc {i}\n" + " ".join(words)[:length])
  return directory


def _short_lines(path: Path, count: int = 463) -> Path:
  """`count` distinct short lines of 20-60 bytes, like a fortune-cookie file."""
  rng = np.random.default_rng(1)
  words = ["you", "will", "meet", "a", "tall", "dark", "stranger", "soon", "luck", "is", "near"]
  lines = set()
  while len(lines) < count:
    line = " ".join(rng.choice(words, rng.integers(4, 12)))
    if 20 <= len(line) <= 60:
      lines.add(line)
  path.write_text("\n".join(sorted(lines)) + "\n")
  return path


def _files_config(directory: Path, **overrides):
  cfg = compare.get_config("files")
  cfg.data.update(source="text_dir", path=str(directory), suffix=".md", min_length=16)
  cfg.model.update(hidden_size=8, embed_dim=4)
  cfg.train.update(real_tokens=20_000, tokens_per_step=512, eval_every_tokens=0)
  cfg.checkpoint.enabled = False
  cfg.tune_malloc = False  # in process: leave the test worker's allocator as it is
  return override(cfg, **overrides)


def _no_compile(monkeypatch):
  """Fails the test if any counted step compiles (CountedJit's one compile path: the memory
  guard's, the cost model's calibration, matmul_dtype="auto"'s timing, a training step's): the
  plan guards run first. The CPU is taken to have bfloat16 dot instructions, so the precision
  would be timed on any machine (on one without them it is float32 untimed)."""
  monkeypatch.setattr(precision, "bfloat16_dot_instructions", lambda: True)

  def refuse(self, *args, **kwargs):
    raise AssertionError(f"{self.name} was compiled before the guard refused the run")

  monkeypatch.setattr(compiles.CountedJit, "_compile", refuse)


def test_long_documents_too_few_steps_refused_before_any_compile(tmp_path, monkeypatch):
  """Case 1: pack with rows as long as the longest file holds one whole file per step."""
  docs = _documents(tmp_path / "docs")
  _no_compile(monkeypatch)
  cfg = _files_config(docs, strategies=("tbptt", "pack"), **{"strategy.pack.row_length": None})
  with pytest.raises(
    ConfigError,
    match=r"pack would take only 4 optimizer step\(s\) within the "
    r"budget of 20,000 real tokens .*min_steps=20\. Its batches already hold one "
    r"row.*use tbptt or vbptt",
  ):
    experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  cfg.train.real_tokens = 5000  # less than one file: one step would be more than the budget
  cfg.strategies = ("pack",)
  with pytest.raises(
    ConfigError,
    match=r"pack: one step holds [\d,]+ real tokens, more than the "
    r"budget of 5,000",
  ):
    experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  assert not (tmp_path / "w" / "results").exists()


def test_pack_default_row_length_does_not_grow_with_the_longest_file(tmp_path, monkeypatch):
  """Case 1: the config's pack rows have a fixed length, so a long file is refused with the
  strategies that suit documents named, instead of widening every row to it."""
  assert config.base_config().strategy.pack.row_length == 1024
  assert set(compare.get_config("files").strategies) == {"tbptt", "vbptt"}
  docs = _documents(tmp_path / "docs")
  _no_compile(monkeypatch)
  cfg = _files_config(docs, strategies=("pack",))
  with pytest.raises(
    DataError,
    match=r"longer than the pack row length \(1024\).*--config.strategy.pack.row_length"
    r".*use 'tbptt'",
  ):
    experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)


def test_memory_guard_names_strategy_shape_bytes_and_fix(tmp_path):
  """Case 1: a step bigger than max_step_memory is refused before it trains (XLA's analysis)."""
  cfg = compare.get_config("smoke")  # on a small synthetic task: no data to parse
  cfg.strategies = ("tbptt",)
  cfg.data.update(source="parity", num_sequences=400)
  cfg.tune_malloc = False  # in process: leave the test worker's allocator as it is
  cfg.predict_costs = False  # the guard refuses before any compile, calibration or not
  cfg.guards.max_step_memory = 2**20
  with pytest.raises(
    ConfigError,
    match=r"tbptt: its largest train step, a \[32, 64\] batch, "
    r"needs \d+ MiB by XLA's memory analysis, more than "
    r"config.guards.max_step_memory \(1 MiB\)\. Memory grows with B x T: about "
    r"\d+ rows per batch \(num_streams",
  ):
    experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  assert not (tmp_path / "w" / "results").exists()


def test_the_guards_compile_is_the_rows_and_no_shape_compiles_twice(tmp_path, monkeypatch):
  """The memory guard compiles each strategy's largest train step before anything trains, and
  the row reuses that executable: with background compiles (the default) it compiles only its
  other shapes, so no step function compiles one signature twice in the run. The
  row's train compiles are its shapes, counted once, and its clock starts with the guard's
  compile seconds."""
  made = []
  compile_once = compiles.CountedJit._compile

  def counted(self, key, args, publish=True):
    if key not in self._executables:
      made.append((id(self), self.name, key))
    return compile_once(self, key, args, publish)

  monkeypatch.setattr(compiles.CountedJit, "_compile", counted)
  cfg = compare.get_config("smoke")
  cfg.plots = False  # the PNGs: the shared smoke run's (test_smoke_writes_every_file_and_key)
  cfg.strategies = ("bucket", "pad")
  cfg.data.update(source="parity", num_sequences=200)
  cfg.update(tune_malloc=False, predict_costs=False)
  assert cfg.background_compiles > 0
  rows = experiment.train_and_evaluate(cfg, str(tmp_path / "w"), quiet=True)
  trains = [m for m in made if m[1] == "train_step"]
  assert len(trains) == len(set(trains))  # the guard's compile was not made again
  by_fn = {}
  for fn, _, key in trains:
    by_fn.setdefault(fn, []).append(key)
  assert sorted(len(v) for v in by_fn.values()) == sorted(r["shapes"] for r in rows)
  assert all(r["compiles"]["train"] == r["shapes"] for r in rows)


def test_memory_guard_arithmetic_and_default_limit():
  with pytest.raises(ConfigError, match=r"about 8 rows per batch \(batch_size"):
    guards.check_memory("pad", (32, 1000), needed=4 * 2**30, limit=2**30)
  with pytest.raises(ConfigError, match="a shorter row length.*use tbptt or vbptt"):
    guards.check_memory("pack", (1, 189_480), needed=12 * 2**30, limit=2**30)
  guards.check_memory("pad", (32, 1000), needed=2**30, limit=2**30)  # fits: no error
  limit = guards.default_memory_limit()

  assert 0 < limit <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _rows(steps: dict[str, int]) -> list[dict]:
  return [
    dict(
      strategy=name,
      seed=0,
      steps=n,
      metric="loss",
      compiles=dict(train=1, eval=1),
      shapes=1,
      devices=1,
      eval_loss=2.0 + 0.1 * i,
      eval_metric=1.0,
      tokens_per_second=1000.0,
      padding_fraction=0.1,
      wall_seconds=10.0,
      compile_seconds=1.0,
      peak_rss_bytes=2**30,
      time_to_target_seconds=5.0,
      target_eval_loss=2.5,
    )
    for i, (name, n) in enumerate(steps.items())
  ]


def test_rows_with_unequal_steps_are_flagged_and_never_ranked():
  """Cases 1 and 6: a row whose step count is off is marked, explained, and left out."""
  rows = _rows(dict(pad=537, bucket=90, tbptt=85, pack=85, vbptt=86))
  guards.mark_comparable(rows, tolerance=0.1, min_steps=20)
  flagged = {r["strategy"]: r["not_comparable"] for r in rows if not r["comparable"]}
  assert (
    list(flagged) == ["pad"]
    and "537 optimizer steps against the median row's 86" in (flagged["pad"])
  )
  summary = report.aggregate(rows)
  text = report.table(summary)
  assert "pad *" in text and "* pad: not comparable, took 537" in text
  assert "bucket *" not in text
  reading = "\n".join(report.reading(summary))
  assert reading.startswith("- Not comparable, left out of this reading: pad (took 537")
  assert "eval losses range from 2.1000 (bucket) to 2.4000 (vbptt)" in reading  # pad's 2.0 not
  rows = _rows(dict(pad=10, tbptt=10))
  guards.mark_comparable(rows, tolerance=0.1, min_steps=20)
  assert all("fewer than min_steps=20" in r["not_comparable"] for r in rows)


def test_equal_steps_per_strategy_on_short_lines(tmp_path):
  """Case 6: on 463 short lines (not the data the defaults were tuned on), the batch settings
  derived from tokens_per_step give every strategy about the same optimizer steps for the same
  real-token budget, and bucket batches on small buckets are not mostly empty rows."""
  cfg = compare.get_config("default")
  cfg.data.update(
    source="text_lines", path=str(_short_lines(tmp_path / "fortunes.txt")), min_length=2
  )
  cfg.train.tokens_per_step = 1024  # an epoch holds about 16 such steps
  train_ds, _, _ = runner_data.split_data(cfg)
  planned = {}
  for name in compare.STRATEGY_NAMES:
    strategy = build.strategy_from_config(name, train_ds, cfg, cfg.seed)
    planned[name] = len(guards.planned_steps(strategy, cfg.train.real_tokens, None))
    for plan in strategy.plan(0):
      if name == "bucket":
        assert len(plan.rows) > plan.batch_size / 2, plan.shape  # not mostly empty rows
  median = np.median(list(planned.values()))
  assert all(abs(n / median - 1) <= cfg.guards.step_tolerance for n in planned.values()), planned
  # With the default 8192 tokens per step an epoch is two steps, and each of bucket's 8 buckets
  # takes at least one: the runner says so before training, with the fix.
  cfg.train.tokens_per_step = 8192
  bucket = build.strategy_from_config("bucket", train_ds, cfg, cfg.seed)
  assert len(guards.planned_steps(bucket, cfg.train.real_tokens, None)) > 2 * median / 8
  assert guards.equal_steps_hint("bucket", bucket, cfg).startswith(
    "An epoch holds 2.0 steps of train.tokens_per_step real tokens and each of its 8 buckets "
    "takes at least one: use at most 1 buckets"
  )


def test_every_strategy_derives_its_rows_from_tokens_per_step():
  lengths = np.random.default_rng(0).integers(5, 60, size=300)

  ds = identity_dataset(list(lengths))
  mean = lengths.mean()
  made = {
    name: batching.make_strategy(name, ds, tokens_per_step=640, **extra)
    for name, extra in (
      ("pad", {}),
      ("pad_batch_max", {}),
      ("tbptt", dict(chunk_length=32)),
      ("vbptt", dict(base_length=32)),
      ("pack", dict(row_length=64)),
      ("bucket", dict(num_buckets=3)),
    )
  }
  assert made["pad"].batch_size == made["pad_batch_max"].batch_size == round(640 / mean)
  assert made["tbptt"].num_streams == 20
  assert made["vbptt"].num_streams == round(640 / (32 * 0.975))
  pack = made["pack"]
  assert pack.batch_size == round(640 / (lengths.sum() / len(pack.bins)))
  for name, s in made.items():  # about 640 real tokens per step, whatever the layout
    real = [p.real_tokens for p in s.plan(0)[:-1]]
    assert 0.6 * 640 < np.mean(real) < 1.4 * 640, (name, np.mean(real))
  # a set batch size wins over the derived one
  assert batching.Pad(ds, batch_size=7, tokens_per_step=640).batch_size == 7
  with pytest.raises(ConfigError, match="pad needs batch_size, or tokens_per_step"):
    batching.Pad(ds)
