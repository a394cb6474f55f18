"""Data at scale: the store's writer, planning every strategy from lengths alone, training on a
corpus larger than the memory the process may use, and a store against the same data in memory.

    python experiments/benchmark_data.py --out benchmarks/DATE-data-scale/BENCHMARKS.md

Parts (each its own fresh process, so one part's memory never shows in another's):

- writer: a synthetic token corpus (log-normal lengths, median `median`, uint16 ids) written
  through `StoreWriter`: MB/s and the writer's peak anonymous memory (RssAnon, not page cache).
- plan: for 100k, 1M and 10M sequences of that store (index lists over it), each strategy's
  construction and first epoch's plan: seconds, the plan's own bytes per sequence (its arrays'
  sizes) and the process's RssAnon growth while planning (peak and retained).
- larger_than_memory: a second store of documents at least 4x a memory cgroup's limit trains
  under tbptt, pack and bucket for a few steps inside that cgroup; RssAnon at the end and the
  cgroup's peak usage. Needs root and cgroup v1 memory (skipped with the reason otherwise).
- fit: `loop.fit` on the same data from a store and from memory, side by side in alternating
  rounds (medians), with the store's page cache warm and dropped (cold).
- parquet: an uncompressed Parquet file of token ids and labels, larger than a memory cgroup's
  limit, written into a store by `prepare_store("parquet")` inside that cgroup (pyarrow needed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

from lstm_jax.benchmark import sections
from lstm_jax.benchmark.data_scale_report import PLAN_ROUNDS, markdown
from lstm_jax.environment import versions
from lstm_jax.files import write_json_atomically, write_text_atomically

ALL_PARTS = ("writer", "plan", "open", "long_documents", "larger_than_memory", "fit", "parquet")


def rss_anon() -> int:
  """This process's anonymous resident memory in bytes (RssAnon: not the page cache)."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("RssAnon:"):
        return int(line.split()[1]) * 1024
  raise OSError("RssAnon not in /proc/self/status")


class PeakAnon:
  """The highest RssAnon seen while the block runs (sampled every 5 ms in a thread)."""

  def __enter__(self):
    self.start = self.peak = rss_anon()
    self._stop = threading.Event()

    def watch():
      while not self._stop.wait(0.005):
        self.peak = max(self.peak, rss_anon())

    self._thread = threading.Thread(target=watch, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_anon())
    self.end = rss_anon()


def synthetic_blocks(num: int, median: float, sigma: float, max_len: int, vocab: int, seed: int):
  """`num` token records with log-normal lengths, 65,536 at a time: (flat ids, lengths)."""
  rng = np.random.default_rng(seed)
  block = 1 << 16
  for s in range(0, num, block):
    n = min(block, num - s)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 2, max_len).astype(int)
    yield rng.integers(0, vocab, size=int(lengths.sum()), dtype=np.uint16), lengths


def part_writer(out: str, num: int, median: float, sigma: float, max_len: int) -> dict:
  from lstm_jax import store

  with PeakAnon() as mem:
    t0 = time.perf_counter()
    with store.StoreWriter(out, store.StoreSchema(vocab_size=1000)) as writer:
      for flat, lengths in synthetic_blocks(num, median, sigma, max_len, 1000, 0):
        writer.add_many(flat, lengths)
    meta = store.read_meta(out)
    seconds = time.perf_counter() - t0
  size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
  return dict(
    records=meta["num_records"],
    values=meta["num_values"],
    bytes_on_disk=size,
    seconds=seconds,
    mb_per_second=size / 1e6 / seconds,
    peak_anon_growth_bytes=mem.peak - mem.start,
    note="the generator's own blocks (65,536 records at a time) are part of the peak",
  )


