"""Flax NNX front end: the masked, resettable LSTM and its sequence model as `nnx.Module`s.

    from flax import nnx
    from lstm_jax import nnx_model

    model = nnx_model.SequenceModel(hidden_size=64, num_outputs=2, num_features=3, rngs=nnx.Rngs(0))
    preds, carry = model(inputs, mask, resets)            # a lstm_jax Batch's arrays

The parameters are laid out exactly as linen's `lstm_jax.model.SequenceModel` holds them
(`embed/embedding`, `lstm/layer_k/{kernel, recurrent_kernel, bias}`, `head/{kernel, bias}`; any
other cell under `rnn/layer_k/cell`), and each layer computes through the same function
(`model.lstm_layer`: the hand-written backward pass, in-step or hoisted projection, bfloat16
matmuls; `model.cell_layer` for other cells), so `to_linen_params` and
`from_linen_params` convert weights both ways exactly and both front ends give the same outputs
and gradients (tests/test_nnx.py).

Training under every strategy: `fit(model, strategy, optimizer, ...)` runs `loop.fit` (compile
counts, checkpoints, every strategy) on the model's linen twin (`linen_twin`: the same
parameters, the same computation) and writes the trained parameters back into the NNX model.
Your own NNX loop (`nnx.Optimizer`, `nnx.jit`) takes lstm_jax batches as they are:
docs/research.md "Flax NNX".

Every model setting is linen's: any cell (`cell="gru"`, ..., or one's own linen cell class:
its parameters are held as nnx.Params in linen's tree and computed by `model.cell_layer`), the
bidirectional stack (`model.bidirectional_stack`) and dropout (nnx.Dropout; off in `eval()`
mode or with deterministic=True, as linen's deterministic=True).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lstm_jax import backend as backend_lib
from lstm_jax import cudnn, layers, loop, train
from lstm_jax import model as linen_model
from lstm_jax import readout as readout_lib
from lstm_jax.batching import Strategy
from lstm_jax.data import RaggedDataset
from lstm_jax.errors import DataError

Array = jax.Array


class LSTMLayer(nnx.Module):
  """One masked LSTM layer (linen's `model.LSTMLayer`, same parameters and computation)."""

  def __init__(
    self,
    in_features: int,
    hidden_size: int,
    *,
    input_projection: str = "auto",
    unroll: int = 1,
    backward: str = "manual",
    matmul_dtype: str = "float32",
    initializer: str = "auto",
    rngs: nnx.Rngs,
  ):
    h, initializer = hidden_size, linen_model.resolve_initializer("lstm", initializer)
    kernel_init, recurrent_init, bias_init = layers.lstm_initializers(initializer, h)
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, 4 * h)))
    self.recurrent_kernel = nnx.Param(recurrent_init(rngs.params(), (h, 4 * h)))
    self.bias = nnx.Param(bias_init(rngs.params() if initializer == "pytorch" else None, (4 * h,)))
    self.hidden_size, self.input_projection, self.unroll = hidden_size, input_projection, unroll
    self.backward, self.matmul_dtype = backward, matmul_dtype

  def __call__(self, x_BxTxF: Array, mask_BxT: Array, resets_BxT: Array, carry):
    features = self.kernel[...].shape[0]
    if x_BxTxF.shape[-1] != features:
      raise DataError(
        f"the inputs have {x_BxTxF.shape[-1]} features per step but the layer was built for "
        f"{features}; build it with in_features={x_BxTxF.shape[-1]} or feed it "
        f"{features}-feature inputs."
      )
    params = dict(
      kernel=self.kernel[...], recurrent_kernel=self.recurrent_kernel[...], bias=self.bias[...]
    )
    settings = layers.LayerSettings(
      self.input_projection, self.unroll, self.backward, self.matmul_dtype
    )
    return layers.lstm_layer(params, x_BxTxF, mask_BxT, resets_BxT, tuple(carry), settings)


