"""Evaluation and prediction with a trained state, exact under any strategy: `evaluate` (the
loss and metric sums over a strategy's batches, each step once), `predict` (each sequence's
outputs whole) and `predict_batches` (batch by batch, for data larger than memory).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import numpy as np

from lstm_jax import batching, sharding
from lstm_jax.batching import Batch, Strategy, assemble
from lstm_jax.compiles import CountedJit
from lstm_jax.data import RaggedDataset
from lstm_jax.model import Carry
from lstm_jax.train import (
  StepFunctions,
  TrainState,
  _apply,
  check_model_fits_data,
  precompile,
)


def predict_step(state: TrainState, batch: Batch, carry: Carry):
  """(the model's outputs <float32>[B, T, ...] on the batch (logits for classification), the
  carry after it: what the next chunk of the same rows starts from)."""
  return _apply(state.params, state, batch, carry)


class Piece(NamedTuple):
  """Part of one sequence's predictions (`predict_batches`): its steps [start, start + len)."""

  seq: int  # the sequence's index in the dataset
  start: int  # its first step here
  outputs: np.ndarray  # <float32>[n, C or D]: the model's outputs at those steps
  targets: np.ndarray  # <int32>[n] or <float32>[n, D]; a sequence-level target on its last step


@dataclasses.dataclass
class Predictions:
  """What `predict` returns, sequence by sequence in the dataset's order.

  outputs: per sequence, its model outputs at each of its steps, <float32>[length, C or D]
  last:    <float32>[N, C or D], each sequence's output at its last step (what a sequence-level
           label is scored on)
  probabilities, classes: for classification, softmax and argmax of `last` (sequence-level
           labels) or of each step's output (step-level: lists, like `outputs`); else None
  """

  outputs: list[np.ndarray]
  last: np.ndarray
  probabilities: Any = None
  classes: Any = None
  compiles: int = 0  # of the predict step, one per batch shape


def predict_batches(
  state: TrainState,
  dataset: RaggedDataset,
  *,
  batch_size: int = 32,
  num_buckets: int = 4,
  predict_jit: CountedJit | None = None,
  chunk_length: int = 0,
) -> Iterator[list[Piece]]:
  """`predict`'s computation, one batch at a time, keeping nothing: yields for each batch the
  list of its `Piece`s (sequence index, first step, outputs <float32>[n, C or D], targets
  <int32>[n] or <float32>[n, D], a sequence-level target on the last step). Every step of
  every sequence comes once, computed as the whole sequence would be (bucketed by length, the
  mask making padding change nothing), so a store larger than memory is scored in one pass.

  Args:
    state, dataset, batch_size, num_buckets: as `predict`'s.
    predict_jit: the CountedJit of `predict_step` to run (its compiles are then the caller's
      to read); `fit` and `evaluate` take the train and eval steps as `steps` (StepFunctions).
    chunk_length: sequences longer than this come in pieces of this many steps, the state
      carried from piece to piece (exact; memory bounded by the chunk, not the document); 0:
      each sequence in one piece. Not for a bidirectional model.

  Yields:
    For each batch, a list of `Piece`s; a sequence whole is one piece from step 0.
  """
  check_model_fits_data(state.model, dataset, state.params)
  fn = predict_jit or CountedJit(predict_step, name="predict_step")
  lengths = np.asarray(dataset.lengths)
  long = np.flatnonzero(lengths > chunk_length) if chunk_length else np.zeros(0, np.int64)
  short = np.flatnonzero(lengths <= chunk_length) if len(long) else np.arange(len(dataset))
  parts: list[tuple[np.ndarray, batching.Strategy]] = []
  if len(short):
    ds = dataset if len(short) == len(dataset) else dataset.subset(short)
    parts.append((short, batching.Bucket(  # no wider than the data: fewer is fine
      ds,
      batch_size=min(batch_size, len(ds)),
      num_buckets=min(num_buckets, len(np.unique(ds.lengths))),
    )))  # fmt: skip
  if len(long):
    ds = dataset.subset(long)
    parts.append(
      (long, batching.TBPTT(ds, chunk_length=chunk_length, num_streams=min(batch_size, len(ds))))
    )
  for index, strategy in parts:
    carry = None
    for plan in strategy.plan(0):
      if carry is None or not strategy.carries_state:
        carry = state.model.zero_carry(plan.batch_size)
      batch = assemble(strategy.dataset, plan, strategy.right_padded)
      preds, carry = fn(state, batch, carry)
      preds = np.asarray(preds)
      yield [
        Piece(
          int(index[seq]), int(start), preds[row, pos : pos + n], batch.targets[row, pos : pos + n]
        )
        for row, seq, start, pos, n in plan.segments
      ]


