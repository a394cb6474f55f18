"""The runner's settings: `base_config()` is the schema (every key, its type and default) that
configs/compare.py's presets start from, and `validate_config` checks a config against it before
any data is loaded or anything compiles: unknown keys, wrong types, impossible values, and every
strategy's settings. Errors are `ConfigError`s naming the key and the fix.
"""

from __future__ import annotations

import difflib
import json

import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from lstm_jax import batching, metric_writers, tasks
from lstm_jax.backend import BACKENDS
from lstm_jax.data import RaggedDataset
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.layers import (
  BACKWARDS,
  CELLS,
  INITIALIZERS,
  INPUT_PROJECTIONS,
  MATMUL_DTYPES,
)
from lstm_jax.normalization import NORMALIZATIONS
from lstm_jax.readout import READOUTS

STRATEGY_NAMES = tuple(batching.STRATEGIES)  # every strategy's name, in the table's order
# The runner's default rows: every strategy but pad_batch_max, the common mistake (a compile per
# distinct batch maximum), which is an opt-in row that shows what the mistake costs:
# --config.strategies="('pad','bucket','tbptt','vbptt','pack','pad_batch_max')".
DEFAULT_STRATEGIES = tuple(s for s in STRATEGY_NAMES if s != "pad_batch_max")
SCHEDULES = ("constant", "cosine")  # config.optimizer.schedule
TENSORBOARD = ("auto", "on", "off")  # config.tensorboard


