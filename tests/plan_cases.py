"""The plans held fixed across planner rewrites: strategies on length sets with many ties, each
plan reduced to a sha256 of its batches (shape, learning-rate scale and every segment), so a
planner that changes any batch of any case turns `test_plans_match_the_recorded_planner` red.

`python tests/plan_cases.py` records the current planner's hashes into tests/data/plan_hashes.json
(run it only when a change of plans is intended, and rerun the committed reports then)."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import identity_dataset  # noqa: E402
from lstm_jax import batching  # noqa: E402

HASHES = Path(__file__).resolve().parent / "data" / "plan_hashes.json"


def length_sets() -> dict:
  rng = np.random.default_rng(11)
  return {
    "uniform57": np.random.default_rng(7).integers(1, 40, size=57),
    "lognormal3000": np.clip(np.round(rng.lognormal(4.0, 0.9, size=3000)), 1, 600).astype(int),
    "ties400": rng.choice([1, 2, 3, 5, 8, 13, 50, 64], size=400),
  }


def cases() -> dict:
  """name -> (length set, strategy factory(dataset, seed))."""
  b = batching
  return {
    "pad": lambda d, s: b.Pad(d, batch_size=8, seed=s),
    "pad_tokens_m4": lambda d, s: b.Pad(d, tokens_per_step=900, seed=s, batch_multiple=4),
    "pad_batch_max": lambda d, s: b.PadBatchMax(d, batch_size=7, seed=s),
    "bucket": lambda d, s: b.Bucket(d, batch_size=8, num_buckets=4, seed=s),
    "bucket_tokens_per_batch": lambda d, s: b.Bucket(
      d, tokens_per_batch=700, num_buckets=5, seed=s
    ),
    "bucket_tokens_per_step": lambda d, s: b.Bucket(d, tokens_per_step=900, num_buckets=3, seed=s),
    "bucket_pack_rows": lambda d, s: b.Bucket(
      d, tokens_per_step=900, num_buckets=4, pack_rows=True, seed=s
    ),
    "bucket_pack_rows_m3": lambda d, s: b.Bucket(
      d, batch_size=5, num_buckets=3, pack_rows=True, seed=s, batch_multiple=3
    ),
    "pack": lambda d, s: b.Pack(d, batch_size=4, seed=s),
    "pack_tokens": lambda d, s: b.Pack(d, tokens_per_step=2000, row_length=700, seed=s),
    "tbptt": lambda d, s: b.TBPTT(d, num_streams=5, chunk_length=7, seed=s),
    "tbptt_tokens_m2": lambda d, s: b.TBPTT(
      d, tokens_per_step=1000, chunk_length=32, seed=s, batch_multiple=2
    ),
    "vbptt": lambda d, s: b.VariableTBPTT(d, num_streams=5, base_length=12, seed=s),
    "relayout_pad": lambda d, s: b.Relayout(b.Bucket(d, batch_size=8, num_buckets=3, seed=s)),
    "relayout_pack": lambda d, s: b.Relayout(
      b.Pad(d, batch_size=16, seed=s), layout="pack", row_length=700
    ),
  }


def plan_hash(plans) -> str:
  """Each batch's (batch size, length, learning-rate scale, its segments sorted as (row,
  sequence, start, position, length) tuples), hashed: the segment table is sorted as arrays
  (np.lexsort, the row first) rather than read row by row through `BatchPlan.rows`."""
  h = hashlib.sha256()
  for p in plans:
    table = p.segments[np.lexsort(p.segments.T[::-1])]  # columns: ROW, SEQUENCE, START, ...
    segs = list(map(tuple, table.tolist()))
    h.update(repr((p.batch_size, p.length, float(p.lr_scale), segs)).encode())
  return h.hexdigest()[:24]


def all_hashes() -> dict:
  out = {}
  for set_name, lengths in length_sets().items():
    ds = identity_dataset(lengths)
    for case, make in cases().items():
      for seed in (0, 1):
        strategy = make(ds, seed)
        for epoch in (0, 1):
          out[f"{set_name}/{case}/seed{seed}/epoch{epoch}"] = plan_hash(strategy.plan(epoch))
  return out


if __name__ == "__main__":
  HASHES.write_text(json.dumps(all_hashes(), indent=1, sort_keys=True) + "\n")
  print(f"wrote {HASHES}")