class CellLayer(nnx.Module):
  """One masked layer of any other cell (linen's `model.CellLayer`): the cell's parameters, as
  linen's cell holds them, under `cell`; computed by `model.cell_layer`, the same masked step."""

  def __init__(
    self,
    cell: Any,
    in_features: int,
    hidden_size: int,
    *,
    unroll=1,
    backward="manual",
    initializer="auto",
    rngs,
  ):
    cls: Any = layers.resolve_cell(cell)  # a cell class here (None names the built-in)
    self.cls, self.hidden_size, self.unroll = cls, hidden_size, unroll
    self.backward = backward
    key = rngs.params()
    params = layers.cell_params(cls, in_features, hidden_size, key, initializer)
    self.cell = nnx.data(jax.tree.map(nnx.Param, params))

  def __call__(self, x_BxTxF: Array, mask_BxT: Array, resets_BxT: Array, carry):
    params = jax.tree.map(lambda v: v[...], self.cell, is_leaf=_is_variable)
    return layers.cell_layer(
      self.cls,
      self.hidden_size,
      params,
      x_BxTxF,
      mask_BxT,
      resets_BxT,
      carry,
      layers.LayerSettings(unroll=self.unroll, backward=self.backward),
    )


def _dropping(dropout: nnx.Dropout, deterministic: bool | None) -> bool:
  """Whether `dropout` drops in this call (deterministic=None: the module's own mode, as
  nnx.Dropout reads it)."""
  off = dropout.deterministic if deterministic is None else deterministic
  return dropout.rate > 0 and not off


def _fused_params(layer: Any) -> dict:
  """An NNX LSTM layer's parameters as the fused path (`lstm_jax.cudnn`) takes linen's."""
  return dict(
    kernel=layer.kernel[...], recurrent_kernel=layer.recurrent_kernel[...], bias=layer.bias[...]
  )


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _layer(cell: Any, in_features: int, hidden_size: int, *, rngs, **layer) -> nnx.Module:
  """An LSTMLayer for cell "lstm", else a CellLayer (as linen's `model.recurrent_layer`)."""
  if layers.resolve_cell(cell) is None:
    return LSTMLayer(in_features, hidden_size, rngs=rngs, **layer)
  linen_model.check_cell_matmul(cell, layer.get("matmul_dtype", "float32"))
  return CellLayer(
    cell,
    in_features,
    hidden_size,
    rngs=rngs,
    unroll=layer.get("unroll", 1),
    backward=layer.get("backward", "manual"),
    initializer=layer.get("initializer", "auto"),
  )