def part_parquet_writer(out: str, num: int, median: float, sigma: float, max_len: int) -> dict:
  """A Parquet file of `num` rows of token ids (list<uint16>) and an int label, written a block
  at a time (pyarrow's ParquetWriter), uncompressed and without dictionaries, so its size on
  disk is its data's."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  schema = pa.schema([("tokens", pa.list_(pa.uint16())), ("label", pa.int32())])
  rng = np.random.default_rng(1)
  with pq.ParquetWriter(out, schema, compression="none", use_dictionary=False) as w:
    for flat, lengths in synthetic_blocks(num, median, sigma, max_len, 1000, 0):
      offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
      tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
      labels = pa.array(rng.integers(0, 10, size=len(lengths)), pa.int32())
      w.write_table(pa.table([tokens, labels], schema=schema), row_group_size=8192)
  return dict(bytes=os.path.getsize(out))


def part_parquet_prepare(path: str, out: str) -> dict:
  """prepare_store("parquet") on the file (run inside the memory cgroup), timed."""
  from lstm_jax import prepare

  with PeakAnon() as mem:
    t0 = time.perf_counter()
    meta = prepare.prepare_store("parquet", path, out, overwrite=True)
    seconds = time.perf_counter() - t0
  return dict(
    records=meta["num_records"],
    values=meta["num_values"],
    seconds=seconds,
    mb_per_second=os.path.getsize(path) / 1e6 / seconds,
    anon_peak_growth_bytes=mem.peak - mem.start,
    anon_start_bytes=mem.start,
  )


def parquet(work: str, cfg: dict) -> dict:
  """A Parquet file larger than a memory cgroup's limit written into a store inside it."""
  try:
    import pyarrow  # noqa: F401
  except ImportError:
    return dict(skipped="needs pyarrow (pip install 'lstm_jax[parquet]')")
  path = os.path.join(work, "tokens.parquet")
  if not os.path.exists(path):
    _run_part(
      [
        "parquet_writer",
        path,
        str(cfg["records"]),
        str(cfg["median"]),
        str(cfg["sigma"]),
        str(cfg["max_len"]),
      ]
    )
  limit = int(cfg["memory_limit"])
  ran = _part_in_cgroup(["parquet_prepare", path, os.path.join(work, "from_parquet")], limit, work)
  if ran is None:
    return dict(skipped=NO_CGROUP)
  got, peak, failcnt = ran
  size = os.path.getsize(path)
  return dict(
    got,
    file_bytes=size,
    memory_limit_bytes=limit,
    file_over_limit=size / limit,
    cgroup_peak_bytes=peak,
    cgroup_limit_hits=failcnt,
  )


def part_open(store_dir: str, reads: int, verify: bool) -> dict:
  """Opens the store (its page cache dropped first) and reads `reads` random records twice:
  opening checks the metadata, the offsets and a fixed sample of chunks (verify); the first
  read checks each chunk it touches against its checksum (verify), the second finds them
  checked."""
  from lstm_jax import store

  drop_page_cache(store_dir)
  with PeakAnon() as mem:
    t0 = time.perf_counter()
    ds = store.open_store(store_dir, verify=verify)
    seconds = time.perf_counter() - t0
  pick = np.random.default_rng(0).choice(len(ds), size=min(reads, len(ds)), replace=False)
  timed = []
  for _ in range(2):
    t0 = time.perf_counter()
    for i in pick:
      ds.sequence(int(i))
    timed.append(time.perf_counter() - t0)
  meta = store.read_meta(store_dir)
  return dict(
    verify=verify,
    records=len(ds),
    lengths_bytes=ds.lengths.nbytes,
    bytes_on_disk=sum(os.path.getsize(os.path.join(store_dir, f)) for f in os.listdir(store_dir)),
    open_seconds=seconds,
    open_anon_growth_bytes=mem.end - mem.start,
    open_anon_peak_growth_bytes=mem.peak - mem.start,
    checksummed_chunks=sum(meta["checksums"]["chunks"].values()),
    reads=len(pick),
    first_read_seconds=timed[0],
    second_read_seconds=timed[1],
  )


def plan_cases() -> dict:
  """The strategies planned, at 8,192 real tokens a step (the runner's default)."""
  from lstm_jax import batching as b

  return {
    "tbptt": lambda d: b.TBPTT(d, tokens_per_step=8192, chunk_length=64),
    "vbptt": lambda d: b.VariableTBPTT(d, tokens_per_step=8192, base_length=64),
    "pack": lambda d: b.Pack(d, tokens_per_step=8192, row_length=1024),
    "bucket": lambda d: b.Bucket(d, tokens_per_step=8192, num_buckets=8),
    "bucket_packed_rows": lambda d: b.Bucket(
      d, tokens_per_step=8192, num_buckets=8, pack_rows=True
    ),
    "pad": lambda d: b.Pad(d, tokens_per_step=8192),
  }


