"""The data-scale benchmark's report (lstm_jax.benchmark.data_scale writes its results.json and
this markdown): one function per section, each skipped, or said skipped, when its part did not
run.
"""

from __future__ import annotations

from lstm_jax.columnar import BATCH_ROWS as COLUMNAR_BATCH_ROWS

GiB = 1 << 30
PLAN_ROUNDS = 3  # each strategy built and planned this many times in one process


def _versions_line(v: dict) -> str:
  keys = ("python", "jax", "flax", "optax", "numpy", "cpu_count")
  return ", ".join(f"{k} {v[k]}" for k in keys if k in v)


def markdown(r: dict) -> str:
  lines = [
    "# Data at scale",
    "",
    f"CPU: {r['cpu']}; {_versions_line(r['versions'])} (every version and CPU flag: results.json).",
    "Produced by `python experiments/benchmark_data.py` (lstm_jax/benchmark/data_scale.py).",
    "",
  ]
  if r.get("parts_rerun"):
    by_cpu: dict = {}
    for part, cpu in (r.get("part_cpus") or {}).items():
      by_cpu.setdefault(cpu, []).append(part)
    lines[-1:] = [
      f"Rerun here: {', '.join(r['parts_rerun'])} (`--parts`); the others are earlier runs'. "
      "Each part's CPU: "
      + "; ".join(f"{', '.join(ps)}: {cpu}" for cpu, ps in by_cpu.items())
      + ".",
      "",
    ]
  for section in _SECTIONS:
    lines += section(r)
  return "\n".join(lines) + "\n"


def _md_writer(r: dict) -> list[str]:
  mib = 1 << 20
  lines: list[str] = []
  w = r.get("writer")
  if w:
    lines += [
      "## Writer",
      "",
      f"{w['records']:,} records, {w['values']:,} uint16 token ids, {w['bytes_on_disk'] / GiB:.2f}"
      f" GiB on disk: {w['seconds']:.1f} s, **{w['mb_per_second']:.0f} MB/s**, peak anonymous "
      f"memory growth **{w['peak_anon_growth_bytes'] / mib:.0f} MiB** ({w['note']}).",
      "",
    ]
  return lines