class LSTM(nnx.Module):
  """A stack of `num_layers` masked layers of `cell` (default the LSTM); attributes layer_0,
  layer_1, ... as linen's. Dropout as linen's `model.LSTM`: `dropout_rate` between layers,
  `input_dropout` / `output_dropout` variational (one mask per sequence and feature); off in
  `model.eval()` mode or with deterministic=True. `backend` as linen's (`backend.BACKENDS`): the
  fused cuDNN LSTM for right-padded rows (`seq_lengths=`) where it can serve the call."""

  def __init__(  # noqa: PLR0913 (the stack's settings, as linen's fields)
    self,
    in_features: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    cell: Any = "lstm",
    dropout_rate: float = 0.0,
    input_dropout: float = 0.0,
    output_dropout: float = 0.0,
    backend: str = "auto",
    rngs,
    **layer,
  ):
    self.hidden_size, self.num_layers, self.cell = hidden_size, num_layers, cell
    backend_lib.stack_backend(self, backend, cell, layer.get("matmul_dtype", "float32"))
    for k in range(num_layers):
      f = in_features if k == 0 else hidden_size
      setattr(self, f"layer_{k}", _layer(cell, f, hidden_size, rngs=rngs, **layer))
    self.input_dropout = nnx.Dropout(input_dropout, broadcast_dims=(1,), rngs=rngs)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.output_dropout = nnx.Dropout(output_dropout, broadcast_dims=(1,), rngs=rngs)

  def zero_carry(self, batch_size: int):
    return linen_model.zero_carry(batch_size, self.hidden_size, self.num_layers, self.cell)

  def __call__(
    self,
    inputs,
    *,
    mask=None,
    resets=None,
    initial_carry=None,
    deterministic=None,
    seq_lengths=None,
  ):
    drops = (self.input_dropout, self.dropout, self.output_dropout)
    dropping = any(_dropping(d, deterministic) for d in drops)
    fused, lengths = backend_lib.fused_call(self, inputs, mask, resets, seq_lengths, dropping)
    mask, resets = linen_model.check_inputs(inputs, mask, resets, seq_lengths)
    carry = self.zero_carry(inputs.shape[0]) if initial_carry is None else initial_carry
    if fused is not None:  # linen's fused path: the same parameters in one call
      fused_layers = [_fused_params(getattr(self, f"layer_{k}")) for k in range(self.num_layers)]
      return cudnn.lstm(fused_layers, inputs, lengths, initial_carry=carry, impl=fused)
    x, new_carry = self.input_dropout(inputs, deterministic=deterministic), []
    for k in range(self.num_layers):
      if k > 0:
        x = self.dropout(x, deterministic=deterministic)
      x, c = getattr(self, f"layer_{k}")(x, mask, resets, carry[k])
      new_carry.append(c)
    return self.output_dropout(x, deterministic=deterministic), tuple(new_carry)


class BidirectionalLSTM(nnx.Module):
  """linen's `model.BidirectionalLSTM` (whole sequences per row: pad, bucket, pack): layers
  forward_k and backward_k of `cell`, computed by `model.bidirectional_stack`, or by the fused
  LSTM in one call under `backend` (as linen's)."""

  def __init__(
    self, in_features, hidden_size, num_layers=1, *, cell="lstm", backend="auto", rngs, **layer
  ):
    self.hidden_size, self.num_layers, self.cell = hidden_size, num_layers, cell
    backend_lib.stack_backend(self, backend, cell, layer.get("matmul_dtype", "float32"))
    for k in range(num_layers):
      f = in_features if k == 0 else 2 * hidden_size
      for direction in ("forward", "backward"):
        setattr(self, f"{direction}_{k}", _layer(cell, f, hidden_size, rngs=rngs, **layer))

  def zero_carry(self, batch_size: int):
    return linen_model.bidirectional_zero_carry(
      batch_size, self.hidden_size, self.num_layers, self.cell
    )

  def __call__(
    self,
    inputs,
    *,
    mask=None,
    resets=None,
    initial_carry=None,
    deterministic=None,
    seq_lengths=None,
  ):
    del deterministic  # no dropout (as linen's)
    fused, lengths = backend_lib.fused_call(self, inputs, mask, resets, seq_lengths)
    mask, resets = linen_model.check_inputs(inputs, mask, resets, seq_lengths)
    carry = self.zero_carry(inputs.shape[0]) if initial_carry is None else initial_carry
    if fused is not None:
      fused_layers = [
        tuple(_fused_params(getattr(self, f"{d}_{k}")) for d in ("forward", "backward"))
        for k in range(self.num_layers)
      ]
      return cudnn.lstm(
        fused_layers, inputs, lengths, bidirectional=True, initial_carry=carry, impl=fused
      )
    return linen_model.bidirectional_stack(
      lambda name: getattr(self, name), self.num_layers, inputs, mask, resets, carry
    )