def plan_bytes(strategy) -> int:
  """Bytes the strategy holds for its plan: its construction arrays (rows, bins, bucket of
  each sequence) and the epoch plan's arrays."""
  from lstm_jax import batching

  def nbytes(x) -> int:
    if isinstance(x, np.ndarray):
      return x.nbytes
    if isinstance(x, batching.Rows):
      return sum(nbytes(a) for a in (x.members, x.offsets, x.bucket))
    if isinstance(x, batching.EpochPlan):
      return sum(nbytes(v) for v in vars(x).values() if v is not strategy.dataset.lengths)
    return 0

  held = [v for k, v in vars(strategy).items() if k not in ("dataset", "_plans")]
  return sum(nbytes(v) for v in held) + nbytes(strategy.plan(0))


def part_plan(store_dir: str, num: int, names: list[str]) -> dict:
  from lstm_jax import store

  ds = store.open_store(store_dir)
  ds = ds.subset(np.arange(num)) if num < len(ds) else ds
  out = {}
  for name in names:
    times = []
    for r in range(PLAN_ROUNDS):  # memory from the first round, the median time of all
      with PeakAnon() as m:
        t0 = time.perf_counter()
        strategy = plan_cases()[name](ds)
        plan = strategy.plan(0)
        times.append(time.perf_counter() - t0)
      if r == 0:
        mem = m
      if r < PLAN_ROUNDS - 1:
        del strategy, plan
    b = plan_bytes(strategy)
    out[name] = dict(
      sequences=len(ds),
      batches=len(plan),
      seconds=float(np.median(times)),
      seconds_each=times,
      plan_bytes_per_sequence=b / len(ds),
      anon_peak_growth_bytes=mem.peak - mem.start,
      anon_retained_bytes=mem.end - mem.start,
    )
    del strategy, plan
  return out


def part_train_in_cgroup(store_dir: str, strategies: list[str], steps: int) -> dict:
  """Trains each strategy for `steps` steps on the store (run inside the memory cgroup)."""
  import optax

  from lstm_jax import batching, loop, store, train
  from lstm_jax.model import SequenceModel

  ds = store.open_store(store_dir)
  top = int(ds.lengths.max())
  makers = {
    "tbptt": lambda: batching.TBPTT(ds, num_streams=32, chunk_length=128),
    "pack": lambda: batching.Pack(ds, batch_size=4, row_length=top),
    "bucket": lambda: batching.Bucket(ds, tokens_per_step=8192, num_buckets=4),
  }
  out = {}
  model = SequenceModel(
    64, num_outputs=int(ds.num_classes or 0), vocab_size=ds.vocab_size, embed_dim=16
  )
  for name in strategies:
    state = train.create_train_state(model, optax.adam(1e-3), ds)
    t0 = time.perf_counter()
    with PeakAnon() as mem:
      strategy = makers[name]()
      budget = sum(int(strategy.plan(0).real_tokens[i]) for i in range(steps))
      result = loop.fit(state, strategy, real_tokens=budget)
    out[name] = dict(
      steps=len(result.history),
      real_tokens=result.real_tokens,
      seconds=time.perf_counter() - t0,
      anon_end_bytes=mem.end,
      anon_peak_bytes=mem.peak,
      final_loss=result.history[-1]["loss"],
    )
  return out


def part_long_documents_writer(out: str, num: int, median: float, sigma: float) -> dict:
  """A next-token byte store of `num` whole documents, log-normal lengths (median bytes)."""
  from lstm_jax import store

  rng = np.random.default_rng(1)
  t0 = time.perf_counter()
  with store.StoreWriter(out, store.StoreSchema(vocab_size=256)) as writer:
    for s in range(0, num, 256):
      n = min(256, num - s)
      lengths = np.maximum(2, np.round(rng.lognormal(np.log(median), sigma, n))).astype(np.int64)
      writer.add_many(rng.integers(32, 127, size=int(lengths.sum()), dtype=np.uint8), lengths)
  meta = store.read_meta(out)
  return dict(
    records=meta["num_records"], values=meta["num_values"], seconds=time.perf_counter() - t0
  )