def base_config() -> ml_collections.ConfigDict:
  """Every setting the runner reads, with its default (the "default" preset), unlocked."""
  c = ml_collections.ConfigDict()
  c.preset = "default"
  c.seed = 0
  c.seeds = 1  # seeds seed, seed+1, ...; reported as mean and spread
  c.strategies = DEFAULT_STRATEGIES
  c.target_eval_loss = 0.0  # 0: the worst final eval loss among the strategies
  # JAX's persistent compilation cache ("" : off): a rerun loads compiled steps from here.
  c.compile_cache_dir = ""
  # glibc malloc keeps freed scratch memory for the next step (lstm_jax.host): CPU train steps
  # take (almost) no page faults; the process keeps its peak heap. Off by default: it made steps
  # faster on the AMD EPYC (+16% on workload W) but not on the Intel Xeon with AMX, where its one
  # malloc arena made XLA's compiles 1.45x slower (docs/speed.md). True: tune it.
  c.tune_malloc = False
  # Threads compiling a row's train-step shapes in the background, from its first step on, in
  # the order training meets them (loop.fit(compile_shapes="background")): the first step
  # waits only for its own shape. 0: each shape compiles when training first meets it.
  c.background_compiles = 1
  # Predict each row's steps, compiles, padding and seconds before training (runner.costs: a
  # calibration of a few seconds, saved as workdir/calibration.json) and set them against the
  # run in report.md.
  c.predict_costs = True
  # The recommender (experiments/recommend.py) recommends only strategies with exact gradients
  # for sequence-level labels, unless truncated BPTT is known to be fine for the task.
  c.truncation_ok = False
  # Sequence classification of feature series: 1-NN DTW and ROCKET (lstm_jax.baselines.classic,
  # aeon: pip install 'lstm_jax[baselines]') trained on the rows' training split and scored on
  # the test split (else the eval split), once per run, in the report beside the rows. Skipped,
  # with a line saying why, without aeon. dtw_window: the Sakoe-Chiba band as a fraction of the
  # length (None: the full window).
  c.classic_baselines = ml_collections.ConfigDict(
    dict(enabled=False, dtw_window=placeholder(float), rocket_kernels=10_000)
  )
  # The report's five PNG plots (matplotlib: about 1.5 s a render on 2 cores, 3 s with its
  # import). False: report.md and the data files only (many small runs, a sweep, the tests).
  c.plots = True
  # TensorBoard event files (lstm_jax.metric_writers; tensorboardX: pip install
  # 'lstm_jax[tensorboard]'): one run directory per row under workdir/tensorboard/steps/ (the
  # optimizer step on the horizontal axis; "Relative" time is the row's training clock) and
  # workdir/tensorboard/tokens/ (real tokens trained on), flushed at each checkpoint, so
  # `tensorboard --logdir WORKDIR/tensorboard` shows the rows side by side. "auto": written
  # where tensorboardX is installed; "on": required (an error without it); "off". metrics.jsonl
  # is written either way and stays the source of truth.
  c.tensorboard = "auto"
  # Resume from the workdir's checkpoints and finished results (False: delete them, start over).
  c.resume = True
  # keep: the newest checkpoints kept; keep_period > 0 also keeps every checkpoint whose step
  # is a multiple of it (early checkpoints, e.g. for experiments/sample.py --step).
  c.checkpoint = ml_collections.ConfigDict(
    dict(enabled=True, every_steps=50, keep=3, keep_period=0)
  )

  c.data = ml_collections.ConfigDict(
    dict(
      source="stdlib_functions",  # see lstm_jax.sources.SOURCES
      path="",  # text_dir / text_lines / npz / ts
      suffix=".txt",  # text_dir: which files
      min_length=16,
      max_length=1024,  # bytes per sequence kept (max_length 0: no limit)
      include_tests=False,  # stdlib: also the test folders
      max_sequences=0,  # subsample (seeded by split_seed) before the split
      eval_fraction=0.05,
      # a given split: the held-out data, in the same form as `path` (then path is all training
      # data and eval_fraction is not used); "" (the default): a seeded random split
      eval_path="",
      # a test split, in the same form as `path`, kept apart: each row's model selected on the
      # eval split (its best eval metric's checkpoint; with no eval_path, the eval split is a
      # validation split carved from `path` class by class) is scored
      # on it once (test_loss, test_metric in the report); the eval split is what training
      # watches. "" (the default): none
      test_path="",
      # normalize (feature inputs; token inputs: "none" only): "none", "global" (each feature
      # to zero mean and unit variance with the training split's statistics; every split gets
      # the same affine map), "minmax", "per_sequence" (each sequence z-normalised by its own
      # statistics), "per_sequence_scale" (the same, its log scale kept as extra features); see
      # runner/data.py, normalize
      normalize="none",
      # the one normalisation key is `normalize`: standardize=True was normalize="global", and
      # setting it now is an error that says so (None: unset)
      standardize=placeholder(bool),
      drop_duplicates=False,  # npz: drop exact copies of an earlier sequence (inputs and targets)
      split_seed=0,
      num_sequences=4000,
      seed=0,  # synthetic tasks
      markers="anywhere",  # adding: "halves" is the published form (one marker per half)
      lengths=ml_collections.ConfigDict(
        dict(kind="lognormal", min_length=2, max_length=200, median=40.0, sigma=0.8, values=(0,))
      ),
    )
  )
  # Data parallel: a mesh over this many local devices (0: all); batches must divide by it.
  c.mesh = ml_collections.ConfigDict(dict(num_devices=0))
  # Multi-host: every process runs the same command with its own process_id.
  c.distributed = ml_collections.ConfigDict(
    dict(enabled=False, coordinator="localhost:12355", num_processes=1, process_id=0)
  )
  # Dropout: between layers, and variational (one mask per sequence) on the LSTM's inputs and
  # outputs; off in evaluation, seeded from the step. matmul_dtype: "auto" (the default:
  # bfloat16 where it measures at least 1.1x faster on this machine, else float32; the choice is
  # kept per machine and workdir, runner/precision.py), "float32" (exact) or "bfloat16"
  # (bfloat16 matmul operands, float32 accumulation: faster on some CPUs with bfloat16 dot
  # products, slower on others; numbers differ by bfloat16 rounding). backward:
  # "manual" (hand-written reverse scan, faster), "deferred" (the same, the weight gradient one
  # GEMM after it: faster with few rows per step, other rounding) or "autodiff" (JAX
  # differentiates the nn.scan), see model.LSTMLayer.
  # cell: "lstm" (the hand-written LSTM: fastest, bfloat16 and manual backward available) or a
  # Flax cell run by the generic masked scan: "gru", "mgu", "simple", "flax_lstm",
  # "optimized_lstm" (lstm_jax.model.CELLS).
  # bidirectional: a forward and a backward pass over each whole sequence, concatenated (for
  # sequence-level labels); only for strategies that keep sequences whole (not tbptt, vbptt).
  c.model = ml_collections.ConfigDict(
    dict(
      cell="lstm",
      hidden_size=128,
      num_layers=1,
      embed_dim=32,
      input_projection="auto",
      dropout_rate=0.0,
      input_dropout=0.0,
      output_dropout=0.0,
      backward="manual",
      matmul_dtype="auto",
      bidirectional=False,
      # the LSTM's and the GRU's initialisation: "auto" (the default: "keras" for the LSTM,
      # "flax" for the GRU), "keras", "flax", "pytorch" (model.INITIALIZERS); other cells
      # initialise as their own class does
      initializer="auto",
      # the LSTM's computation: "auto" (the default: the scan on the CPU; on a CUDA GPU the
      # fused cuDNN LSTM for the rows it can take: pad, pad_batch_max, bucket without
      # pack_rows, and every evaluation), "scan", "cudnn" (those rows fused, the others on the
      # scan), "reference" (cuDNN's wiring through jax.experimental.rnn's reference: any
      # device, for checks). Each row's results record what ran (backend.BACKENDS)
      backend="auto",
      # what the head sees for a sequence label (model.SequenceModel.readout): "last" (the
      # stack's output at the sequence's last step), "mean", "max" or "attention" (a pool of
      # the outputs over the sequence's steps, exact under every strategy; readout.READOUTS)
      readout="last",
    )
  )
  # Adam. schedule "constant", or "cosine": the learning rate decays from learning_rate to
  # final_fraction * learning_rate over each row's own planned optimizer steps (its steps end
  # where its budget does, so every row ends its decay at the end of its training).
  c.optimizer = ml_collections.ConfigDict(
    dict(
      learning_rate=3e-3,
      grad_clip=1.0,
      schedule="constant",
      final_fraction=0.1,
      # > 0: AdamW, decoupled weight decay of this rate (times the learning rate) on every
      # parameter; 0: Adam
      weight_decay=0.0,
    )
  )
  # tokens_per_step: real (non-padding) tokens per optimizer step, the work every strategy's
  # step does: each strategy's rows per batch (left None under config.strategy) are derived from
  # it and the data's own lengths, so an equal real-token budget means equal optimizer steps.
  # class_weights (classification): "" (none), "balanced" (n / (classes * n_c) from the
  # training split) or one weight per class, "1,3.5,1": each class's weight in the training
  # loss (train.create_train_state); evaluation and the reported losses stay unweighted.
  c.train = ml_collections.ConfigDict(
    dict(
      real_tokens=600_000,
      epochs=0,
      eval_every_tokens=50_000,
      # 0 ("auto"): chosen from the training split so the rows stay comparable however small
      # it is (runner/recommend.py, resolve_auto_batches); the classify preset uses it
      tokens_per_step=8192,
      # > 0: about this many evaluations over the run (eval_every_tokens set from the budget)
      evals=0,
      class_weights="",
    )
  )
  # Evaluation (the held-out and test splits, and their class scores): exact and bounded.
  # max_sequences and max_tokens cap the held-out split (its first sequences, in the split's
  # seeded order; 0: no cap), so an evaluation's work does not grow with the corpus; sequences
  # longer than chunk_length are evaluated in chunks of that many steps with the state carried
  # across them (exactly the whole forward pass), so its memory does not grow with the longest
  # document (0: every sequence whole; a bidirectional model always evaluates whole).
  c.eval = ml_collections.ConfigDict(
    dict(
      tokens_per_batch=32768,
      num_buckets=4,
      max_sequences=400,
      max_tokens=2_000_000,
      chunk_length=4096,
    )
  )
  # Each strategy's own settings. Rows per batch left None (pad/pad_batch_max/pack batch_size,
  # bucket's batch_size and tokens_per_batch, tbptt/vbptt num_streams) are derived from
  # train.tokens_per_step; set one to override it (the row is flagged if its step count then
  # differs from the others'). Whole documents (text_dir, stdlib_files): pad, bucket and pack
  # keep every sequence whole in one row, so one long file sets their row length (and memory);
  # tbptt and vbptt cut sequences into chunks and suit documents of any length.
  c.strategy = ml_collections.ConfigDict(
    dict(
      pad=dict(batch_size=placeholder(int), max_length=placeholder(int)),
      # pack_rows: several sequences per bucket row (resets between): less padding, same shapes.
      # num_buckets "auto": the count predicted to train the budget first on this machine,
      # compiles included (lstm_jax.runner.costs; calibrated once, saved in the workdir)
      bucket=dict(
        tokens_per_batch=placeholder(int),
        batch_size=placeholder(int),
        num_buckets=ml_collections.FieldReference(8, field_type=object),
        boundaries=placeholder(tuple),
        pack_rows=False,
      ),
      tbptt=dict(num_streams=placeholder(int), chunk_length=256),
      # AWD-LSTM's variable-length BPTT around base_length; chunk_shapes None: 4 shapes
      vbptt=dict(num_streams=placeholder(int), base_length=256, chunk_shapes=placeholder(tuple)),
      # row_length: fixed, so a longer sequence is refused instead of widening every row
      # (None: the longest sequence)
      pack=dict(
        batch_size=placeholder(int), row_length=ml_collections.FieldReference(1024, field_type=int)
      ),
      pad_batch_max=dict(batch_size=placeholder(int)),
    )
  )
  # Row guards (runner.guards), checked before anything trains: every strategy takes at least
  # min_steps optimizer steps within the budget, and its largest train step needs at most
  # max_step_memory bytes by XLA's memory analysis (0: half of this machine's memory, or 90% of
  # an accelerator's). After training, a row whose optimizer steps differ from the median row's
  # by more than step_tolerance (a fraction) is marked not comparable and never ranked.
  c.guards = ml_collections.ConfigDict(dict(min_steps=20, max_step_memory=0, step_tolerance=0.1))

  return c