class SequenceModel(nnx.Module):
  """Embedding (token inputs, `vocab_size`) or features (`num_features`) -> a recurrent stack
  -> a Dense head at every step; `model(inputs, mask=, resets=, initial_carry=)` returns
  (predictions <float32>[B, T, num_outputs], zero at masked steps, carry), as linen's
  SequenceModel does. Every setting is linen's: `cell` ("lstm", "gru", "mgu", "simple",
  "flax_lstm", "optimized_lstm" or a linen cell class), `bidirectional`, the dropouts,
  `readout` ("last", "mean", "max", "attention"), ...; the stack sits under `lstm` for the LSTM
  and `rnn` for any other cell, as in linen."""

  def __init__(  # noqa: PLR0913 (the model's settings, as linen's fields)
    self,
    hidden_size: int,
    num_outputs: int,
    *,
    num_features: int | None = None,
    vocab_size: int | None = None,
    embed_dim: int = 64,
    num_layers: int = 1,
    input_projection: str = "auto",
    unroll: int = 1,
    dropout_rate: float = 0.0,
    input_dropout: float = 0.0,
    output_dropout: float = 0.0,
    bidirectional: bool = False,
    backward: str = "manual",
    matmul_dtype: str = "float32",
    cell: Any = "lstm",
    initializer: str = "auto",
    backend: str = "auto",
    readout: str = "last",
    rngs: nnx.Rngs,
  ):
    if (num_features is None) == (vocab_size is None):
      raise DataError(
        "give the NNX SequenceModel either num_features (float inputs) or vocab_size (token "
        "ids), not both or neither."
      )
    # The settings, one frozen value (linen's fields: `model.ModelSettings`), checked as linen
    # checks them; `linen_twin` builds linen's model from it.
    self.settings = linen_model.ModelSettings(
      hidden_size=hidden_size,
      num_outputs=num_outputs,
      num_layers=num_layers,
      vocab_size=vocab_size,
      embed_dim=embed_dim,
      input_projection=input_projection,
      unroll=unroll,
      dropout_rate=dropout_rate,
      input_dropout=input_dropout,
      output_dropout=output_dropout,
      bidirectional=bidirectional,
      backward=backward,
      matmul_dtype=matmul_dtype,
      cell=cell,
      initializer=initializer,
      backend=backend,
      readout=readout,
    )
    linen_model.check_model_settings(self.settings)
    st = self.settings
    layer: dict[str, Any] = dict(
      input_projection=st.input_projection,
      unroll=st.unroll,
      backward=st.backward,
      matmul_dtype=st.matmul_dtype,
    )
    if st.initializer != "auto":  # the LSTM's and the GRU's only (check_model_settings)
      layer["initializer"] = st.initializer
    self.vocab_size = vocab_size
    if vocab_size is not None:
      self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
    in_features: Any = embed_dim if vocab_size is not None else num_features
    stacked: dict[str, Any] = dict(cell=cell, backend=backend, rngs=rngs)
    stack: nnx.Module
    if bidirectional:
      stack = BidirectionalLSTM(in_features, hidden_size, num_layers, **stacked, **layer)
    else:
      dropouts: dict[str, Any] = dict(
        dropout_rate=st.dropout_rate,
        input_dropout=st.input_dropout,
        output_dropout=st.output_dropout,
      )
      stack = LSTM(in_features, hidden_size, num_layers, **stacked, **dropouts, **layer)
    self.stack_name = linen_model.stack_name(cell)
    setattr(self, self.stack_name, stack)
    width = 2 * hidden_size if bidirectional else hidden_size
    if readout == "attention":  # linen's readout_score: one score per step
      self.readout_score = nnx.Linear(width, 1, use_bias=False, rngs=rngs)
    self.head = nnx.Linear(width, num_outputs, rngs=rngs)

  def zero_carry(self, batch_size: int):
    stack = getattr(self, self.stack_name).zero_carry(batch_size)
    return linen_model.with_pool(self.settings, stack, batch_size)

  def __call__(
    self,
    inputs,
    *,
    mask=None,
    resets=None,
    initial_carry=None,
    deterministic=None,
    seq_lengths=None,
  ):
    head_mask = linen_model.mask_from_lengths(inputs, mask, seq_lengths)  # the stack takes either
    if self.vocab_size is not None:
      if not jnp.issubdtype(inputs.dtype, jnp.integer) or inputs.ndim != 2:
        raise DataError(
          f"a token model (vocab_size={self.vocab_size}) takes <int32>[B, T] token ids, got "
          f"{inputs.dtype}{list(inputs.shape)}."
        )
      x = self.embed(inputs)
    else:
      x = inputs
    stack = getattr(self, self.stack_name)
    initial_carry, pool = linen_model.split_pool(self.settings, initial_carry)
    outputs, carry = stack(
      x,
      mask=mask,
      resets=resets,
      initial_carry=initial_carry,
      deterministic=deterministic,
      seq_lengths=seq_lengths,
    )
    if self.settings.readout != "last":
      scores = self.readout_score(outputs)[..., 0] if self.settings.readout == "attention" else None
      outputs, pool = readout_lib.running_readout(
        self.settings.readout, outputs, head_mask, resets, pool, scores
      )
      carry = {"stack": carry, "pool": pool}
    preds = self.head(outputs)
    if head_mask is not None:
      preds = jnp.where(head_mask[..., None], preds, 0.0)
    return preds, carry


