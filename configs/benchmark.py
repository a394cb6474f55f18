"""Config for experiments/benchmark.py: training throughput on the fixed workload W.

    python experiments/benchmark.py --out BENCHMARKS.md        # about 5 minutes on 2 CPU cores
    python experiments/benchmark.py --config configs/benchmark.py:quick --out /tmp/b.md
    python experiments/benchmark.py --config configs/benchmark.py:gru --out /tmp/gru/BENCHMARKS.md

W: 4096 sequences, log-normal lengths clipped to [8, 512] with median 64, F = 32 features,
H = 256, one layer, batch 64, Adam, per-step MSE on real steps.
"""

import ml_collections


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(
    dict(
      preset=arg or "default",
      seed=0,
      num_sequences=4096,
      min_length=8,
      max_length=512,
      median_length=64.0,
      sigma=1.0,
      features=32,
      hidden_size=256,
      batch_size=64,
      learning_rate=1e-3,
      repeats=3,  # timed passes after one warm-up pass; the median is reported
      tokens_per_pass=100_000,  # real tokens per timed pass
      num_buckets=8,
      tbptt_chunk=64,
      pack_row_length=512,
      rows=("pad", "bucket", "bucket_fixed_batch", "bucket_packed_rows", "tbptt", "pack"),
      gru_rows=("tbptt", "bucket_packed_rows"),  # also timed with cell="gru"
      input_projections=("in_step", "hoisted"),
      autodiff_rows=("tbptt", "bucket_packed_rows"),  # also timed with backward="autodiff"
      bfloat16_rows=("tbptt", "bucket_packed_rows"),  # also timed with matmul_dtype="bfloat16"
      peers=(
        "flax_rnn_pad512",
        "flax_rnn_pow2",
        "flax_rnn_pow2_bf16",
        "flax_rnn_pow2_gru",
        "torch_packed",
        "torch_batch_max",
        "torch_bucket",
        "torch_bucket_bf16",
        "torch_pow2",
        "torch_pow2_bf16",
        "keras_pow2",
      ),
      fit_overhead_rows=("tbptt", "bucket_packed_rows"),  # train.fit vs pre-assembled passes
      cost_model_check=True,  # lstm_jax.runner.costs' predictions against the measured rows
      paired_rounds=5,  # best row vs best peer vs GEMM rate, back to back
      compile_cache_probe=True,  # compile in three fresh processes sharing a persistent cache
      tune_malloc=True,  # lstm_jax.host.tune_malloc() for the whole run, peers too
      malloc_probe_rounds=2,  # best row and best peer in fresh processes, glibc default
      # allocator vs tuned, alternating; 0: skip
    )
  )
  if arg == "quick":  # for tests: tiny and fast
    c.update(
      num_sequences=256,
      max_length=32,  # three power-of-two buckets for the Flax peers (8, 16, 32)
      median_length=12.0,
      features=4,
      hidden_size=16,
      batch_size=16,
      repeats=1,
      tokens_per_pass=2000,
      num_buckets=3,
      tbptt_chunk=16,
      pack_row_length=32,
      rows=("pad", "bucket", "bucket_packed_rows", "tbptt", "pack"),
      input_projections=("in_step",),
      autodiff_rows=("tbptt",),
      bfloat16_rows=("tbptt",),
      gru_rows=("tbptt",),
      fit_overhead_rows=("tbptt",),
      peers=("flax_rnn_pow2", "flax_rnn_pow2_bf16", "flax_rnn_pow2_gru", "torch_packed"),
      compile_cache_probe=False,
      paired_rounds=2,
      malloc_probe_rounds=1,
    )
  elif arg == "gru":  # the GRU's rows and Flax's GRU peer, side by side, alone
    c.update(
      rows=(),
      gru_rows=("tbptt", "bucket_packed_rows", "bucket", "pack"),
      peers=("flax_rnn_pow2_gru",),
      fit_overhead_rows=(),
      cost_model_check=False,
      compile_cache_probe=False,
      malloc_probe_rounds=0,
    )
  elif arg == "fit":  # train.fit against the pre-assembled passes, alone
    c.update(
      rows=(),
      gru_rows=(),
      peers=(),
      cost_model_check=False,
      compile_cache_probe=False,
      malloc_probe_rounds=0,
    )
  elif arg not in ("", "default"):
    raise ValueError(f"unknown preset {arg!r}; use default, quick, gru or fit.")
  c.lock()
  return c
