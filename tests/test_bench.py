"""The throughput benchmark's machinery on a tiny workload (its figures come from the real run:
experiments/benchmark.py; no test here times anything)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import subprocess_env
from lstm_jax import host
from lstm_jax.benchmark import measure as bench

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import benchmark as benchmark_config  # noqa: E402


def test_workload_matches_its_spec():
  cfg = benchmark_config.get_config()
  ds = bench.workload(cfg)
  assert len(ds) == 4096 and ds.lengths.min() >= 8 and ds.lengths.max() <= 512
  assert 55 <= np.median(ds.lengths) <= 75 and ds.num_features == 32
  assert bench.flops_per_token(32, 256) == 3 * 2 * 4 * 256 * 288


@pytest.mark.fresh_processes
def test_quick_benchmark_writes_rows_and_files(tmp_path):
  """The quick preset through the real command line (a subprocess with XLA's optimizations
  mostly off: what is checked is the report's structure, not the speeds)."""
  cfg = benchmark_config.get_config("quick")
  from lstm_jax.benchmark import sections

  sections.put(str(tmp_path / "BENCHMARKS.md"), "data-scale", "## Data at scale\n\nfigures\n")
  proc = subprocess.run(
    [
      sys.executable,
      str(ROOT / "experiments" / "benchmark.py"),
      "--config",
      f"{ROOT / 'configs' / 'benchmark.py'}:quick",
      "--out",
      str(tmp_path / "BENCHMARKS.md"),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    env=subprocess_env(),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = result = json.loads((tmp_path / "benchmark.json").read_text())
  names = [r["name"] for r in saved["rows"]]
  for s in ("pad", "bucket", "tbptt", "pack"):
    assert any(n.startswith(f"lstm_jax {s} ") for n in names), s
  assert "flax nn.RNN pow2 buckets" in names
  has_torch = importlib.util.find_spec("torch") is not None
  assert ("torch nn.LSTM packed" in names) == has_torch
  rows = {r["name"]: r for r in saved["rows"]}
  assert rows["lstm_jax pad (in_step)"]["compiles"] == 1
  assert rows["lstm_jax tbptt (in_step)"]["compiles"] == 1
  assert rows["lstm_jax bucket (in_step)"]["compiles"] == len(saved["bucket_boundaries"])
  assert all(
    r["tokens_per_second"] > 0 and len(r["pass_seconds"]) == cfg.repeats for r in saved["rows"]
  )
  assert result["roofline_tokens_per_second"] > 0
  assert [m["length"] for m in saved["memory"]] == [cfg.max_length]
  assert "| run | real tok/s" in (tmp_path / "BENCHMARKS.md").read_text()
  assert "## Targets" in (tmp_path / "BENCHMARKS.md").read_text()
  # the rewrite keeps the data-scale benchmark's section, once, at the end
  assert (
    (tmp_path / "BENCHMARKS.md")
    .read_text()
    .endswith(
      "<!-- section:data-scale -->\n## Data at scale\n\nfigures\n<!-- /section:data-scale -->\n"
    )
  )
  assert result["scan_gemm_floor_tokens_per_second"] > 0
  assert any(n.startswith("lstm_jax bucket_packed_rows") for n in names)
  # processed tokens/s beside real ones; a peer that cannot run here and torch's oneDNN said
  from lstm_jax.benchmark import suite

  onednn = dict(
    torch="2.13.0",
    onednn_version="3.12.0",
    mkldnn_available=True,
    lstm_float32=["rnn ref"],
    lstm_bfloat16="failed (no primitive)",
  )
  shown = suite.markdown(
    dict(saved, skipped_peers={"torch_bucket_bf16": "no primitive"}, torch_onednn=onednn)
  )
  assert "| real tok/s (median) | processed tok/s |" in shown
  assert "Skipped peer `torch_bucket_bf16`: no primitive." in shown
  assert "oneDNN 3.12.0" in shown and "`rnn ref` in float32 and failed (no primitive)" in shown
  pad = rows["lstm_jax pad (in_step)"]
  processed = pad["tokens_per_second"] / (1 - pad["padding_fraction"])
  assert f"| lstm_jax pad (in_step) | {pad['tokens_per_second']:,.0f} | {processed:,.0f} |" in shown

  def fastest(kind, dtype=None, cell="lstm"):
    return max(
      (
        r
        for r in saved["rows"]
        if r["extra"]["kind"] == kind
        and dtype in (None, r["extra"]["matmul_dtype"])
        and r["extra"]["cell"] == cell
      ),
      key=lambda r: r["tokens_per_second"],
    )

  assert rows["lstm_jax tbptt (in_step, bfloat16 matmuls)"]["extra"]["matmul_dtype"] == "bfloat16"
  assert rows["flax nn.RNN pow2 buckets, bfloat16"]["extra"]["matmul_dtype"] == "bfloat16"
  assert rows["lstm_jax tbptt (in_step)"]["extra"]["matmul_dtype"] == "float32"
  # best float32 row against the best float32 peer, side by side, per round (the targets) ...
  paired = saved["paired"]
  assert paired["rounds"] == cfg.paired_rounds == len(paired["speedups"])
  assert paired["ours"] == fastest("ours", "float32")["name"]
  assert paired["peer"] == fastest("peer", "float32")["name"]
  assert paired["speedup"] == float(np.median(paired["speedups"])) and paired["speedup"] > 0
  # ... and the best bfloat16 row against the best peer in any precision
  low = saved["paired_bfloat16"]
  assert (
    low["ours"] == fastest("ours", "bfloat16")["name"] and low["peer"] == fastest("peer")["name"]
  )
  # the GRU against Flax's nn.RNN(GRUCell), its roofline from 3 gate blocks
  gru = saved["paired_gru"]
  assert gru["ours"] == fastest("ours", cell="gru")["name"] == "lstm_jax tbptt (GRU)"
  assert gru["peer"] == fastest("peer", cell="gru")["name"] == "flax nn.RNN(GRUCell) pow2 buckets"
  assert rows["lstm_jax tbptt (GRU)"]["compiles"] == 1
  gru_row = rows["lstm_jax tbptt (GRU)"]
  assert gru_row["roofline_fraction"] == pytest.approx(
    gru_row["tokens_per_second"] * 0.75 / result["roofline_tokens_per_second"]
  )
  text = (tmp_path / "BENCHMARKS.md").read_text()
  assert "| GRU >= 1.5x Flax's nn.RNN(GRUCell) in pow2 buckets |" in text
  assert "one epoch of W from a cold start" in text
  # lstm_jax.runner.costs' predictions beside the measured rows
  cm = saved["cost_model"]
  assert {x["name"] for x in cm["rows"]} >= {"lstm_jax tbptt (in_step)", "lstm_jax pad (in_step)"}
  assert all(x["predicted_pass_seconds"] > 0 for x in cm["rows"])
  assert (
    "Cost model (`lstm_jax.runner.costs`" in text and "| cost model: predicted step time" in text
  )
  fit = saved["fit_overhead"][0]
  assert fit["strategy"] == "tbptt" and len(fit["ratios"]) == cfg.paired_rounds
  assert "| loop.fit loses <= 3% against the pre-assembled passes" in text
  assert "Side by side, float32 against float32" in text and "Side by side, bfloat16" in text
  assert "| best strategy >= 2x the best peer (bfloat16 matmuls" in text
  assert saved["versions"]["malloc"]["tuned"] == (host.libc().startswith("glibc"))
  alloc = saved["allocator"]  # the best manual row and the best peer, fresh processes per arm
  best = max(
    (
      r
      for r in saved["rows"]
      if r["extra"]["kind"] == "ours"
      and r["extra"]["backward"] == "manual"
      and r["extra"]["matmul_dtype"] == "float32"
      and r["extra"]["cell"] == "lstm"
    ),
    key=lambda r: r["tokens_per_second"],
  )
  assert (alloc["ours"], alloc["projection"]) == (
    best["extra"]["key"],
    best["extra"]["input_projection"],
  )
  for arm in ("default", "tuned"):
    runs = alloc["runs"][arm]
    assert len(runs) == cfg.malloc_probe_rounds and all(r["ours"] > 0 for r in runs)
    assert all(
      r["malloc"]["tuned"] == (arm == "tuned" and saved["versions"]["malloc"]["tuned"])
      for r in runs
    ), (arm, runs)
    assert alloc[arm]["ours"] == float(np.median([r["ours"] for r in runs]))
  assert "| default |" in (tmp_path / "BENCHMARKS.md").read_text()


@pytest.mark.fresh_processes
def test_persistent_compilation_cache_is_filled_then_read(tmp_path):
  """Fresh processes compile the same steps with one cache directory: the first writes JAX's
  cache entries and lstm_jax's executables; a second reading JAX's cache alone adds no entry; a
  third loads every executable from the executable cache. Times are the benchmark's."""
  cfg = dict(benchmark_config.get_config("quick").to_dict(), num_buckets=2)  # 2 shapes suffice
  cache = tmp_path / "cache"
  entries, runs = [], []
  for executables in (True, False, True):
    got = bench.compile_probe_in_subprocess(cfg, str(cache), executables=executables)
    assert got["compiles"] == cfg["num_buckets"]
    runs.append(got)
    entries.append(
      sorted(p.name for p in cache.iterdir())
      + sorted(p.name for p in (cache / "executables").iterdir())
    )
  assert any("train_step" in e for e in entries[0])
  assert sum(e.endswith(".xla") for e in entries[0]) == cfg["num_buckets"]
  assert entries[1] == entries[0] and entries[2] == entries[0]  # nothing compiled anew
  assert [r["cache_loads"] for r in runs] == [0, 0, cfg["num_buckets"]]


def test_a_benchmarks_section_is_replaced_in_place_and_kept_by_a_rewrite(tmp_path):
  """BENCHMARKS.md's data-scale section: benchmark_data.py replaces it in place (the text
  around it untouched, one copy however often it runs), and benchmark.py's rewrite of the
  whole file keeps it (report.run appends `sections.kept`: test_quick_benchmark_... checks)."""
  from lstm_jax.benchmark import sections

  path = str(tmp_path / "BENCHMARKS.md")
  with open(path, "w") as f:
    f.write("# Benchmarks\n\ntable\n")
  sections.put(path, "data-scale", "## Data at scale\n\nold figures\n")
  sections.put(path, "data-scale", "## Data at scale\n\nnew figures\n")
  text = open(path).read()
  assert text.startswith("# Benchmarks\n\ntable\n\n<!-- section:data-scale -->\n")
  assert text.count("section:data-scale -->") == 2 and "old" not in text and "new figures" in text
  kept = sections.kept(path)
  assert kept.endswith("<!-- /section:data-scale -->\n") and "new figures" in kept
  assert "table" not in kept and sections.kept(str(tmp_path / "absent.md")) == ""


def test_the_keras_peer_trains_in_the_buckets_it_is_given():
  """Keras 3's LSTM (JAX backend) as a peer: every batch of the pass trained, its padding
  counted, one compile per batch shape (a bucket's last batch has fewer rows: empty rows are
  left out); an optional peer, skipped without keras."""
  import os

  os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is first imported
  pytest.importorskip("keras", reason="optional peer: pip install keras")
  from lstm_jax import batching
  from lstm_jax.benchmark import measure

  cfg = benchmark_config.get_config("quick")
  ds = measure.workload(cfg)
  strategy = batching.Bucket(ds, batch_size=cfg.batch_size, boundaries=[8, 16, 32])
  import jax

  with jax.numpy_rank_promotion("allow"):  # keras broadcasts implicitly; the suite forbids it
    t = measure.time_keras("keras", strategy, cfg)
  batches = list(measure._pass_batches(strategy, cfg.tokens_per_pass))
  assert t.real_tokens == sum(p.real_tokens for p, _ in batches)
  rows = [int(b.mask.any(axis=1).sum()) for _, b in batches]
  assert t.computed_tokens == sum(r * b.mask.shape[1] for r, (_, b) in zip(rows, batches))
  shapes = {(r, b.mask.shape[1]) for r, (_, b) in zip(rows, batches)}  # jit retraces per shape
  assert t.compiles == len(shapes) and t.tokens_per_second > 0


def test_no_paired_rounds_skips_the_paired_figures_and_fit_overhead():
  """--config.paired_rounds=0 (no medians to take): the paired rows and fit's overhead are
  left out instead of failing on a median of nothing (it did, before 2026-12-07)."""
  from lstm_jax.benchmark import suite

  cfg = benchmark_config.get_config()
  cfg.paired_rounds = 0
  cfg.fit_overhead_rows = ("tbptt",)
  assert suite._paired_rows(cfg, [], []) == (None, None, None)
  assert suite._fit_overheads(cfg, {}) == []  # no strategy needed: nothing is timed


def test_step_profile_sorts_ops_by_where_they_run(tmp_path):
  """lstm_jax.benchmark.profile on a scan with a GEMM inside the loop and one after it: the
  compiled HLO's ops are sorted into GEMMs in the loop, GEMMs outside, elementwise and data
  movement (a zero-filled buffer is movement), and the trace's events are found per op; the
  categories' sum is the traced op time (the figures themselves are the benchmark's)."""
  import jax
  import jax.numpy as jnp

  from lstm_jax.benchmark import profile

  def f(w, v, xs):
    def body(h, x):
      h = jnp.tanh(h @ w + x)
      return h, h

    hs = jax.lax.scan(body, jnp.zeros((8, 16)), xs)[1]
    return (hs.reshape(-1, 16) @ v).sum()

  g = jax.jit(jax.grad(f, argnums=(0, 1)))
  args = (jnp.ones((16, 16)) * 0.1, jnp.ones((16, 4)), jnp.ones((12, 8, 16)))
  compiled = g.lower(*args).compile()
  ops = profile.hlo_ops(compiled.as_text())
  cats = {op["category"] for op in ops.values()}
  assert {"gemm_loop", "gemm_outside", "movement", "container"} <= cats
  assert any(op["category"].startswith("elementwise") for op in ops.values())
  fused_moves = [
    op for op in ops.values() if op["opcode"] == "fusion" and op["category"] == "movement"
  ]
  assert fused_moves  # e.g. the zero-filled buffer the scan's outputs are written into
  loop_gemms = [n for n, op in ops.items() if op["category"] == "gemm_loop"]
  assert loop_gemms and all(ops[n]["computation"] != "main" for n in loop_gemms)
  module = __import__("re").search(r"HloModule ([\w.\-]+)", compiled.as_text()).group(1)
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    jax.block_until_ready(compiled(*args))
  seconds = profile.trace_op_seconds(str(tmp_path), module)
  assert seconds and set(seconds) <= set(ops)  # every traced op is one of the module's
  assert any(ops[n]["category"] == "gemm_loop" for n in seconds)


def test_speed_candidates_are_timed_side_by_side_against_the_default():
  """lstm_jax.benchmark.candidates on the quick workload: the default first (ratio 1 in every
  round, by construction), each candidate's ratios per round, and the markdown's rows."""
  from lstm_jax.benchmark import candidates

  cfg = benchmark_config.get_config("quick")
  r = candidates.run(cfg, rounds=2, candidates=candidates.CANDIDATES[:1])
  assert [row["name"] for row in r["rows"]][1] == candidates.CANDIDATES[0][0]
  assert r["rows"][0]["ratios"] == [1.0, 1.0]
  assert r["rows"][1]["settings"]["input_projection"] == "hoisted"
  assert all(len(row["samples"]) == 2 and row["tokens_per_second"] > 0 for row in r["rows"])
  text = candidates.markdown(r, "a CPU")
  assert "| input projection hoisted over the chunk |" in text and "a CPU" in text
  # the test process's allocator is untouched (tuning is the mains' call), and the report says so
  assert r["malloc"]["tuned"] is False
  assert "allocator at its defaults" in text and "unlike the benchmark's rows" in text


def test_xla_option_children_take_the_parent_s_allocator(monkeypatch):
  """Each XLA-option child tunes its allocator exactly when the parent did (the mains tune it as
  the benchmark's rows run), so the option and the default are timed under the same allocator."""
  from lstm_jax import host
  from lstm_jax.benchmark import candidates
  from lstm_jax.benchmark import measure as bench

  seen = []

  def child(module, function, kwargs, tune_malloc=False):
    seen.append(tune_malloc)
    return dict(rates=[1.0], malloc=dict(tuned=tune_malloc))

  monkeypatch.setattr(bench, "in_subprocess", child)
  cfg = benchmark_config.get_config("quick")
  for tuned in (True, False):
    monkeypatch.setattr(host, "malloc_state", lambda t=tuned: dict(tuned=t, libc="glibc"))
    seen.clear()
    r = candidates.run_xla_options(cfg, rounds=1, options=candidates.XLA_OPTIONS[:2], passes=1)
    assert seen == [tuned] * 3 and len(r["rows"]) == 3


def test_an_xla_option_reaches_its_process_and_its_row(monkeypatch):
  """The XLA-option candidate: its child adds the flag to XLA_FLAGS (here in process, where the
  backend already started, so only the plumbing is checked; the benchmark runs each in a fresh
  process) and times passes; the report has a row per option with its flag."""
  from lstm_jax.benchmark import candidates

  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
  cfg = benchmark_config.get_config("quick")
  got = candidates.xla_option_child(cfg.to_dict(), "--xla_cpu_use_xnnpack=false", passes=2)
  assert got["flags"] == "--xla_cpu_use_fusion_emitters=false --xla_cpu_use_xnnpack=false"
  assert len(got["rates"]) == 2 and all(x > 0 for x in got["rates"])
  rows = [
    dict(name=n, settings=dict(xla_flags=f), tokens_per_second=1000.0, ratio_to_default=r)
    for (n, f), r in zip([("default", ""), candidates.XLA_OPTIONS[2]], (1.0, 1.033))
  ]
  r = dict(workload=dict(batch=1, chunk=2, features=3, hidden=4), rounds=1, rows=[])
  r["real_tokens_per_pass"] = 10
  r["xla_options"] = dict(rounds=2, passes=3, rows=rows)
  text = candidates.markdown(r, "a CPU")
  assert "| XNNPACK off (Eigen's dots) | `--xla_cpu_use_xnnpack=false` | 1,000 | 1.033 |" in text
  assert "| default | - | 1,000 | 1.000 |" in text


def test_a_benchmark_report_is_written_with_its_json_and_as_a_section(tmp_path):
  """sections.write_report: the json beside the markdown, and the same report one heading down
  as a named section of the summary, replaced (not repeated) by a rerun, the summary's other
  text kept."""
  from lstm_jax.benchmark import sections

  out, summary = tmp_path / "run" / "P.md", tmp_path / "B.md"
  out.parent.mkdir()
  summary.write_text("# Benchmarks\n\nthe main run\n")
  for figure in (1, 2):
    text = sections.write_report(
      str(out),
      dict(x=figure),
      "Title",
      f"figure {figure}\n",
      json_name="p.json",
      summary=str(summary),
      section="prof",
    )
  assert text == out.read_text() == "# Title\n\nfigure 2\n"
  assert json.loads((out.parent / "p.json").read_text()) == dict(x=2)
  got = summary.read_text()
  assert got.startswith("# Benchmarks\n\nthe main run\n") and got.count("section:prof -->") == 2
  assert "## Title\n\nfigure 2\n\nFiles: [run/P.md](run/P.md).\n" in got and "figure 1" not in got