def _md_plan(r: dict) -> list[str]:
  mib = 1 << 20
  lines: list[str] = []
  lines += [
    "## Planning one epoch from the lengths alone",
    "",
    f"Strategy built and its first epoch planned, {PLAN_ROUNDS} times in one process: seconds"
    " are the median; bytes per sequence are the plan's own arrays"
    " (the dataset's lengths, 8 bytes a sequence, not counted): what the plan holds, exactly."
    " Anonymous memory is RssAnon growth while planning (peak) and after it (retained, the"
    " plan kept): indicative only, as glibc keeps or returns freed memory as it likes (a"
    " negative figure: memory freed that an earlier row had left). The first tbptt row also"
    " holds the JAX CPU client and the compiled laying scan, ~25-30 MiB whatever the size.",
    "",
    "| sequences | strategy | seconds | batches | plan bytes / seq | peak MiB | retained MiB |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for n, rows in r["plan"].items():
    for name, x in rows.items():
      lines.append(
        f"| {int(n):,} | {name} | {x['seconds']:.2f} | {x['batches']:,} | "
        f"{x['plan_bytes_per_sequence']:.1f} | {x['anon_peak_growth_bytes'] / mib:.0f} | "
        f"{x['anon_retained_bytes'] / mib:.0f} |"
      )
  return lines


def _md_open(r: dict) -> list[str]:
  mib = 1 << 20
  lines: list[str] = []
  if r.get("open"):
    lines += [
      "",
      "## Opening a store, and its checks",
      "",
      "A fresh process each, the store's page cache dropped: opening reads the metadata and the"
      " offsets (8 bytes a record, read whole: the lengths, which the plans need) and, with"
      " checks (`open_store(verify=True)`, the default), checks the offsets and a fixed sample"
      " of 64 KiB chunks against their checksums; then random records are read twice, the first"
      " time checking each chunk they touch (once per process), the second finding them"
      " checked. RssAnon growth at open is the lengths array; the checks add nothing that grows"
      " with the store.",
      "",
      "| records | GiB on disk | checks | open s | open RssAnon growth MiB | lengths MiB |"
      " reads | first read s | second read s |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for x in r["open"]:
      lines.append(
        f"| {x['records']:,} | {x['bytes_on_disk'] / GiB:.2f} | {'yes' if x['verify'] else 'no'}"
        f" | {x['open_seconds']:.3f} | {x['open_anon_growth_bytes'] / mib:.1f} | "
        f"{x['lengths_bytes'] / mib:.1f} | {x['reads']:,} | {x['first_read_seconds']:.2f} | "
        f"{x['second_read_seconds']:.2f} |"
      )
  return lines


def _md_long_documents(r: dict) -> list[str]:
  mib = 1 << 20
  lines: list[str] = []
  ld = r.get("long_documents")
  if ld and "skipped" not in ld:
    lines += [
      "",
      "## Whole long documents: evaluation bounded",
      "",
      f"A store of {ld['records']:,} whole documents ({ld['corpus_bytes'] / GiB:.2f} GiB; median"
      f" {ld['median']:,.0f} bytes, longest {ld['longest']:,}), one runner row (tbptt, the"
      " default model, 200,000 real tokens, `--config.data.max_length=0`) inside a memory cgroup"
      f" capped at {ld['memory_limit_bytes'] / GiB:.2f} GiB, below the store's size, its page"
      " cache dropped first. *bounded*: the held-out split capped at `eval.max_tokens` and"
      " sequences past `eval.chunk_length` evaluated in chunks with the state carried (the"
      " default); *whole*: evaluation as it was, every held-out document whole.",
      "",
      "| evaluation | outcome | eval sequences | eval steps | eval compiles | seconds |"
      " RssAnon peak MiB | cgroup peak MiB | limit hits |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, x in ld["rows"].items():
      cg = f"{x['cgroup_peak_bytes'] / mib:.0f} | {x['cgroup_limit_hits']} |"
      if "failed" in x:
        said = "killed by the cgroup's OOM killer" if "(-9)" in x["failed"] else x["failed"]
        lines.append(f"| {name} | {said} | - | - | - | - | - | {cg}")
        continue
      lines.append(
        f"| {name} | finished, eval loss {x['eval_loss']:.3f} | {x['eval_sequences']:,} | "
        f"{x['eval_steps']:,} | {x['eval_compiles']} | {x['seconds']:.0f} | "
        f"{x['anon_peak_bytes'] / mib:.0f} | {cg}"
      )
  elif ld:
    lines += ["", f"Whole long documents: skipped ({ld['skipped']})."]
  return lines


def _md_larger_than_memory(r: dict) -> list[str]:
  mib = 1 << 20
  lines: list[str] = []
  big = r.get("larger_than_memory")
  if big and "skipped" not in big:
    lines += [
      "",
      "## A corpus larger than the memory the process may use",
      "",
      f"A store of {big['corpus_bytes'] / GiB:.2f} GiB trained inside a memory cgroup capped at "
      f"{big['memory_limit_bytes'] / GiB:.2f} GiB ({big['corpus_over_limit']:.1f}x), its page "
      f"cache dropped first; the cgroup's peak (page cache included) "
      f"{big['cgroup_peak_bytes'] / mib:.0f} MiB, limit hits {big['cgroup_limit_hits']}.",
      "",
      "| strategy | steps | real tokens | seconds | RssAnon end MiB | RssAnon peak MiB | loss |",
      "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, x in big["rows"].items():
      lines.append(
        f"| {name} | {x['steps']} | {x['real_tokens']:,} | {x['seconds']:.1f} | "
        f"{x['anon_end_bytes'] / mib:.0f} | {x['anon_peak_bytes'] / mib:.0f} | "
        f"{x['final_loss']:.3f} |"
      )
  elif big:
    lines += ["", f"Larger than memory: skipped ({big['skipped']})."]
  return lines


def _md_fit(r: dict) -> list[str]:
  lines: list[str] = []
  fit = r.get("fit")
  if fit:
    lines += [
      "",
      "## fit: a store against the same data in memory",
      "",
      "tbptt, H=128, synthetic tokens (vocabulary 1,000); one epoch per round, rounds"
      " alternating memory, store, and store with each batch assembled in the loop (prefetch=0;"
      " the others assemble two ahead on fit's thread); cold: the store's page cache dropped"
      " before each of its rounds; real tokens/s over each epoch's steady steps (the first step"
      " excluded).",
      "",
      "| page cache | memory tok/s | store tok/s | store / memory (medians) | per round, median |"
      " store in the loop tok/s | in the loop / memory |",
      "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, x in fit.items():
      t = x["tokens_per_second"]
      loop = t.get("store_in_loop")
      lines.append(
        f"| {kind} | {t['memory']:,.0f} | {t['store']:,.0f} | {x['store_over_memory']:.3f} | "
        f"{x['paired_ratio_median']:.3f} | "
        + (f"{loop:,.0f} | {x['store_in_loop_over_memory']:.3f} |" if loop else "- | - |")
      )
  return lines


def _md_parquet(r: dict) -> list[str]:
  mib = 1 << 20
  lines: list[str] = []
  pq = r.get("parquet")
  if pq and "skipped" not in pq:
    lines += [
      "",
      "## A Parquet file larger than memory into a store",
      "",
      f"`prepare_data --source parquet` (lstm_jax.columnar: pyarrow record batches of"
      f" {COLUMNAR_BATCH_ROWS:,} rows) on an uncompressed Parquet file of {pq['records']:,} rows"
      f" of token ids and a label ({pq['file_bytes'] / GiB:.2f} GiB), inside a memory cgroup"
      f" capped at {pq['memory_limit_bytes'] / GiB:.2f} GiB (the file is"
      f" {pq['file_over_limit']:.1f}x that), its page cache dropped first: {pq['seconds']:.1f} s,"
      f" **{pq['mb_per_second']:.0f} MB/s** of Parquet read; RssAnon grew"
      f" **{pq['anon_peak_growth_bytes'] / mib:.0f} MiB** at its peak; the cgroup's peak (page"
      f" cache included) {pq['cgroup_peak_bytes'] / mib:.0f} MiB, limit hits"
      f" {pq['cgroup_limit_hits']}. The file is read twice (labels and vocabulary first, then"
      f" the records), as the JSON-lines source is.",
    ]
  elif pq:
    lines += ["", f"Parquet: skipped ({pq['skipped']})."]
  return lines


_SECTIONS = (
  _md_writer,
  _md_plan,
  _md_open,
  _md_long_documents,
  _md_larger_than_memory,
  _md_fit,
  _md_parquet,
)