def part_runner_row(store_dir: str, workdir: str, bounded: bool) -> dict:
  """One runner row (tbptt, the default model) on a store of whole long documents, as
  `compare_strategies.py --config.data.source=store --config.data.max_length=0` runs it; with
  `bounded` False, evaluation as it was before it was bounded (every held-out sequence whole,
  no token cap). Run inside the memory cgroup."""
  sys.path.insert(0, os.getcwd())
  from configs import compare
  from lstm_jax.runner import experiment

  cfg = compare.get_config("default")
  cfg.data.update(source="store", path=store_dir, min_length=0, max_length=0)
  cfg.update(strategies=("tbptt",), predict_costs=False, plots=False, background_compiles=0)
  cfg.train.update(real_tokens=200_000, eval_every_tokens=200_000)
  cfg.checkpoint.enabled = False
  if not bounded:
    cfg.eval.update(chunk_length=0, max_tokens=0)
  t0 = time.perf_counter()
  with PeakAnon() as mem:
    (row,) = experiment.train_and_evaluate(cfg, workdir, quiet=True)
  meta = json.load(open(os.path.join(workdir, "meta.json")))
  return dict(
    bounded=bounded,
    seconds=time.perf_counter() - t0,
    steps=row["steps"],
    eval_loss=row["eval_loss"],
    eval_sequences=meta["data"]["eval_sequences"],
    eval_steps=meta["data"]["eval_steps"],
    eval_compiles=row["compiles"]["eval"],
    anon_peak_bytes=mem.peak,
  )


def long_documents(work: str, cfg: dict) -> dict:
  """A corpus of whole long documents larger than the memory cap: one runner row with the
  bounded evaluation, then one with evaluation as it was (whole held-out documents)."""
  docs = os.path.join(work, "long_documents")
  if not os.path.exists(os.path.join(docs, "meta.json")):
    _run_part(["long_writer", docs, str(cfg["records"]), str(cfg["median"]), str(cfg["sigma"])])
  size = sum(os.path.getsize(os.path.join(docs, f)) for f in os.listdir(docs))
  from lstm_jax import store

  lengths = store.open_store(docs).lengths
  out: dict[str, Any] = dict(
    corpus_bytes=size,
    records=len(lengths),
    longest=int(lengths.max()),
    median=float(np.median(lengths)),
    memory_limit_bytes=int(cfg["memory_limit"]),
    rows={},
  )
  for bounded in (True, False):
    group = memory_cgroup(int(cfg["memory_limit"]))
    if group is None:
      return dict(out, skipped=NO_CGROUP)
    drop_page_cache(docs)
    run = os.path.join(work, f"long_documents_run_{int(bounded)}")
    shutil.rmtree(run, ignore_errors=True)
    try:
      try:
        got = _run_part(["runner_row", docs, run, str(int(bounded))], cgroup=group)
      except RuntimeError as e:  # killed by the cgroup's OOM killer, say
        got = dict(bounded=bounded, failed=str(e).splitlines()[0])
      with open(os.path.join(group, "memory.max_usage_in_bytes")) as f:
        got["cgroup_peak_bytes"] = int(f.read())
      with open(os.path.join(group, "memory.failcnt")) as f:
        got["cgroup_limit_hits"] = int(f.read())
    finally:
      os.rmdir(group)
    out["rows"]["bounded" if bounded else "whole"] = got
    print("long_documents", got, flush=True)
  return out


def part_fit(store_dir: str, rounds: int, cold: bool) -> dict:
  """fit on the store and on the same data in memory, alternating, tbptt; medians of rounds."""
  import optax

  from lstm_jax import batching, data, loop, store, train
  from lstm_jax.model import SequenceModel

  st = store.open_store(store_dir)
  o = np.asarray(st.record_offsets)
  tokens = np.asarray(st.values)
  mem = data.next_token_dataset(
    [tokens[o[i] : o[i + 1]] for i in range(len(st))], vocab_size=int(st.vocab_size or 0)
  )
  model = SequenceModel(
    128, num_outputs=int(st.num_classes or 0), vocab_size=st.vocab_size, embed_dim=32
  )
  steps = train.StepFunctions.create()
  times: dict[str, list[float]] = {"memory": [], "store": [], "store_in_loop": []}
  runs = (("memory", mem, 2), ("store", st, 2), ("store_in_loop", st, 0))  # (kind, data, prefetch)
  for r in range(rounds + 1):
    for kind, ds, prefetch in runs:
      if cold and ds is st:
        drop_page_cache(store_dir)
      strategy = batching.TBPTT(ds, tokens_per_step=8192, chunk_length=64, seed=r)
      state = train.create_train_state(model, optax.adam(1e-3), ds)
      result = loop.fit(
        state, strategy, epochs=1, steps=steps, pipeline=loop.Pipeline(prefetch=prefetch)
      )
      if r:  # round 0 compiles: not timed
        steady = result.history[1:]
        times[kind].append(
          sum(h["real_tokens"] for h in steady) / sum(h["step_seconds"] for h in steady)
        )
  med = {k: statistics.median(v) for k, v in times.items()}
  paired = [s / m for s, m in zip(times["store"], times["memory"])]
  return dict(
    tokens_per_second=med,
    per_round=times,
    store_over_memory=med["store"] / med["memory"],
    paired_ratio_median=statistics.median(paired),
    store_in_loop_over_memory=med["store_in_loop"] / med["memory"],
    rounds=rounds,
    cold=cold,
  )


