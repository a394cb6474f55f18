"""The cost model (lstm_jax.runner.costs), num_buckets="auto" and the recommender: predictions count
exactly what the strategies will do (steps, shapes, padding), the bucket count moves with the
budget as the model says, a calibration is saved and read back only for its own settings, and the
recommender's order of times agrees with a real run where the predicted gap is wide."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import optax
import pytest

from helpers import ragged_features
from lstm_jax import batching, train
from lstm_jax.errors import ConfigError
from lstm_jax.model import SequenceModel
from lstm_jax.runner import config, costs, recommend
from lstm_jax.runner import data as runner_data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import compare  # noqa: E402


def _cal(compile_seconds=1.0, alpha=1e-4, beta=1e-5):
  return costs.Calibration(compile_seconds, alpha, beta, 1e6, 100.0, key="test")


def _data():
  rng = np.random.default_rng(0)
  lengths = np.clip(rng.lognormal(np.log(40), 0.8, size=600).astype(int), 2, 400)
  return ragged_features(lengths, num_features=3, seed=0)


def _cfg(real_tokens):
  cfg = compare.get_config("default")
  cfg.train.update(real_tokens=real_tokens, tokens_per_step=2048)
  return cfg


def test_prediction_counts_what_the_strategy_will_do():
  """Steps, shapes, real and computed tokens are the plans' own (not estimates); the times are
  the calibration's formula summed over those steps."""
  ds, cal = _data(), _cal()
  strategy = batching.Bucket(ds, tokens_per_batch=2048, num_buckets=4)
  p = costs.predict(strategy, cal, real_tokens=None, epochs=2)
  plans = list(strategy.plan(0)) + list(strategy.plan(1))
  assert p["steps"] == len(plans) and p["shapes"] == len(strategy.shapes(2)) == 4
  assert p["real_tokens"] == 2 * int(ds.lengths.sum())
  assert p["padding_fraction"] == pytest.approx(
    1 - p["real_tokens"] / sum(q.computed_tokens for q in plans)
  )
  assert p["compile_seconds"] == 4 * cal.compile_seconds
  assert p["train_seconds"] == pytest.approx(
    sum(q.length * (cal.alpha + cal.beta * q.batch_size) for q in plans)
  )
  assert p["truncates_gradients"] is False
  tb = costs.predict(batching.TBPTT(ds, num_streams=8, chunk_length=32), cal, 5000)
  assert tb["truncates_gradients"] is True and tb["shapes"] == 1 and tb["real_tokens"] >= 5000


def test_auto_buckets_buy_fewer_buckets_for_short_runs_and_more_for_long():
  """With the same calibration, a budget of a few steps is cheapest with few shapes to compile
  and a long budget with many (less padding per step); free compiles buy the most buckets and
  costly ones a single bucket."""
  ds = _data()
  chosen = {
    tokens: costs.choose_num_buckets(ds, _cfg(tokens), _cal(), candidates=range(1, 9))[0]
    for tokens in (20_000, 20_000_000)
  }
  assert chosen[20_000] < chosen[20_000_000], chosen
  n_free, rows = costs.choose_num_buckets(
    ds, _cfg(200_000), _cal(compile_seconds=0.0), candidates=range(1, 9)
  )
  assert n_free == min(rows, key=lambda r: r["train_seconds"])["num_buckets"] > 1
  assert [r["num_buckets"] for r in rows] == list(range(1, 9))
  padding = [r["padding_fraction"] for r in rows]
  assert padding[-1] < padding[0]
  n_dear, _ = costs.choose_num_buckets(
    ds, _cfg(200_000), _cal(compile_seconds=1e6), candidates=range(1, 9)
  )
  assert n_dear == 1


def test_calibration_measures_saves_and_reads_back_only_its_own(tmp_path):
  ds = ragged_features([5, 9, 14, 30, 7, 22] * 4, num_features=3, seed=0)
  state = train.create_train_state(SequenceModel(hidden_size=8, num_outputs=2), optax.sgd(0.1), ds)
  cal = costs.calibrate(state, ds, ((2, 32), (16, 8)), key="k1", repeats=2)
  assert cal.compile_seconds > 0 and cal.alpha >= 0 and cal.beta >= 0
  assert cal.alpha + cal.beta > 0 and cal.memory_per_token > 0
  assert cal.measured["shapes"] == [[2, 32], [16, 8]]
  path = tmp_path / "calibration.json"
  cal.save(str(path))
  assert costs.Calibration.load(str(path), "k1") == cal
  assert costs.Calibration.load(str(path), "other settings") is None
  path.write_text(json.dumps(dict(dataclasses.asdict(cal), retired_field=1)))
  assert costs.Calibration.load(str(path), "k1") is None  # another version's: measured again
  path.write_text("{damaged")  # not silently measured again: the runs here used its choice
  with pytest.raises(ConfigError, match=r"calibration.json is damaged \(JSONDecodeError"):
    costs.Calibration.load(str(path), "k1")
  with pytest.raises(ValueError, match="different batch sizes"):
    costs.calibrate(state, ds, ((4, 8), (4, 16)))


def test_num_buckets_auto_is_a_config_value_and_nothing_else_is():
  cfg = compare.get_config("smoke")
  cfg.strategy.bucket.num_buckets = "auto"
  config.validate_config(cfg)
  for bad in ("many", 0):
    cfg.strategy.bucket.num_buckets = bad
    with pytest.raises(ConfigError, match="integer >= 1 or 'auto'"):
      config.validate_config(cfg)