# The sections whose values change a (strategy, seed) run's numbers. The rest (which strategies
# and how many seeds, where files and caches go, checkpoint cadence, the allocator, the target
# loss, which is recomputed from the rows) do not, so changing them keeps finished results valid.
SETTINGS_SECTIONS = ("data", "model", "optimizer", "train", "eval")
SETTINGS_VERSIONS = ("python", "jax", "jaxlib", "flax", "optax", "numpy", "backend")


def run_settings(
  cfg: ml_collections.ConfigDict,
  name: str,
  seed: int,
  data_identity: dict,
  versions: dict,
  devices: int,
) -> dict:
  """Everything that changes the numbers of strategy `name`'s run with `seed`, as a flat
  {"section.key": value} dict (JSON values): the config sections above, the strategy's own
  settings, the seed, the device count, the data's fingerprints and the versions of the
  numerical stack. A finished result or checkpoint is read back only under equal settings."""
  flat: dict = {}

  def add(prefix: str, node) -> None:
    for key, value in node.items():
      if isinstance(value, (ml_collections.ConfigDict, dict)):
        add(f"{prefix}{key}.", value)
      else:
        flat[prefix + key] = list(value) if isinstance(value, tuple) else value

  for section in SETTINGS_SECTIONS:
    add(f"{section}.", cfg[section])
  add(f"strategy.{name}.", cfg.strategy[name])
  flat.update(
    seed=int(seed),
    devices=int(devices),
    **{
      f"data.{k}": data_identity.get(k)
      for k in ("train_fingerprint", "eval_fingerprint", "test_fingerprint")
    },
    **{f"versions.{k}": versions.get(k) for k in SETTINGS_VERSIONS},
  )
  return json.loads(json.dumps(flat))  # what reading the JSON back gives: lists, not tuples