def drop_page_cache(store_dir: str) -> None:
  """Evicts the store's files from the page cache (posix_fadvise DONTNEED), so the next reads
  come from the disk."""
  for name in os.listdir(store_dir):
    fd = os.open(os.path.join(store_dir, name), os.O_RDONLY)
    try:
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def cpu_model() -> str:
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return "unknown"


def _run_part(args: list[str], cgroup: str | None = None) -> dict:
  """One part in a fresh Python process (in `cgroup`, if given); its JSON result."""
  cmd = [sys.executable, "-m", "lstm_jax.benchmark.data_scale", *args]
  if cgroup:
    cmd = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    raise RuntimeError(f"part {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_cgroup(limit: int) -> str | None:
  """A cgroup v1 memory group capped at `limit` bytes (swap too), or None if unavailable."""
  base = "/sys/fs/cgroup/memory"
  if not os.path.isdir(base) or os.geteuid() != 0:
    return None
  path = os.path.join(base, f"lstm_jax_bench_{os.getpid()}")
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
    f.write(str(limit))
  sw = os.path.join(path, "memory.memsw.limit_in_bytes")
  if os.path.exists(sw):
    with open(sw, "w") as f:
      f.write(str(limit))
  return path


NO_CGROUP = "needs root and cgroup v1 memory (/sys/fs/cgroup/memory)"


def _part_in_cgroup(args: list[str], limit: int, cache_dir: str) -> tuple[dict, int, int] | None:
  """One part run inside a fresh memory cgroup capped at `limit` bytes, `cache_dir`'s page
  cache dropped first: (its result, the cgroup's peak usage, its limit hits), or None where
  no cgroup can be made."""
  group = memory_cgroup(limit)
  if group is None:
    return None
  drop_page_cache(cache_dir)
  try:
    got = _run_part(args, cgroup=group)
    with open(os.path.join(group, "memory.max_usage_in_bytes")) as f:
      peak = int(f.read())
    with open(os.path.join(group, "memory.failcnt")) as f:
      failcnt = int(f.read())
  finally:
    os.rmdir(group)
  return got, peak, failcnt


def run(cfg: dict, out_md: str) -> dict:
  """All parts; writes results.json beside `out_md` and the markdown to `out_md`."""
  work = cfg.get("workdir") or tempfile.mkdtemp(prefix="lstm_jax_data_scale_")
  os.makedirs(work, exist_ok=True)
  results: dict = dict(versions=versions(), cpu=cpu_model(), config=cfg)
  parts = cfg.get("parts") or list(ALL_PARTS)
  part_cpus = {}  # which CPU each part's figures come from
  if cfg.get("parts"):  # the other parts as the last run left them
    with open(os.path.join(os.path.dirname(os.path.abspath(out_md)), "results.json")) as f:
      kept = json.load(f)
    results.update({k: v for k, v in kept.items() if k not in parts and k not in results})
    results["parts_rerun"] = parts
    results["earlier_parts"] = dict(cpu=kept.get("cpu"), versions=kept.get("versions"))
    part_cpus = dict(kept.get("part_cpus") or {p: kept.get("cpu") for p in ALL_PARTS if p in kept})
  results["part_cpus"] = dict(part_cpus, **{p: results["cpu"] for p in parts})
  corpus = os.path.join(work, "tokens")
  needs_corpus = {"writer", "plan", "open"} & set(parts)  # the other parts write their own
  if needs_corpus and not os.path.exists(os.path.join(corpus, "meta.json")):
    w = cfg["writer"]
    results["writer"] = _run_part(
      ["writer", corpus, str(w["records"]), str(w["median"]), str(w["sigma"]), str(w["max_len"])]
    )
  print("writer", results.get("writer"), flush=True)
  if "plan" in parts:
    results["plan"] = {}
    for n in cfg["plan_sizes"]:
      results["plan"][n] = _run_part(["plan", corpus, str(n), ",".join(cfg["plan_strategies"])])
      print("plan", n, results["plan"][n], flush=True)
  if "open" in parts:
    small = os.path.join(work, "tokens_tenth")
    if not os.path.exists(os.path.join(small, "meta.json")):
      w = cfg["writer"]
      tenth = str(w["records"] // 10)
      _run_part(["writer", small, tenth, str(w["median"]), str(w["sigma"]), str(w["max_len"])])
    results["open"] = [
      _run_part(["open", d, str(cfg["open_reads"]), str(int(verify))])
      for d in (small, corpus)
      for verify in (True, False)
    ]
    print("open", results["open"], flush=True)
  long_docs = cfg.get("long_documents")
  if long_docs and "long_documents" in parts:
    results["long_documents"] = long_documents(work, long_docs)
  big = cfg.get("larger_than_memory")
  if big and "larger_than_memory" in parts:
    results["larger_than_memory"] = larger_than_memory(work, big)
    print("larger_than_memory", results["larger_than_memory"], flush=True)
  fit = cfg.get("fit")
  if fit and "fit" in parts:
    small = os.path.join(work, "fit_tokens")
    if not os.path.exists(os.path.join(small, "meta.json")):
      _run_part(["writer", small, str(fit["records"]), "100", "0.8", "1024"])
    results["fit"] = {
      kind: _run_part(["fit", small, str(fit["rounds"]), kind]) for kind in ("warm", "cold")
    }
    print("fit", results["fit"], flush=True)
  pq_cfg = cfg.get("parquet")
  if pq_cfg and "parquet" in parts:
    results["parquet"] = parquet(work, pq_cfg)
    print("parquet", results["parquet"], flush=True)
  write_json_atomically(
    os.path.join(os.path.dirname(os.path.abspath(out_md)), "results.json"), results, indent=1
  )
  write_text_atomically(out_md, markdown(results))
  if cfg.get("summary"):  # the same report, a section of the top-level BENCHMARKS.md
    sections.put(cfg["summary"], "data-scale", summary_section(results, out_md))
  print(markdown(results))
  return results


def summary_section(results: dict, out_md: str) -> str:
  """The report with its headings one level down, headed by where it comes from."""
  body = markdown(results).split("\n", 1)[1]  # without its title
  body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)
  where = os.path.relpath(os.path.dirname(os.path.abspath(out_md)))
  return (
    f"## Data at scale (`python experiments/benchmark_data.py`)\n\n"
    f"A separate run from the tables above; its results.json and report are in {where}/.\n" + body
  )


def larger_than_memory(work: str, cfg: dict) -> dict:
  docs = os.path.join(work, "documents")
  if not os.path.exists(os.path.join(docs, "meta.json")):
    _run_part(
      [
        "writer",
        docs,
        str(cfg["records"]),
        str(cfg["median"]),
        str(cfg["sigma"]),
        str(cfg["max_len"]),
      ]
    )
  size = sum(os.path.getsize(os.path.join(docs, f)) for f in os.listdir(docs))
  limit = int(cfg["memory_limit"])
  args = ["train", docs, ",".join(cfg["strategies"]), str(cfg["steps"])]
  ran = _part_in_cgroup(args, limit, docs)
  if ran is None:
    return dict(skipped=NO_CGROUP)
  got, peak, failcnt = ran
  return dict(
    corpus_bytes=size,
    memory_limit_bytes=limit,
    corpus_over_limit=size / limit,
    cgroup_peak_bytes=peak,
    cgroup_limit_hits=failcnt,
    rows=got,
  )


def _main(argv: list[str]) -> None:
  part = argv[0]
  if part == "writer":
    out = part_writer(argv[1], int(argv[2]), float(argv[3]), float(argv[4]), int(argv[5]))
  elif part == "plan":
    out = part_plan(argv[1], int(argv[2]), argv[3].split(","))
  elif part == "train":
    out = part_train_in_cgroup(argv[1], argv[2].split(","), int(argv[3]))
  elif part == "long_writer":
    out = part_long_documents_writer(argv[1], int(argv[2]), float(argv[3]), float(argv[4]))
  elif part == "runner_row":
    out = part_runner_row(argv[1], argv[2], argv[3] == "1")
  elif part == "open":
    out = part_open(argv[1], int(argv[2]), argv[3] == "1")
  elif part == "parquet_writer":
    out = part_parquet_writer(argv[1], int(argv[2]), float(argv[3]), float(argv[4]), int(argv[5]))
  elif part == "parquet_prepare":
    out = part_parquet_prepare(argv[1], argv[2])
  elif part == "fit":
    out = part_fit(argv[1], int(argv[2]), argv[3] == "cold")
  else:
    raise SystemExit(f"unknown part {part!r}")
  print(json.dumps(out))


if __name__ == "__main__":
  _main(sys.argv[1:])
