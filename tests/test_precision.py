"""config.model.matmul_dtype="auto" (lstm_jax.runner.precision): float32 without timing anything
where bfloat16 cannot help, else both steps timed and bfloat16 taken only from MARGIN faster;
the choice kept in the workdir and the machine's cache so a rerun takes the same precision."""

import json
import sys
from pathlib import Path

import pytest

from lstm_jax.errors import ConfigError
from lstm_jax.runner import data as runner_data
from lstm_jax.runner import experiment, precision
from lstm_jax.runner.config import base_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import compare  # noqa: E402


def _cfg(**model):
  cfg = compare.get_config("smoke")
  cfg.update(strategies=("tbptt",), predict_costs=False, background_compiles=0)
  cfg.train.update(tokens_per_step=256, real_tokens=2048)
  cfg.checkpoint.enabled = False
  cfg.model.update(dict(dict(matmul_dtype="auto"), **model))  # smoke pins float32
  return cfg


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """The machine's cache in a fresh directory (so no earlier choice is found)."""
  monkeypatch.setenv("LSTM_JAX_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache" / "precision"


class Measured:
  """Stands in for `precision.measure` (counts its calls), returning `chosen` at `speedup`."""

  def __init__(self, chosen="bfloat16", speedup=1.3):
    self.calls, self.chosen, self.speedup = 0, chosen, speedup

  def __call__(self, cfg, train_ds, shape, key=""):
    self.calls += 1
    return precision.PrecisionChoice(
      chosen=self.chosen, reason="measured", speedup=self.speedup, shape=list(shape), key=key
    )


def test_the_default_is_auto_and_float32_is_taken_without_timing_where_bfloat16_cannot_help(
  cache, monkeypatch
):
  assert base_config().model.matmul_dtype == compare.get_config().model.matmul_dtype == "auto"
  cfg = _cfg()
  train_ds, _, _ = runner_data.split_data(cfg)

  def never(*a, **k):
    raise AssertionError("nothing may be timed here")

  monkeypatch.setattr(precision, "measure", never)
  monkeypatch.setattr(precision, "bfloat16_dot_instructions", lambda: False)
  resolved, record = precision.resolve_auto_precision(cfg, train_ds, None)
  assert resolved.model.matmul_dtype == "float32" and cfg.model.matmul_dtype == "auto"
  assert "no bfloat16 dot instructions" in record["reason"] and record["speedup"] is None
  monkeypatch.setattr(precision, "bfloat16_dot_instructions", lambda: True)
  for model, why in (
    (dict(cell="gru"), "bfloat16 matmuls are the LSTM's"),
    (dict(backend="reference"), "backend 'reference' computes in float32"),
  ):
    resolved, record = precision.resolve_auto_precision(_cfg(**model), train_ds, None)
    assert resolved.model.matmul_dtype == "float32" and why in record["reason"]
  # a pinned precision is taken as it is, with no record
  pinned = _cfg(matmul_dtype="bfloat16")
  assert precision.resolve_auto_precision(pinned, train_ds, None) == (pinned, None)
  assert not cache.exists()


def test_cpu_flags_decide_whether_bfloat16_is_timed(monkeypatch, tmp_path):
  for flags, has in (
    ("fpu sse avx2 fma", False),
    ("fpu avx512f avx512_bf16", True),
    ("fpu amx_tile amx_bf16", True),
  ):
    fake = tmp_path / "cpuinfo"
    fake.write_text(f"model name\t: x\nflags\t\t: {flags}\n")
    real_open = open
    monkeypatch.setattr(
      "builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k)
    )
    assert precision.bfloat16_dot_instructions() is has, flags
    monkeypatch.undo()


def test_measuring_times_both_steps_and_takes_bfloat16_only_from_the_margin(cache, monkeypatch):
  cfg = _cfg()
  train_ds, _, _ = runner_data.split_data(cfg)
  got = precision.measure(cfg, train_ds, (4, 8), key="k")
  assert len(got.rounds) == precision.ROUNDS and got.shape == [4, 8] and got.key == "k"
  assert got.speedup > 0 and got.chosen == ("bfloat16" if got.speedup >= 1.1 else "float32")
  # the rule, on given step times (float32's, bfloat16's): bfloat16 from 1.1x float32's speed
  for f32, bf16, want in ((1.0, 0.8, "bfloat16"), (1.0, 0.95, "float32"), (1.0, 1.3, "float32")):
    # perf_counter's readings, round by round: each precision's start (0) and end, float32
    # first in even rounds and bfloat16 first in odd ones (the order measure alternates)
    readings = []
    for r in range(precision.ROUNDS):
      firsts = (f32, bf16) if r % 2 == 0 else (bf16, f32)
      readings += [0.0, firsts[0], 0.0, firsts[1]]
    clock = iter(readings)
    monkeypatch.setattr(precision, "perf_counter", lambda: next(clock))
    got = precision.measure(cfg, train_ds, (4, 8))
    monkeypatch.undo()
    assert got.rounds == pytest.approx([f32 / bf16] * precision.ROUNDS)
    assert got.chosen == want and got.speedup == pytest.approx(f32 / bf16)


def test_a_measured_choice_is_kept_and_reused_and_damage_is_named(cache, monkeypatch, tmp_path):
  cfg = _cfg()
  train_ds, _, _ = runner_data.split_data(cfg)
  monkeypatch.setattr(precision, "bfloat16_dot_instructions", lambda: True)
  measured = Measured()
  monkeypatch.setattr(precision, "measure", measured)
  work = tmp_path / "w"
  work.mkdir()
  resolved, record = precision.resolve_auto_precision(cfg, train_ds, str(work))
  assert resolved.model.matmul_dtype == "bfloat16" and measured.calls == 1
  assert len(list(cache.glob("*.json"))) == 1  # the machine's cache
  precision.save_choice(record, str(work))  # the runner's call once its settings check passed
  # another workdir on the same machine reuses the cache; this workdir its own file
  assert precision.resolve_auto_precision(cfg, train_ds, str(tmp_path / "other"))[1] == record
  for stale in cache.glob("*.json"):
    stale.unlink()
  assert precision.resolve_auto_precision(cfg, train_ds, str(work))[1] == record
  assert measured.calls == 1
  # another model is another key: measured again
  precision.resolve_auto_precision(_cfg(hidden_size=8), train_ds, None)
  assert measured.calls == 2
  # a damaged cache entry is measured again and rewritten; a damaged workdir file is named
  for entry in cache.glob("*.json"):
    entry.write_text("{not json")
  precision.resolve_auto_precision(_cfg(hidden_size=8), train_ds, None)
  assert measured.calls == 3
  (work / "precision.json").write_text('{"chosen": "float16"}')
  with pytest.raises(ConfigError, match=r"precision.json is damaged .*delete it to measure again"):
    precision.resolve_auto_precision(cfg, train_ds, str(work))
  (work / "precision.json").write_bytes(b'{"chosen": "\xff"}')  # not UTF-8
  with pytest.raises(ConfigError, match=r"precision.json is damaged \(UnicodeDecodeError"):
    precision.resolve_auto_precision(cfg, train_ds, str(work))
  # there but unreadable (a directory in its place: unreadable even to root) is said as such
  (work / "precision.json").unlink()
  (work / "precision.json").mkdir()
  with pytest.raises(ConfigError, match=r"precision.json cannot be read .*make it readable"):
    precision.resolve_auto_precision(cfg, train_ds, str(work))
  (work / "precision.json").rmdir()
  # a cache that cannot be written: the run goes on (its workdir keeps the choice)
  blocked = tmp_path / "blocked"
  blocked.write_text("a file where the cache directory would be")
  monkeypatch.setenv("LSTM_JAX_CACHE_DIR", str(blocked))
  assert precision.resolve_auto_precision(cfg, train_ds, str(work))[0].model.matmul_dtype == (
    "bfloat16"
  )


def test_the_runner_trains_in_the_chosen_precision_records_it_and_a_rerun_keeps_it(
  cache, monkeypatch, tmp_path, capsys
):
  monkeypatch.setattr(precision, "bfloat16_dot_instructions", lambda: True)
  monkeypatch.setattr(precision, "measure", Measured())
  cfg = _cfg()
  work = tmp_path / "w"
  (row,) = experiment.train_and_evaluate(cfg, str(work), quiet=False)
  shown = capsys.readouterr()
  assert "matmul_dtype=auto: bfloat16 (measured)" in shown.out + shown.err
  meta = json.loads((work / "meta.json").read_text())
  assert meta["config"]["model"]["matmul_dtype"] == "bfloat16"
  assert meta["auto_precision"]["chosen"] == "bfloat16" and meta["auto_precision"]["speedup"] == 1.3
  assert json.loads((work / "precision.json").read_text())["chosen"] == "bfloat16"
  # the rerun of this workdir reads its choice back (the machine's cache gone, and a new
  # measurement would say float32): the finished row is read, not trained again
  for entry in cache.glob("*.json"):
    entry.unlink()
  monkeypatch.setattr(precision, "measure", Measured("float32", 0.8))
  (again,) = experiment.train_and_evaluate(cfg, str(work), quiet=True)
  assert again["eval_loss"] == row["eval_loss"]
  assert json.loads((work / "meta.json").read_text())["config"]["model"]["matmul_dtype"] == (
    "bfloat16"
  )
