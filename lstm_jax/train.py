"""Training: a train state, pure jitted steps with counted compiles (the `fit` loop that runs
them is `lstm_jax.loop`).

    state, metrics, carry = train_step(state, batch, carry)
    metrics, carry = eval_step(state, batch, carry)

The loss of a batch is sum(weights * per_step_loss) / sum(weights); metrics come back as sums
(`loss_sum`, `weight_sum`, `correct_sum`, `real_tokens`) so they add up exactly across batches
(never an average of batch means). The incoming carry's gradient is stopped, which is what
truncated BPTT needs; strategies that do not carry state pass the zero carry.

`StepFunctions` holds the jitted steps as `CountedJit`s (traces, compiles and compile seconds per
batch shape); `precompile` and `compile_in_background` compile a strategy's shapes ahead.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh

from lstm_jax import sharding
from lstm_jax.backend import step_backend
from lstm_jax.batching import Batch, Strategy, assemble
from lstm_jax.compiles import CountedJit
from lstm_jax.data import RaggedDataset
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.layers import resolve_cell
from lstm_jax.model import Carry, SequenceModel, layer_params

if TYPE_CHECKING:
  pass

LOSS_KINDS = ("classification", "regression")


class TrainState(train_state.TrainState):
  """flax's TrainState plus the (static) model, loss kind and loss, so steps need nothing
  else."""

  model: nn.Module = struct.field(pytree_node=False, default=None)
  loss_kind: str = struct.field(pytree_node=False, default="classification")
  # a custom loss, `loss(preds, targets) -> <float32>[B, T]` per step, or None: the loss kind's
  # (softmax cross-entropy, or the mean squared error over the target's dimensions). Static:
  # a step compiles for its function.
  loss: Callable | None = struct.field(pytree_node=False, default=None)
  rng: Any = None  # <uint32>[2] the training key; a step's randomness is fold_in(rng, step)
  # <float32>[num_classes] each class's weight in the training loss (`class_weights`), or None:
  # the plain weighted mean. Made from the data and config, so checkpoints do not hold it.
  class_weights: Any = None


def loss_kind_of(dataset: RaggedDataset) -> str:
  return "classification" if dataset.is_classification else "regression"


def create_train_state(
  model: SequenceModel,
  optimizer: optax.GradientTransformation,
  dataset: RaggedDataset,
  *,
  seed: int = 0,
  class_weights: str | Sequence[float] | None = None,
  loss: Callable | None = None,
) -> TrainState:
  """Initialises `model` for `dataset`'s inputs and pairs it with `optimizer`.

  Args:
    model: a linen `SequenceModel` (for an NNX model: `nnx_model.train_state`).
    optimizer: an optax transformation.
    dataset: what the model will train on: its inputs' shape, its targets' kind.
    seed: the parameters' initialisation and the dropout key.
    class_weights: (classification) each class's weight in the training loss, "balanced" (n /
      (C * n_c) from `dataset`'s targets, scikit-learn's rule: every class weighs as much in
      all) or one weight per class; the loss is then sum(w_i c_i l_i) / sum(w_i c_i).
      Evaluation is unweighted.
    loss: a custom per-step loss, `loss(preds, targets) -> <float32>[B, T]` (preds [B, T, C or
      D], targets the batch's: int classes [B, T] or floats [B, T, D]), e.g. label smoothing or
      a weighted MSE. The steps weigh and average it as they do the built-in one (padding and
      steps without a target weigh 0), for training and evaluation alike; accuracy is still
      the argmax's. None: softmax cross-entropy for classification, the mean squared error for
      regression.

  Returns:
    A `TrainState` at step 0 (the model, loss kind and loss static; parameters from `seed`).
  """
  check_model_fits_data(model, dataset)
  weights = resolve_class_weights(class_weights, dataset)
  if dataset.is_tokens:
    example = jnp.zeros((1, 1), jnp.int32)
  else:
    example = jnp.zeros((1, 1, dataset.num_features), jnp.float32)
  params = model.init(jax.random.key(seed), example)["params"]
  state = TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=optimizer,
    model=model,
    loss_kind=loss_kind_of(dataset),
    loss=loss,
    rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1),
    class_weights=weights,
  )
  return state.replace(step=jnp.asarray(0, jnp.int32))  # an array: one signature from step 0 on


def resolve_class_weights(class_weights, dataset: RaggedDataset):
  """`create_train_state`'s class_weights as <float32>[num_classes], or None."""
  if class_weights is None or (isinstance(class_weights, str) and not class_weights):
    return None
  if not dataset.is_classification:
    raise ConfigError(
      f"class weights apply to classification; {dataset.name} has regression targets. Leave "
      f"class_weights unset (--config.train.class_weights='' in the runner)."
    )
  n = int(dataset.num_classes or 0)
  if isinstance(class_weights, str) and class_weights == "balanced":
    counts = np.bincount(np.asarray(dataset.targets).reshape(-1), minlength=n)[:n]
    w = np.where(counts > 0, counts.sum() / (n * np.maximum(counts, 1)), 0.0)
  else:
    if isinstance(class_weights, str):
      try:
        class_weights = [float(x) for x in class_weights.split(",")]
      except ValueError:
        raise ConfigError(
          f"class weights {class_weights!r}: give 'balanced' or {n} numbers separated by commas "
          f"(--config.train.class_weights in the runner)."
        ) from None
    w = np.asarray(class_weights, np.float64).reshape(-1)
    if w.size != n or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
      raise ConfigError(
        f"class weights {[float(x) for x in w]}: need {n} finite weights >= 0 (one per class, "
        f"not all 0), or 'balanced' (--config.train.class_weights in the runner)."
      )
  return jnp.asarray(w, jnp.float32)


_TAKES_FEATURES: set = set()  # (model, features, parameter shapes) a trace has accepted
_MOST_REMEMBERED = 256


def _check_cell_takes_features(model: nn.Module, num_features: int | None, params: Any) -> None:
  """Another cell's parameter names are its own: whether the model takes these inputs is asked
  of a trace of the model (jax.eval_shape, ~50 ms), once for each model, feature count and
  parameter shapes (evaluate checks before every evaluation)."""
  leaves = tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(params))
  key: tuple | None = (model, num_features, jax.tree.structure(params), leaves)
  try:
    if key in _TAKES_FEATURES:
      return
  except TypeError:  # a model with an unhashable field (a user's cell): asked every time
    key = None
  x = jax.ShapeDtypeStruct((1, 1, num_features), jnp.float32)
  try:
    jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x)
  except Exception as e:  # a shape mismatch, in whatever form the cell raises it
    raise DataError(
      f"the data has {num_features} features per step but the model's "
      f"parameters do not take them ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
      f"re-initialise the model for this data."
    ) from e
  if key is not None:
    if len(_TAKES_FEATURES) >= _MOST_REMEMBERED:
      _TAKES_FEATURES.clear()
    _TAKES_FEATURES.add(key)