def linen_twin(model: SequenceModel) -> linen_model.SequenceModel:
  """The linen SequenceModel with the same settings: its params are `to_linen_params(model)`."""
  s = model.settings
  return linen_model.SequenceModel(**{f.name: getattr(s, f.name) for f in dataclasses.fields(s)})


def to_linen_params(model: nnx.Module) -> dict:
  """The NNX model's parameters as the nested dict linen's `params` is (arrays shared, not
  copied)."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def from_linen_params(model: nnx.Module, params: Any) -> None:
  """Writes linen params (e.g. `loop.fit`'s `result.state.params`, or a checkpoint's) into the
  NNX model in place; the trees must match exactly (same settings)."""
  state = nnx.state(model, nnx.Param)
  want = jax.tree.structure(nnx.to_pure_dict(state))
  if jax.tree.structure(dict(params)) != want:  # type: ignore[operator]  # PyTreeDefs compare
    raise DataError(
      "these params do not have the NNX model's layout (different layers, sizes or a "
      "different model); build the NNX model with the settings the params were trained with."
    )
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dict(params)))
  nnx.update(model, state)


def train_state(
  model: SequenceModel,
  optimizer: optax.GradientTransformation,
  dataset: RaggedDataset,
  seed=0,
  **state_kwargs,
) -> train.TrainState:
  """A `train.TrainState` for the NNX model's weights (its linen twin's, the NNX parameters in
  place of a fresh init), for `loop.fit`, `evaluation.evaluate` and checkpoints. `state_kwargs`:
  `train.create_train_state`'s (class_weights, loss)."""
  state = train.create_train_state(linen_twin(model), optimizer, dataset, seed=seed, **state_kwargs)
  # copies: loop.fit donates the state's buffers, which must not be the NNX model's own
  params = jax.tree.map(jnp.copy, to_linen_params(model))
  return state.replace(params=params, opt_state=optimizer.init(params))


def fit(
  model: SequenceModel,
  strategy: Strategy,
  optimizer: optax.GradientTransformation,
  seed: int = 0,
  loss: Any = None,
  **fit_kwargs,
) -> loop.FitResult:
  """Trains the NNX model under `strategy` with `loop.fit` (epochs, real_tokens, steps,
  pipeline, checkpointing, hooks as there; compiles counted in `result.steps`) and writes the
  trained parameters back into `model`. `loss`: a custom per-step loss
  (`train.create_train_state`)."""
  state = train_state(model, optimizer, strategy.dataset, seed, loss=loss)
  result = loop.fit(state, strategy, **fit_kwargs)
  from_linen_params(model, result.state.params)
  return result


# The any-cell stacks by what they run, as linen's (model.RNN): the same classes.
RNN = LSTM
BidirectionalRNN = BidirectionalLSTM