def predict(
  state: TrainState, dataset: RaggedDataset, *, batch_size: int = 32, num_buckets: int = 4
) -> Predictions:
  """The model's outputs for every sequence of `dataset`, each computed whole (bucketed by
  length, so little is padding; the mask makes padding change nothing: each sequence's outputs
  are what it gives alone). For research code: per-sequence classes and probabilities, or
  per-step outputs. In memory; `predict_batches` streams the same computation.

  Args:
    state: the trained state.
    dataset: the sequences to predict (in memory or a store).
    batch_size: sequences per batch (at most the dataset's size).
    num_buckets: length buckets, so little is padding (one compile each).

  Returns:
    `Predictions`: `outputs` per sequence, `last` (each one's last step), for classification
    `probabilities` and `classes`, and the predict step's `compiles`.
  """
  fn = CountedJit(predict_step, name="predict_step")
  outputs: list = [None] * len(dataset)
  for items in predict_batches(
    state, dataset, batch_size=batch_size, num_buckets=num_buckets, predict_jit=fn
  ):
    for piece in items:
      outputs[piece.seq] = piece.outputs
  last = np.stack([o[-1] for o in outputs])
  out = Predictions(outputs=outputs, last=last, compiles=fn.compiles)
  if state.loss_kind == "classification":

    def softmax(x):
      e = np.exp(x - x.max(axis=-1, keepdims=True))
      return e / e.sum(axis=-1, keepdims=True)

    if dataset.target_level == "sequence":
      out.probabilities, out.classes = softmax(last), np.argmax(last, axis=-1)
    else:
      out.probabilities = [softmax(o) for o in outputs]
      out.classes = [np.argmax(o, axis=-1) for o in outputs]
  return out


def evaluate(
  state: TrainState,
  strategy: Strategy | Sequence[Strategy],
  *,
  steps: StepFunctions | None = None,
  epoch: int = 0,
) -> dict:
  """Weighted mean loss (and accuracy for classification) over one epoch of `strategy`.

  Args:
    state: the train state to evaluate (not changed).
    strategy: the batches to evaluate on; any strategy gives the same numbers on the same
      sequences (float32 rounding), padding weighing nothing. Several (each over its own
      sequences, as `batching.held_out_strategies` gives them): their sums add up.
    steps: step functions to reuse (their eval step's compiles); None: fresh ones.
    epoch: which epoch's plan of `strategy` to evaluate.

  Returns:
    {"loss", "weight_sum", "real_tokens"} and, for classification, "accuracy"; the loss is the
    train state's (its custom `loss`, if any), unweighted by class weights.
  """
  parts = [strategy] if isinstance(strategy, Strategy) else list(strategy)
  steps = steps or StepFunctions.create()
  for part in parts:
    check_model_fits_data(state.model, part.dataset, state.params)
    precompile(steps.eval, state, part, epoch)
  if steps.mesh is not None:
    state = sharding.replicate(state, steps.mesh)
  per_batch = []
  for part in parts:
    carry = None
    for plan in part.plan(epoch):
      if carry is None or not part.carries_state:
        carry = steps.zero_carry(state.model, plan.batch_size)
      batch = steps.batch(part.dataset, plan, part.right_padded)
      metrics, carry = steps.eval(state, batch, carry)
      per_batch.append(metrics)  # fetched once at the end: no per-batch host sync
  per_batch = jax.device_get(per_batch)
  totals = {k: float(np.sum([m[k] for m in per_batch], dtype=np.float64)) for k in per_batch[0]}
  out = dict(
    loss=totals["loss_sum"] / totals["weight_sum"],
    weight_sum=totals["weight_sum"],
    real_tokens=int(totals["real_tokens"]),
  )
  if state.loss_kind == "classification":
    out["accuracy"] = totals["correct_sum"] / totals["weight_sum"]
  return out