def check_model_fits_data(
  model: nn.Module, dataset: RaggedDataset, params: Any | None = None
) -> None:
  """Raises DataError, before any compile, if the data cannot feed the model or its head."""
  if not isinstance(model, nn.Module):
    hint = (
      " For an NNX model use nnx_model.train_state(model, optimizer, dataset) or nnx_model.fit."
      if type(model).__module__.endswith("nnx_model")
      else ""
    )
    raise ConfigError(
      f"the train state takes a linen model (model.SequenceModel), got a "
      f"{type(model).__module__}.{type(model).__name__}.{hint}"
    )
  if dataset.is_tokens != (model.vocab_size is not None):
    raise DataError(
      f"the data holds {'token ids' if dataset.is_tokens else 'float features'} but the model "
      f"{'embeds tokens' if model.vocab_size is not None else 'takes float features'}; set "
      f"SequenceModel(vocab_size=...) for token data and leave it None for features."
    )
  if dataset.is_tokens and dataset.vocab_size > model.vocab_size:
    raise DataError(
      f"the data's vocabulary has {dataset.vocab_size} tokens, the model's embedding "
      f"{model.vocab_size}; raise the model's vocab_size."
    )
  if params is not None and not dataset.is_tokens and resolve_cell(model.cell) is not None:
    _check_cell_takes_features(model, dataset.num_features, params)
  elif params is not None and not dataset.is_tokens:
    expected = layer_params(params)[0]["kernel"].shape[0]
    if expected != dataset.num_features:
      raise DataError(
        f"the data has {dataset.num_features} features per step but the model was "
        f"initialised for {expected}; re-initialise the model for this data."
      )
  if dataset.is_classification:
    top = dataset.max_target
    if top >= model.num_outputs:
      raise DataError(
        f"label {top} is out of range for a head with {model.num_outputs} outputs "
        f"(classes 0..{model.num_outputs - 1}); set num_outputs >= "
        f"{dataset.num_classes} (the data's num_classes)."
      )
  elif dataset.target_dim != model.num_outputs:
    raise DataError(
      f"the regression targets have {dataset.target_dim} dims per step but the head "
      f"has {model.num_outputs} outputs; set num_outputs={dataset.target_dim}."
    )


