"""The objects a config builds: the model, the optimizer, each strategy and the evaluator, the
train state, and the metric a dataset is scored by. One place, so every row, the calibration and
the recommender build them alike."""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import optax

from lstm_jax import batching, train
from lstm_jax.backend import resolve_backend, row_backend, step_backend
from lstm_jax.data import RaggedDataset
from lstm_jax.errors import ConfigError
from lstm_jax.model import SequenceModel
from lstm_jax.runner import config, guards

LN2 = math.log(2.0)


def metric_of(dataset: RaggedDataset) -> str:
  """The task's headline metric: bits per byte for byte LMs, accuracy for classification, MSE."""
  if dataset.is_tokens and dataset.vocab_size == 256 and dataset.target_level == "step":
    return "bits_per_byte"
  return "accuracy" if dataset.is_classification else "mse"


def metric_value(name: str, result: dict) -> float:
  return {
    "bits_per_byte": lambda r: r["loss"] / LN2,
    "accuracy": lambda r: r["accuracy"],
    "mse": lambda r: r["loss"],
  }[name](result)


def make_model(
  cfg: ml_collections.ConfigDict, dataset: RaggedDataset, right_padded: bool = True
) -> SequenceModel:
  """The model from the config's model section, whose keys are SequenceModel's own fields (one
  settings path: a new model setting is a field and a config default, nothing in between), and
  the data's vocabulary and output size.

  right_padded: the row's strategy's (`Strategy.right_padded`). A row that packs or chunks its
  rows keeps the scan under config.model.backend=cudnn or reference (the fused LSTM takes one
  sequence per row); "auto" stays "auto" (each step picks, `backend.step_backend`).
  matmul_dtype="auto", which the runner replaces by this machine's choice before building
  anything (`precision.resolve_auto_precision`), builds a float32 model when called directly."""
  num_outputs = int((dataset.num_classes if dataset.is_classification else dataset.target_dim) or 0)
  settings = cfg.model.to_dict()
  if settings["matmul_dtype"] == "auto":  # not resolved (the runner resolves it before any
    settings["matmul_dtype"] = "float32"  # model, runner/precision.py): float32, exact
  settings["backend"] = row_backend(settings["backend"], right_padded=right_padded)
  try:
    resolve_backend(settings["backend"], settings["cell"], settings["matmul_dtype"])
  except ConfigError as e:
    raise ConfigError(f"config.model.backend: {e}") from None
  return SequenceModel(**settings, num_outputs=num_outputs, vocab_size=dataset.vocab_size)


def row_backends(state: train.TrainState, strategy: batching.Strategy, evaluator) -> dict:
  """What the row's train and eval steps run ("scan", "cudnn" or "reference"), as results
  record it."""
  return dict(
    train=step_backend(state.model, right_padded=strategy.right_padded, training=True),
    eval=step_backend(state.model, right_padded=all(e.right_padded for e in evaluator)),
  )


def make_optimizer(
  cfg: ml_collections.ConfigDict, total_steps: int | None = None
) -> optax.GradientTransformation:
  """Adam (AdamW with config.optimizer.weight_decay > 0) with the config's schedule (a cosine
  decay runs over `total_steps`, the row's planned optimizer steps) and gradient clipping."""
  o = cfg.optimizer
  learning_rate = o.learning_rate
  if o.schedule == "cosine":
    if not total_steps:
      raise ConfigError(
        "a cosine schedule needs the row's total_steps (its planned optimizer steps); pass "
        "total_steps, or set config.optimizer.schedule=constant."
      )
    learning_rate = optax.cosine_decay_schedule(
      o.learning_rate, decay_steps=total_steps, alpha=o.final_fraction
    )
  if o.weight_decay > 0:
    tx = optax.adamw(learning_rate, weight_decay=o.weight_decay)
  else:
    tx = optax.adam(learning_rate)
  if o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return tx


def strategy_from_config(
  name: str,
  dataset: RaggedDataset,
  cfg: ml_collections.ConfigDict,
  seed: int,
  batch_multiple: int = 1,
) -> batching.Strategy:
  """The strategy `name` with its settings from cfg.strategy[name] (see configs/compare.py).

  batch_multiple: the device count: batches are widened to a multiple of it with empty rows,
    after they are composed, so every device count trains on the same batches.
  """
  return batching.make_strategy(
    name, dataset, seed=seed, batch_multiple=batch_multiple, **config.strategy_kwargs(name, cfg)
  )


def eval_chunk_length(cfg: ml_collections.ConfigDict) -> int:
  """config.eval.chunk_length, or 0 (whole sequences) for a bidirectional model, whose backward
  direction needs each sequence's end first."""
  return 0 if cfg.model.bidirectional else int(cfg.eval.chunk_length)


def eval_strategy(
  dataset: RaggedDataset, cfg: ml_collections.ConfigDict, batch_multiple: int = 1
) -> list[batching.Strategy]:
  """The one evaluator for every row, exact and bounded: whole sequences in buckets, masked;
  sequences longer than config.eval.chunk_length in chunks with the state carried across them
  (`batching.held_out_strategies`)."""
  return batching.held_out_strategies(
    dataset,
    tokens_per_batch=cfg.eval.tokens_per_batch,
    num_buckets=cfg.eval.num_buckets,
    chunk_length=eval_chunk_length(cfg),
    batch_multiple=batch_multiple,
    seed=0,
  )


def planned_steps_from_config(
  strategy: batching.Strategy, cfg: ml_collections.ConfigDict
) -> np.ndarray:
  """The real tokens of each optimizer step the row will take within the config's budget."""
  return guards.planned_steps(strategy, cfg.train.real_tokens or None, cfg.train.epochs or None)


def new_train_state(
  cfg: ml_collections.ConfigDict,
  dataset: RaggedDataset,
  seed: int,
  total_steps: int,
  right_padded: bool = True,
) -> train.TrainState:
  """The row's initial state: the model's init for `seed` (right_padded: the row's strategy's,
  see `make_model`) and the optimizer, whose schedule (if any) spans the row's `total_steps`
  planned optimizer steps."""
  return train.create_train_state(
    make_model(cfg, dataset, right_padded),
    make_optimizer(cfg, total_steps),
    dataset,
    seed=seed,
    class_weights=cfg.train.class_weights or None,
  )