# Settings checked by value alone: counts that may be 0, counts of at least 1, and choices.
_COUNTS = {
  0: (
    "train.real_tokens",
    "train.epochs",
    "train.eval_every_tokens",
    "guards.max_step_memory",
    "guards.step_tolerance",
    "guards.min_steps",
    "data.max_sequences",
    "eval.max_sequences",
    "eval.max_tokens",
    "eval.chunk_length",
    "train.tokens_per_step",
    "train.evals",
    "checkpoint.every_steps",
    "checkpoint.keep_period",
    "mesh.num_devices",
    "background_compiles",
    "optimizer.grad_clip",
    "optimizer.weight_decay",
  ),
  1: (
    "seeds",
    "model.hidden_size",
    "model.num_layers",
    "model.embed_dim",
    "eval.tokens_per_batch",
    "eval.num_buckets",
    "classic_baselines.rocket_kernels",
    "checkpoint.keep",
  ),
}


def _choices() -> tuple[tuple[str, tuple], ...]:
  return (
    ("tensorboard", TENSORBOARD),
    ("data.normalize", NORMALIZATIONS),
    ("data.markers", tasks.ADDING_MARKERS),
    ("optimizer.schedule", SCHEDULES),
    ("model.cell", tuple(CELLS)),
    ("model.input_projection", INPUT_PROJECTIONS),
    ("model.backward", BACKWARDS),
    ("model.matmul_dtype", MATMUL_DTYPES + ("auto",)),
    ("model.initializer", INITIALIZERS),
    ("model.backend", BACKENDS),
    ("model.readout", READOUTS),
  )


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first bad setting: before any data is loaded or compiled."""
  _check_schema(cfg, base_config(), "config")
  _check_strategy_names(cfg)
  _check_values(cfg)
  _check_model(cfg)
  for name in cfg.strategies:
    check_strategy_settings(name, cfg)


def _check_strategy_names(cfg: ml_collections.ConfigDict) -> None:
  unknown = [s for s in cfg.strategies if s not in batching.STRATEGIES]
  if unknown:
    raise ConfigError(
      f"unknown strategy name(s) {unknown} in config.strategies; choose from "
      f"{sorted(batching.STRATEGIES)}."
    )
  if not cfg.strategies:
    raise ConfigError(
      f"config.strategies is empty; name at least one of {sorted(batching.STRATEGIES)}."
    )


def _check_values(cfg: ml_collections.ConfigDict) -> None:
  """Counts, ranges and choices: each setting on its own."""
  if not (cfg.train.real_tokens or cfg.train.epochs):
    raise ConfigError(
      "set config.train.real_tokens or config.train.epochs (> 0) to say when training stops."
    )
  for low, keys in _COUNTS.items():
    for key in keys:
      _at_least(cfg, key, low)
  nb = cfg.strategy.bucket.num_buckets
  if not (
    nb is None or nb == "auto" or (isinstance(nb, int) and not isinstance(nb, bool) and nb >= 1)
  ):
    raise ConfigError(
      f"config.strategy.bucket.num_buckets must be an integer >= 1 or 'auto', got {nb!r}."
    )
  for key, allowed in _choices():
    if _get(cfg, key) not in allowed:
      raise ConfigError(f"config.{key} must be one of {allowed}, got {_get(cfg, key)!r}.")
  if cfg.tensorboard == "on" and not metric_writers.tensorboard_available():
    raise ConfigError(
      f"config.tensorboard='on' needs tensorboardX: {metric_writers.INSTALL_HINT}, or set "
      f"config.tensorboard=off."
    )
  if not 0 < cfg.data.eval_fraction < 1:
    raise ConfigError(f"config.data.eval_fraction must be in (0, 1), got {cfg.data.eval_fraction}.")
  if cfg.optimizer.learning_rate <= 0:
    raise ConfigError(
      f"config.optimizer.learning_rate must be > 0, got {cfg.optimizer.learning_rate}."
    )
  if cfg.data.standardize is not None:
    raise ConfigError(
      f"config.data.standardize is folded into config.data.normalize, the one normalisation "
      f"key: set --config.data.normalize="
      f"{'global' if cfg.data.standardize else 'none'} instead."
    )
  if not 0.0 <= cfg.optimizer.final_fraction <= 1.0:
    raise ConfigError(
      f"config.optimizer.final_fraction must be in [0, 1], got {cfg.optimizer.final_fraction}."
    )
  for key in ("dropout_rate", "input_dropout", "output_dropout"):
    if not 0.0 <= cfg.model[key] < 1.0:
      raise ConfigError(f"config.model.{key} must be in [0, 1), got {cfg.model[key]}.")


def _check_model(cfg: ml_collections.ConfigDict) -> None:
  """Model settings that must agree with each other or with the strategies."""
  if cfg.model.cell not in ("lstm", "gru") and cfg.model.initializer != "auto":
    raise ConfigError(
      f"config.model.initializer={cfg.model.initializer!r} is a choice for the LSTM and the "
      f"GRU; cell {cfg.model.cell!r} initialises as its own class does. Use "
      f"config.model.cell=lstm or gru, or leave the initializer at 'auto'."
    )
  if cfg.model.backend in ("cudnn", "reference"):
    dropout = max(cfg.model[k] for k in ("dropout_rate", "input_dropout", "output_dropout"))
    if cfg.model.cell != "lstm" or cfg.model.matmul_dtype == "bfloat16" or dropout > 0:
      raise ConfigError(
        f"config.model.backend={cfg.model.backend!r} is the fused LSTM's: it needs "
        f"config.model.cell=lstm, matmul_dtype=float32 and no dropout (got cell "
        f"{cfg.model.cell!r}, matmul_dtype {cfg.model.matmul_dtype!r}, dropout {dropout:g}); "
        f"use config.model.backend=auto or scan."
      )
  if cfg.model.cell != "lstm" and cfg.model.matmul_dtype == "bfloat16":
    raise ConfigError(
      f"config.model.matmul_dtype={cfg.model.matmul_dtype!r} is implemented for "
      f"config.model.cell='lstm' only; use float32 with cell {cfg.model.cell!r}."
    )
  if cfg.model.bidirectional:
    cut = [s for s in cfg.strategies if batching.STRATEGIES[s].carries_state]
    if cut:
      raise ConfigError(
        f"config.model.bidirectional needs whole sequences in each row, and {cut} cut them "
        f"into chunks; leave {' and '.join(cut)} out of config.strategies (pad, bucket and pack "
        f"keep sequences whole)."
      )


def strategy_kwargs(name: str, cfg: ml_collections.ConfigDict) -> dict:
  """cfg.strategy[name] as keyword arguments (None means unset: left out), and
  train.tokens_per_step, from which the strategy derives the rows per batch left unset."""
  if name not in cfg.strategy:
    raise ConfigError(
      f"strategy {name!r} has no settings under config.strategy; known: {sorted(cfg.strategy)}."
    )
  kwargs = {
    k: (list(v) if isinstance(v, tuple) else v)
    for k, v in cfg.strategy[name].items()
    if v is not None
  }
  return dict(kwargs, tokens_per_step=cfg.train.tokens_per_step)


def check_strategy_settings(name: str, cfg: ml_collections.ConfigDict) -> None:
  """Runs the strategy's own checks of its settings on a one-step stand-in dataset, so a zero
  token budget or boundaries that do not increase fail before the data is even loaded. (Checks
  that need the real data, such as a sequence longer than the largest bucket, run once it is
  loaded, still before any compile.)"""
  kwargs = strategy_kwargs(name, cfg)
  if (
    kwargs.get("num_buckets") == "auto"
  ):  # resolved once the data is loaded (lstm_jax.runner.costs)
    kwargs["num_buckets"] = 1
  if kwargs.get("tokens_per_step") == 0:  # train.tokens_per_step=0: chosen once data is loaded
    kwargs["tokens_per_step"] = 1
  for k, v in kwargs.items():
    if isinstance(v, int) and not isinstance(v, bool) and v < 1:
      raise ConfigError(
        f"config.strategy.{name}.{k} must be >= 1, got {v!r} (leave it None to "
        f"unset it; 0 does not mean unset)."
      )
  stand_in = RaggedDataset(
    np.zeros((1, 1), np.float32),
    np.ones(1, np.int64),
    np.zeros((1, 1), np.float32),
    name="stand-in",
  )
  try:
    batching.make_strategy(name, stand_in, **kwargs)
  except ConfigError as e:
    raise ConfigError(f"config.strategy.{name}: {e}") from None
  except DataError:
    pass  # about the stand-in data, not the settings


def _get(cfg: ml_collections.ConfigDict, key: str):
  """cfg's value at a dotted key ("model.cell")."""
  value = cfg
  for part in key.split("."):
    value = value[part]
  return value