def per_step_loss(preds, targets, loss_kind: str, loss: Callable | None = None):
  """(loss, correct) per step, each <float32>[B, T]; correct is 0 for regression. `loss`: a
  custom per-step loss (`create_train_state`) in place of the kind's."""
  if loss_kind not in LOSS_KINDS:
    raise ConfigError(f"loss_kind must be one of {LOSS_KINDS}, got {loss_kind!r}.")
  if loss_kind == "classification":
    correct = (jnp.argmax(preds, axis=-1) == targets).astype(jnp.float32)
  else:
    correct = jnp.zeros(preds.shape[:2], jnp.float32)
  if loss is not None:
    out = jnp.asarray(loss(preds, targets))
    if out.shape != preds.shape[:2]:
      raise ConfigError(
        f"the custom loss returned {out.dtype}{list(out.shape)}; it must give one value per "
        f"step, <float32>{list(preds.shape[:2])} (reduce over the class or target axis only)."
      )
    return out.astype(jnp.float32), correct
  if loss_kind == "classification":
    return optax.softmax_cross_entropy_with_integer_labels(preds, targets), correct
  return jnp.mean(jnp.square(preds - targets), axis=-1), correct


def _apply(params, state: TrainState, batch: Batch, carry: Carry, training: bool = False):
  """The model on the batch: (predictions, carry). The batch's layout goes in as its mask and
  resets, or, where the model's backend fuses right-padded rows (`backend.step_backend`), as
  its rows' lengths."""
  kwargs = {}
  if training:  # dropout on, its masks seeded by the step: fold_in(rng, step)
    kwargs = dict(deterministic=False, rngs={"dropout": jax.random.fold_in(state.rng, state.step)})
  layout: dict[str, Any] = dict(mask=batch.mask, resets=batch.resets)
  right_padded = batch.seq_lengths is not None
  if step_backend(state.model, right_padded=right_padded, training=training) != "scan":
    layout = dict(seq_lengths=batch.seq_lengths)  # one sequence per row from step 0
  return state.apply_fn({"params": params}, batch.inputs, initial_carry=carry, **layout, **kwargs)


def _forward(params, state: TrainState, batch: Batch, carry: Carry, training: bool = False):
  carry = jax.lax.stop_gradient(carry)
  preds, new_carry = _apply(params, state, batch, carry, training)
  loss, correct = per_step_loss(preds, batch.targets, state.loss_kind, state.loss)
  metrics = dict(
    loss_sum=jnp.sum(batch.weights * loss),
    weight_sum=jnp.sum(batch.weights),
    correct_sum=jnp.sum(batch.weights * correct),
    real_tokens=jnp.sum(batch.mask, dtype=jnp.int32),
  )
  mean_loss = metrics["loss_sum"] / jnp.maximum(metrics["weight_sum"], 1e-12)
  if training and state.class_weights is not None:  # the gradient's loss only; metrics plain
    w = batch.weights * jnp.take(state.class_weights, batch.targets, mode="clip")
    mean_loss = jnp.sum(w * loss) / jnp.maximum(jnp.sum(w), 1e-12)
  return mean_loss, (metrics, new_carry)


def train_step(state: TrainState, batch: Batch, carry: Carry, lr_scale=1.0):
  """One optimizer step on the batch's weighted mean loss. Returns (state, metrics, carry).

  lr_scale: multiplies the optimizer's update, i.e. the learning rate for optimizers whose update
    is linear in it (Adam, SGD, ...): variable-length BPTT scales it by chunk length / base.
    1.0 leaves the update exactly as it is (x * 1.0 == x in floating point).
  """
  grads, (metrics, carry) = jax.grad(_forward, has_aux=True)(
    state.params, state, batch, carry, training=True
  )
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  updates = jax.tree.map(lambda u: u * jnp.asarray(lr_scale, u.dtype), updates)
  state = state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  )
  return state, metrics, carry


def eval_step(state: TrainState, batch: Batch, carry: Carry):
  """Metrics (sums) of one batch without updating. Returns (metrics, carry)."""
  _, (metrics, carry) = _forward(state.params, state, batch, carry)
  return metrics, carry