def test_resolve_auto_buckets_uses_the_saved_calibration(tmp_path):
  """The runner's "auto": the chosen count replaces "auto" in the config (so results and
  checkpoints record it), from a calibration saved in the workdir and read back there."""
  cfg = compare.get_config("smoke")
  cfg.strategy.bucket.num_buckets = "auto"
  train_ds, _, _ = runner_data.split_data(cfg)
  key = costs.calibration_key(cfg, train_ds)
  _cal().__class__(**dict(vars(_cal()), key=key)).save(str(tmp_path / "calibration.json"))
  resolved, record = recommend.resolve_auto_buckets(cfg, train_ds, str(tmp_path))
  n = resolved.strategy.bucket.num_buckets
  assert isinstance(n, int) and record["chosen"] == n and record["calibration"]["key"] == key
  assert record["calibration"]["compile_seconds"] == 1.0  # the saved one, not a new one
  best = min(record["predictions"], key=lambda r: r["total_seconds"])
  assert best["num_buckets"] == n


@pytest.mark.xdist_group("smoke")
def test_recommender_against_a_real_run(tmp_path, smoke_run):
  """The recommender (experiment.recommend, what experiments/recommend.py prints) on the smoke
  config, against the shared smoke run of the same config: the predicted steps, compiles and
  padding are what the run did, exactly; and where the prediction says one strategy takes over
  twice as long as another (compiles included: here pad_batch_max's several compiles against
  tbptt's one), the run's wall times agree on the order (times themselves are the machine's).
  The smoke run's calibration (same model, data and machine) is the recommender's: it is read,
  not measured again (a calibration's own measuring is the smoke run's)."""
  workdir, _ = smoke_run
  shutil.copy(workdir / "calibration.json", tmp_path / "calibration.json")
  saved = (tmp_path / "calibration.json").read_bytes()
  cfg = compare.get_config("smoke")
  cfg.strategies = ("pad", "bucket", "tbptt", "pad_batch_max")
  result = recommend.run_recommender(cfg, str(tmp_path))
  text = recommend.recommendation_text(result)
  assert "Recommended: " in text and "| " not in text.splitlines()[0]
  # the runner's before-training lines: pad_batch_max's steps make it not comparable
  assert "Note: not comparable as set: pad_batch_max plans" in text
  assert all(not n.startswith("not comparable") or "pad_batch_max" in n for n in result["notes"])
  assert (tmp_path / "calibration.json").read_bytes() == saved
  pred_names = ("pad", "bucket", "tbptt", "pad_batch_max")
  assert result["recommended"] in pred_names and result["reason"]
  rows = {r["strategy"]: r for r in json.loads((workdir / "runs.json").read_text())}
  pred = {p["strategy"]: p for p in result["predictions"]}
  for name, p in pred.items():
    r = rows[name]
    assert (p["steps"], p["shapes"]) == (r["steps"], r["compiles"]["train"]), name
    assert p["padding_fraction"] == pytest.approx(r["padding_fraction"]), name
    assert p["truncates_gradients"] == (name == "tbptt")
  pairs = [
    (a, b) for a in pred for b in pred if pred[a]["total_seconds"] > 2 * pred[b]["total_seconds"]
  ]
  assert ("pad_batch_max", "tbptt") in pairs  # its many compiles against tbptt's one
  for a, b in pairs:
    assert rows[a]["wall_seconds"] > rows[b]["wall_seconds"], (a, b, pred[a], pred[b])


def test_recommender_prefers_exact_gradients_for_sequence_labels_unless_told():
  """Tbptt was recommended for sequence-level labels on speed alone; with
  exact_gradients (the runner's choice for sequence-level labels unless
  config.truncation_ok) the fastest exact strategy is recommended, and the sentence says why
  and how to allow truncation."""

  def pred(name, seconds, truncates):
    return dict(
      strategy=name,
      total_seconds=seconds,
      truncates_gradients=truncates,
      shapes=2,
      compile_seconds=1.0,
      train_seconds=seconds - 1.0,
      padding_fraction=0.1,
    )

  preds = [pred("tbptt", 10.0, True), pred("bucket", 14.0, False), pred("pad", 20.0, False)]
  assert costs.recommend(preds)[0] == "tbptt"
  best, why = costs.recommend(preds, exact_gradients=True)
  assert best == "bucket"
  assert "fastest strategy with exact gradients" in why and "--config.truncation_ok=True" in why
  assert costs.recommend(preds[1:], exact_gradients=True)[0] == "bucket"


def test_predicted_step_memory_is_never_below_its_per_token_part():
  """A memory line fitted on large steps can cross zero before the smallest: the recommender
  printed `step MiB -9` for a 50-sequence benchmark's bucket row."""
  cal = costs.Calibration(1.0, 1e-4, 1e-5, -10e6, 100.0, key="test")
  assert cal.step_memory(4, 100) == 100.0 * 4 * 100  # the line would give -9.96e6
  assert cal.step_memory(1000, 1000) == 100.0 * 1e6
  assert _cal().step_memory(4, 100) == 1e6 + 100.0 * 4 * 100  # a positive intercept: the line
