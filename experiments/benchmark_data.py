"""Data at scale: the store's writer, planning at 100k / 1M / 10M sequences, opening a store at
two sizes, a corpus larger than the process's memory cgroup, and fit from a store against memory.

    python experiments/benchmark_data.py --out benchmarks/DATE-data-scale/BENCHMARKS.md

Writes results.json beside --out. About 20 minutes on 2 cores and ~9 GB of disk (--workdir,
default a temporary directory, keeps the stores for a rerun). --quick: small sizes, a minute.
--parts=plan --parts=fit: rerun only those, keeping the other parts' figures (said in the report).
"""

import json

from absl import app, flags

from lstm_jax.benchmark import data_scale

flags.DEFINE_string("out", "BENCHMARKS-data.md", "Markdown report; results.json beside it.")
flags.DEFINE_string(
  "summary", "BENCHMARKS.md", "Also put the report in this file, as its data-scale section."
)
flags.DEFINE_string("workdir", "", "Where the stores are written (kept for a rerun).")
flags.DEFINE_bool("quick", False, "Small sizes (a check that every part runs).")
PARTS = list(data_scale.ALL_PARTS)
flags.DEFINE_multi_enum(
  "parts", [], PARTS, "Rerun only these parts; the others are kept from results.json beside --out."
)
F = flags.FLAGS

FULL = dict(
  # ~2.4 GB: 10.5M records of median 100 (mean ~124) uint16 ids
  writer=dict(records=10_500_000, median=100, sigma=0.65, max_len=1024),
  plan_sizes=[100_000, 1_000_000, 10_000_000],
  plan_strategies=["tbptt", "vbptt", "pack", "bucket", "bucket_packed_rows", "pad"],
  # ~5.6 GB of documents (median 1,500 uint16 tokens) in a 1.25 GiB cgroup: 4.5x
  larger_than_memory=dict(
    records=1_700_000,
    median=1500,
    sigma=0.6,
    max_len=4096,
    memory_limit=5 << 28,
    strategies=["tbptt", "pack", "bucket"],
    steps=20,
  ),
  fit=dict(records=3_000, rounds=5),
  # ~1.7 GiB of whole documents (median 150,000 bytes) evaluated in a 1.25 GiB cgroup
  long_documents=dict(records=10_000, median=150_000, sigma=0.7, memory_limit=5 << 28),
  open_reads=2_000,  # random records read after opening (the store and a tenth of it)
  # ~0.7 GiB of uncompressed Parquet (median 100 uint16 ids a row) into a store in a 0.5 GiB
  # cgroup (pip install 'lstm_jax[parquet]'; about 4 minutes: the labelled records are written
  # one at a time)
  parquet=dict(records=3_000_000, median=100, sigma=0.65, max_len=1024, memory_limit=1 << 29),
)
QUICK = dict(  # the same parts at small sizes
  FULL,
  writer=dict(FULL["writer"], records=200_000),
  plan_sizes=[10_000, 100_000],
  larger_than_memory=dict(FULL["larger_than_memory"], records=20_000, steps=3),
  fit=dict(records=2_000, rounds=1),
  long_documents=dict(FULL["long_documents"], records=200),
  parquet=dict(FULL["parquet"], records=200_000),
)


def main(argv):
  del argv
  cfg = dict(QUICK if F.quick else FULL, workdir=F.workdir, parts=F.parts, summary=F.summary)
  data_scale.run(json.loads(json.dumps(cfg)), F.out)


if __name__ == "__main__":
  app.run(main)