def _at_least(cfg: ml_collections.ConfigDict, key: str, low: int) -> None:
  value = _get(cfg, key)
  if value < low:
    raise ConfigError(f"config.{key} must be >= {low}, got {value!r}.")


def _type_name(t) -> str:
  return getattr(t, "__name__", str(t))


def _check_schema(cfg, ref, path: str) -> None:
  """Every key of cfg exists in ref, with a value of ref's type (int accepted for float, None
  where ref allows it, tuple and list alike)."""
  for key in cfg.keys():
    where = f"{path}.{key}"
    if key not in ref:
      close = difflib.get_close_matches(key, list(ref.keys()), n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ConfigError(f"unknown config key {where}.{hint} Known keys here: {sorted(ref.keys())}.")
    value, want = cfg[key], ref[key]
    if isinstance(want, ml_collections.ConfigDict):
      if not isinstance(value, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"{where} must be a section (ConfigDict), got {type(value).__name__}.")
      _check_schema(
        ml_collections.ConfigDict(value) if isinstance(value, dict) else value, want, where
      )
      continue
    expected = ref.get_type(key)
    if value is None:
      continue  # unset; whether that is allowed is checked where the value is used
    ok = isinstance(value, expected) if expected is not type(None) else True
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
      ok = True
    if expected in (tuple, list) and isinstance(value, (tuple, list)):
      ok = True
    if expected is int and isinstance(value, bool):
      ok = False
    if not ok:
      raise ConfigError(
        f"{where} must be {_type_name(expected)}, got {type(value).__name__} {value!r}."
      )