@dataclasses.dataclass
class StepFunctions:
  """The jitted train and eval steps, each counting its traces and compiles per shape."""

  train: CountedJit
  eval: CountedJit

  mesh: Mesh | None = None

  @classmethod
  def create(cls, mesh: Mesh | None = None) -> StepFunctions:
    """The steps; with a mesh, jitted with shardings: state and metrics replicated, batch and
    carry split along the mesh's data axis (XLA adds the gradient all-reduce)."""
    if mesh is None:
      return cls(
        train=CountedJit(train_step, name="train_step", donate_argnums=(0,)),
        eval=CountedJit(eval_step, name="eval_step"),
      )
    rep, split = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return cls(
      train=CountedJit(
        train_step,
        name="train_step",
        donate_argnums=(0,),
        in_shardings=(rep, split, split, rep),
        out_shardings=(rep, rep, split),
      ),
      eval=CountedJit(
        eval_step, name="eval_step", in_shardings=(rep, split, split), out_shardings=(rep, split)
      ),
      mesh=mesh,
    )

  def batch(self, dataset: RaggedDataset, plan, right_padded: bool = False) -> Batch:
    """The batch as the steps take it: numpy arrays, or (with a mesh) a global array split over
    the data axis, of which this process assembles only its own rows. right_padded: the
    strategy's (`Strategy.right_padded`): the batch holds each row's length."""
    if self.mesh is None:
      return assemble(dataset, plan, right_padded)
    return sharding.shard_batch(dataset, plan, self.mesh, right_padded=right_padded)

  def zero_carry(self, model, batch_size: int):
    carry = model.zero_carry(batch_size)
    return carry if self.mesh is None else sharding.shard_carry(carry, self.mesh)


def abstract_batch(
  dataset: RaggedDataset, shape: tuple[int, int], right_padded: bool = False
) -> Batch:
  """The ShapeDtypeStructs of a [B, T] batch of `dataset` (what a step compiles for);
  right_padded: with the rows' lengths (`assemble`'s)."""
  b, t = shape
  sds = jax.ShapeDtypeStruct
  inputs = (
    sds((b, t), jnp.int32) if dataset.is_tokens else sds((b, t, dataset.num_features), jnp.float32)
  )
  targets = (
    sds((b, t), jnp.int32)
    if dataset.is_classification
    else sds((b, t, dataset.target_dim), jnp.float32)
  )
  shapes: dict[str, Any] = dict(  # the contract's shapes, in place of its arrays
    inputs=inputs,
    targets=targets,
    weights=sds((b, t), jnp.float32),
    mask=sds((b, t), jnp.bool_),
    resets=sds((b, t), jnp.bool_),
    seq_lengths=sds((b,), jnp.int32) if right_padded else None,
  )
  return Batch(**shapes)


def abstract_step_args(
  fn: CountedJit,
  state: TrainState,
  dataset: RaggedDataset,
  shape: tuple[int, int],
  right_padded: bool = False,
) -> tuple:
  """The arguments `fn` (a train or eval step) takes for batches of `shape` (right_padded: the
  strategy's), as ShapeDtypeStructs: (state, batch, carry), and the train step's lr_scale."""
  carry = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.model.zero_carry(shape[0])
  )
  args = (state, abstract_batch(dataset, shape, right_padded), carry)
  return args + ((jax.ShapeDtypeStruct((), jnp.float32),) if fn.fn is train_step else ())


def precompile(fn: CountedJit, state: TrainState, strategy: Strategy, epoch: int = 0) -> None:
  """Compiles `fn` (train or eval step) for every shape `strategy` emits in `epoch`."""
  for shape in sorted(strategy.plan(epoch).shapes()):
    fn.compile(*abstract_step_args(fn, state, strategy.dataset, shape, strategy.right_padded))


def shapes_in_order(strategy: Strategy, epoch: int = 0, first: Sequence = ()) -> list[tuple]:
  """The shapes `strategy` emits in `epoch` in the order training first meets them (then any
  other shape it emits in later epochs), with the shapes in `first` moved to the front."""
  order = strategy.plan(epoch).shapes()
  order += [s for s in strategy.shapes() if s not in order]
  return list(dict.fromkeys([*first, *order]))


def compile_in_background(
  fn: CountedJit,
  state: TrainState,
  strategy: Strategy,
  epoch: int = 0,
  workers: int = 1,
  first: Sequence = (),
  on_compiled: Callable | None = None,
) -> None:
  """Starts compiling `fn` (the train step) for every shape of `strategy` in the background,
  in the order training meets them (`shapes_in_order`), and returns at once."""
  fn.compile_in_background(
    [
      abstract_step_args(fn, state, strategy.dataset, s, strategy.right_padded)
      for s in shapes_in_order(strategy, epoch, first)
    ],
    workers,
    on_compiled,
  )
