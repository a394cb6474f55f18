"""The recurrent stacks and the models on top of them: `LSTM` (a stack of layers of the built-in
LSTM or any cell, lstm_jax.layers), `BidirectionalLSTM`, `SequenceModel` (an embedding or
features, a stack, a readout, a Dense head at every step) and `SequenceClassifier`, with their
settings (`ModelSettings`). The layer's math, its parameters and their gate order are in
lstm_jax.layers; which computation runs a stack's call (the scan or the fused cuDNN LSTM) in
lstm_jax.backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstm_jax import cudnn
from lstm_jax import readout as readout_lib
from lstm_jax.backend import fused_call, resolve_backend
from lstm_jax.errors import ConfigError, DataError
from lstm_jax.layers import (  # noqa: F401 (re-exported: model.X stays importable)
  CELLS,
  INITIALIZERS,
  CellLayer,
  LSTMLayer,
  check_cell_matmul,
  fused_layer_params,
  resolve_initializer,
  stack_layer,
  stack_name,
  zero_carry,
)

Array = jax.Array
Carry = tuple[tuple[Array, Array], ...]  # per layer (c, h), each <float32>[B, H]


class LSTM(nn.Module):
  """A stack of `num_layers` masked LSTM layers.

  `outputs, carry = LSTM(H).apply(variables, inputs, mask=None, resets=None, initial_carry=None)`
  (every argument after `inputs` by keyword). `RNN` is the same class: any cell runs in it
  (`RNN(H, cell="gru")`).

  Args:
    inputs: <float32>[B, T, F].
    mask: <bool>[B, T], True at real steps; None means every step is real.
    resets: <bool>[B, T], True where a new sequence starts: the state is reset to zero before that
      step. None means no resets.
    initial_carry: per layer (c, h), each <float32>[B, H]: the state the scan starts from (the
      previous chunk's state in truncated BPTT); None means zeros.
    deterministic: True turns dropout off (evaluation); training passes False and a "dropout"
      rng.
    seq_lengths: <int>[B], Flax nn.RNN's argument: the right-padded mask it stands for (step t
      of row b is real when t < seq_lengths[b]); give it or mask, not both.
  Returns:
    outputs: <float32>[B, T, H], the top layer's h, zero at masked steps.
    carry: per layer (c, h) after each row's last real step.

  Dropout (all 0 by default): `dropout_rate` between stacked layers (a fresh mask per step);
  `input_dropout` and `output_dropout` variational (Gal & Ghahramani: one mask per sequence and
  feature, the same at every time step) on the inputs and on the top layer's outputs. Dropout
  draws depend on the batch's shape, so with dropout on, padded and unpadded runs no longer give
  the same numbers; exactness holds with deterministic=True.
  """

  hidden_size: int
  num_layers: int = 1
  _: dataclasses.KW_ONLY  # every setting after the sizes by name
  input_projection: str = "auto"
  unroll: int = 1
  dropout_rate: float = 0.0
  input_dropout: float = 0.0
  output_dropout: float = 0.0
  backward: str = "manual"  # see LSTMLayer
  matmul_dtype: str = "float32"  # see LSTMLayer
  cell: Any = "lstm"  # see CELLS and CellLayer
  initializer: str = "auto"  # the LSTM's and the GRU's: see INITIALIZERS
  backend: str = "auto"  # the scan or the fused cuDNN LSTM: see BACKENDS

  def zero_carry(self, batch_size: int) -> Carry:
    return zero_carry(batch_size, self.hidden_size, self.num_layers, self.cell)

  @nn.compact
  def __call__(
    self,
    inputs: Array,
    *,
    mask: Array | None = None,
    resets: Array | None = None,
    initial_carry: Carry | None = None,
    deterministic: bool = True,
    seq_lengths: Array | None = None,
  ) -> tuple[Array, Carry]:
    dropout = max(self.dropout_rate, self.input_dropout, self.output_dropout) > 0
    fused, lengths = fused_call(
      self, inputs, mask, resets, seq_lengths, dropout and not deterministic
    )
    mask, resets = check_inputs(inputs, mask, resets, seq_lengths)
    batch = inputs.shape[0]
    carry = self.zero_carry(batch) if initial_carry is None else initial_carry
    if len(carry) != self.num_layers:
      raise DataError(
        f"initial_carry has {len(carry)} layers, the model {self.num_layers}; pass "
        f"one carry per layer, e.g. model.zero_carry(batch_size)."
      )
    x, new_carry = inputs, []

    def layer(k):  # layer k of the stack, as the scan runs it
      return stack_layer(self, f"layer_{k}")

    if fused is not None:  # the same parameters, made by the same layers, computed in one call
      widths = [inputs.shape[-1]] + [self.hidden_size] * (self.num_layers - 1)
      layers = [fused_layer_params(self, f"layer_{k}", w) for k, w in enumerate(widths)]
      return cudnn.lstm(layers, inputs, lengths, initial_carry=carry, impl=fused)

    def variational(rate, name):
      return nn.Dropout(rate, broadcast_dims=(1,), name=name)

    if self.input_dropout > 0:
      x = variational(self.input_dropout, "input_dropout")(x, deterministic=deterministic)
    for k in range(self.num_layers):
      if k > 0 and self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, name=f"dropout_{k}")(x, deterministic=deterministic)
      x, layer_carry = layer(k)(x, mask, resets, carry[k])
      new_carry.append(layer_carry)
    if self.output_dropout > 0:
      x = variational(self.output_dropout, "output_dropout")(x, deterministic=deterministic)
    return x, tuple(new_carry)


class SequenceModel(nn.Module):
  """Embedding (token inputs) or features -> LSTM (or any cell) -> a Dense head at every step.

  The one head serves every task through the batch's loss weights: per-step regression or
  classification (next-token logits with `vocab_size` set), and sequence classification, whose
  weight sits on each sequence's last real step, so its logits are those of that step.

  Args (fields):
    hidden_size: the recurrent state's width H; num_outputs: the head's (classes or target dims).
    num_layers, input_projection, unroll, backward, matmul_dtype: the stack's (see `LSTM`).
    vocab_size: token inputs (embedded to `embed_dim` first); None: float features.
    dropout_rate, input_dropout, output_dropout: see `LSTM` (0: off).
    bidirectional: a `BidirectionalLSTM` stack (whole-sequence strategies only).
    cell: "lstm" (the hand-written LSTM), a Flax cell's name ("gru", ...) or a cell class.
    initializer: "auto", "keras", "flax" or "pytorch" (the LSTM's and the GRU's; INITIALIZERS).
    readout: what the head sees at each step (`readout.READOUTS`): "last", the stack's output;
      "mean", "max" or "attention", a running pool of the outputs over the sequence's real
      steps so far (at a sequence label's step: over the whole sequence; lstm_jax.readout).

  `model.apply(variables, inputs, *, mask=, resets=, initial_carry=, deterministic=,
  seq_lengths=)` returns (predictions <float32>[B, T, num_outputs], zero at masked steps, the
  carry after each row's last real step). With a pooled readout the carry is
  `{"stack": the stack's carry, "pool": the running pool}` (`zero_carry` builds it), so
  truncated BPTT and chunked evaluation carry the pool across chunks.
  """

  hidden_size: int
  num_outputs: int
  _: dataclasses.KW_ONLY  # every setting after hidden_size and num_outputs by name
  num_layers: int = 1
  vocab_size: int | None = None
  embed_dim: int = 64
  input_projection: str = "auto"
  unroll: int = 1
  dropout_rate: float = 0.0  # see LSTM: between layers,
  input_dropout: float = 0.0  # variational on the LSTM's inputs (after the embedding),
  output_dropout: float = 0.0  # and on its outputs (before the head)
  bidirectional: bool = False  # BidirectionalLSTM (whole-sequence strategies only)
  backward: str = "manual"  # see LSTMLayer
  matmul_dtype: str = "float32"  # see LSTMLayer
  # "lstm" (the hand-written LSTM), a Flax cell's name ("gru", "mgu", "simple", "flax_lstm",
  # "optimized_lstm") or one's own cell class: see CELLS and CellLayer. The recurrent stack's
  # parameters are params["lstm"] for "lstm" and params["rnn"] for any other cell.
  cell: Any = "lstm"
  # The initialisation of the built-in LSTM and the GRU: "auto" (the default: "keras" for the
  # LSTM, "flax" for the GRU), "keras", "flax" or "pytorch" (INITIALIZERS). Other cells
  # initialise as their class does.
  initializer: str = "auto"
  # The LSTM stack's computation: "auto" (the default: the scan, or the fused cuDNN LSTM on a
  # CUDA device for a call with seq_lengths=), "scan", "cudnn", "reference" (BACKENDS).
  backend: str = "auto"
  # "last", "mean", "max" or "attention" (readout.READOUTS): see the docstring.
  readout: str = "last"

  def zero_carry(self, batch_size: int) -> Carry | dict:
    if self.bidirectional:
      stack = bidirectional_zero_carry(batch_size, self.hidden_size, self.num_layers, self.cell)
    else:
      stack = zero_carry(batch_size, self.hidden_size, self.num_layers, self.cell)
    return with_pool(self, stack, batch_size)

  @property
  def settings(self) -> ModelSettings:
    """This model's settings as one frozen value (what the NNX front end holds)."""
    return ModelSettings(
      **{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelSettings)}
    )

  @nn.nowrap
  def check_settings(self) -> None:
    check_model_settings(self)

  @nn.compact
  def __call__(
    self,
    inputs: Array,
    *,
    mask: Array | None = None,
    resets: Array | None = None,
    initial_carry: Carry | None = None,
    deterministic: bool = True,
    seq_lengths: Array | None = None,
  ) -> tuple[Array, Carry]:
    head_mask = mask_from_lengths(inputs, mask, seq_lengths)  # the stack takes either
    if self.vocab_size is not None:
      if not jnp.issubdtype(inputs.dtype, jnp.integer) or inputs.ndim != 2:
        raise DataError(
          f"a token model (vocab_size={self.vocab_size}) takes <int32>[B, T] token "
          f"ids, got {inputs.dtype}{list(inputs.shape)}."
        )
      x = nn.Embed(self.vocab_size, self.embed_dim, name="embed")(inputs)
    else:
      x = inputs
    self.check_settings()
    initial_carry, pool = split_pool(self, initial_carry)
    if self.bidirectional:
      outputs, carry = BidirectionalLSTM(
        self.hidden_size,
        self.num_layers,
        input_projection=self.input_projection,
        unroll=self.unroll,
        backward=self.backward,
        matmul_dtype=self.matmul_dtype,
        cell=self.cell,
        initializer=self.initializer,
        backend=self.backend,
        name=stack_name(self.cell),
      )(x, mask=mask, resets=resets, initial_carry=initial_carry, seq_lengths=seq_lengths)
    else:
      outputs, carry = LSTM(
        self.hidden_size,
        self.num_layers,
        input_projection=self.input_projection,
        unroll=self.unroll,
        dropout_rate=self.dropout_rate,
        input_dropout=self.input_dropout,
        output_dropout=self.output_dropout,
        backward=self.backward,
        matmul_dtype=self.matmul_dtype,
        cell=self.cell,
        initializer=self.initializer,
        backend=self.backend,
        name=stack_name(self.cell),
      )(
        x,
        mask=mask,
        resets=resets,
        initial_carry=initial_carry,
        deterministic=deterministic,
        seq_lengths=seq_lengths,
      )
    if self.readout != "last":
      scores = None
      if self.readout == "attention":
        scores = nn.Dense(1, use_bias=False, name="readout_score")(outputs)[..., 0]
      outputs, pool = readout_lib.running_readout(
        self.readout, outputs, head_mask, resets, pool, scores
      )
      carry = {"stack": carry, "pool": pool}
    preds = nn.Dense(self.num_outputs, name="head")(outputs)
    if head_mask is not None:
      preds = jnp.where(head_mask[..., None], preds, 0.0)
    return preds, carry


def with_pool(model: Any, stack_carry: Carry, batch_size: int) -> Carry | dict:
  """The model's zero carry: the stack's, with the readout's empty pool beside it when the
  readout pools (`{"stack": ..., "pool": ...}`); the stack's alone for "last"."""
  if model.readout == "last":
    return stack_carry
  width = model.hidden_size * (2 if model.bidirectional else 1)
  return {"stack": stack_carry, "pool": readout_lib.zero_pool(model.readout, batch_size, width)}


def split_pool(model: Any, carry: Carry | None) -> tuple[Carry | None, Any]:
  """(the stack's carry, the pool) from a model's carry (None: both start empty)."""
  if model.readout == "last" or carry is None:
    return carry, None
  if not isinstance(carry, dict) or set(carry) != {"stack", "pool"}:
    raise DataError(
      f"a model with readout={model.readout!r} carries {{'stack': ..., 'pool': ...}}; build "
      f"initial_carry with the model's zero_carry(batch_size)."
    )
  return carry["stack"], carry["pool"]


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """Every setting of a SequenceModel, frozen (a value: hashable, compared by its fields):
  `SequenceModel(...).settings`, the NNX model's `settings`, and
  `SequenceModel(**dataclasses.asdict(settings))` builds the linen model back. Declared here so
  a type checker sees its fields; tests/test_model.py holds them equal to SequenceModel's
  (names, types and defaults), so the two cannot drift.

  Args (fields): as `SequenceModel`'s.
  """

  hidden_size: int
  num_outputs: int
  _: dataclasses.KW_ONLY  # every setting after hidden_size and num_outputs by name
  num_layers: int = 1
  vocab_size: int | None = None
  embed_dim: int = 64
  input_projection: str = "auto"
  unroll: int = 1
  dropout_rate: float = 0.0
  input_dropout: float = 0.0
  output_dropout: float = 0.0
  bidirectional: bool = False
  backward: str = "manual"
  matmul_dtype: str = "float32"
  cell: Any = "lstm"
  initializer: str = "auto"
  backend: str = "auto"
  readout: str = "last"


def check_model_settings(s: Any) -> None:
  """The combinations of settings a SequenceModel refuses (ConfigError), for linen's model and
  the NNX front end alike (`s`: either model, or a ModelSettings)."""
  if s.bidirectional and max(s.input_dropout, s.output_dropout, s.dropout_rate) > 0:
    raise ConfigError(
      "dropout is not implemented for the bidirectional LSTM yet; set the dropout rates to "
      "0 or bidirectional=False."
    )
  check_cell_matmul(s.cell, s.matmul_dtype)
  readout_lib.check_readout(s.readout)
  resolve_initializer(s.cell, s.initializer)
  resolve_backend(s.backend, s.cell, s.matmul_dtype)


class SequenceClassifier(nn.Module):
  """Logits <float32>[B, num_classes] from each sequence's last real step (one sequence per row).

  Args (fields): hidden_size, num_classes, num_layers, input_projection, backward, matmul_dtype
    (as `SequenceModel`'s). `apply(variables, inputs, *, mask=, seq_lengths=)` returns the
    logits.
  """

  hidden_size: int
  num_classes: int
  _: dataclasses.KW_ONLY  # every setting after hidden_size and num_classes by name
  num_layers: int = 1
  input_projection: str = "auto"
  backward: str = "manual"
  matmul_dtype: str = "float32"

  @nn.compact
  def __call__(
    self, inputs: Array, *, mask: Array | None = None, seq_lengths: Array | None = None
  ) -> Array:
    mask = mask_from_lengths(inputs, mask, seq_lengths)
    outputs, _ = LSTM(
      self.hidden_size,
      self.num_layers,
      input_projection=self.input_projection,
      backward=self.backward,
      matmul_dtype=self.matmul_dtype,
      name="lstm",
    )(inputs, mask=mask)
    return nn.Dense(self.num_classes, name="head")(last_real_step(outputs, mask))


def last_real_step(x_BxTxD: Array, mask_BxT: Array | None) -> Array:
  """x at each row's last real step, <...>[B, D]; rows without a real step give x[:, 0]."""
  if mask_BxT is None:
    return x_BxTxD[:, -1]
  t = x_BxTxD.shape[1]
  last = t - 1 - jnp.argmax(mask_BxT[:, ::-1], axis=1)
  last = jnp.where(mask_BxT.any(axis=1), last, 0)
  return jnp.take_along_axis(x_BxTxD, last[:, None, None], axis=1)[:, 0]


def mask_from_lengths(inputs: Array, mask: Array | None, seq_lengths: Array | None):
  """`mask`, or the right-padded mask that `seq_lengths` (<int>[B], Flax's nn.RNN argument)
  stands for: step t of row b is real when t < seq_lengths[b]. Giving both is a DataError."""
  if seq_lengths is None:
    return mask
  if mask is not None:
    raise DataError("give mask or seq_lengths, not both (seq_lengths is a right-padded mask).")
  seq_lengths = jnp.asarray(seq_lengths)
  b, t = inputs.shape[:2]
  if seq_lengths.shape != (b,) or not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
    raise DataError(
      f"seq_lengths must be <int>[{b}] (one length per row of inputs {list(inputs.shape)}), "
      f"got {seq_lengths.dtype}{list(seq_lengths.shape)}."
    )
  return jnp.arange(t)[None, :] < seq_lengths[:, None]


def check_inputs(
  inputs: Array, mask: Array | None, resets: Array | None, seq_lengths: Array | None = None
):
  """(mask, resets) for a stack's inputs, checked (DataError), their defaults filled in: every
  step real, no resets; `seq_lengths` stands for a right-padded mask (`mask_from_lengths`)."""
  mask = mask_from_lengths(inputs, mask, seq_lengths)
  if inputs.ndim != 3 or not jnp.issubdtype(inputs.dtype, jnp.floating):
    raise DataError(
      f"LSTM inputs must be <float>[B, T, F], got {inputs.dtype}{list(inputs.shape)}; "
      f"for token ids use SequenceModel(vocab_size=...), which embeds them first."
    )
  bt = inputs.shape[:2]
  mask = jnp.ones(bt, bool) if mask is None else mask
  resets = jnp.zeros(bt, bool) if resets is None else resets
  for name, a in (("mask", mask), ("resets", resets)):
    if tuple(a.shape) != tuple(bt) or a.dtype != jnp.bool_:
      raise DataError(
        f"{name} must be <bool>{list(bt)} to match inputs {list(inputs.shape)}, got "
        f"{a.dtype}{list(a.shape)}."
      )
  return mask, resets


def layer_params(params: Any) -> Sequence[dict]:
  """The per-layer dicts (kernel, recurrent_kernel, bias), from LSTM or SequenceModel params
  (for a bidirectional LSTM, the forward direction's)."""
  lstm = params.get("lstm", params)
  prefix = "layer_" if any(k.startswith("layer_") for k in lstm) else "forward_"
  return [lstm[f"{prefix}{k}"] for k in range(len([k for k in lstm if k.startswith(prefix)]))]


def segment_reverse_index(mask_BxT: Array, resets_BxT: Array) -> Array:
  """<int32>[B, T]: for each real step, the step it maps to when every sequence in the row is
  reversed within its own extent (a sequence starts at t = 0 or at a reset and ends at its last
  real step); padded steps map to themselves. The map is its own inverse."""
  b, t = mask_BxT.shape
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  starts = resets_BxT | (pos == 0)
  start_pos = jax.lax.cummax(jnp.where(starts, pos, 0), axis=1)
  after = jnp.concatenate([starts[:, 1:] | ~mask_BxT[:, 1:], jnp.ones((b, 1), bool)], axis=1)
  is_last = mask_BxT & after
  end_pos = jax.lax.cummin(jnp.where(is_last, pos, t), axis=1, reverse=True)
  return jnp.where(mask_BxT, start_pos + end_pos - pos, pos)


def bidirectional_zero_carry(
  batch_size: int, hidden_size: int, num_layers: int = 1, cell: Any = "lstm"
):
  """Per layer (forward carry, backward carry), each as `zero_carry` gives it."""
  one = zero_carry(batch_size, hidden_size, num_layers, cell)
  return tuple(zip(one, one))


class BidirectionalLSTM(nn.Module):
  """A stack of bidirectional layers (the LSTM, or any `cell`) over rows that hold whole
  sequences.

  `outputs, carry = BidirectionalLSTM(H).apply(variables, inputs, mask=..., resets=...,
  initial_carry=...)` (or `seq_lengths=` for right-padded rows)

  Each layer runs one LSTM forward and one over every sequence reversed within its own length
  (padding stays where it is, after the sequence; in a packed row each sequence, delimited by
  resets, is reversed in place), and concatenates them: outputs <float32>[B, T, 2H], zero at
  masked steps. Layer k's parameters are `forward_{k}` and `backward_{k}`, each an LSTM layer's
  (kernel, recurrent_kernel, bias); layers above the first take 2H features.

  Args (fields): hidden_size, num_layers, input_projection, unroll, backward, matmul_dtype,
    cell, initializer, backend: as `LSTM`'s, for each direction (the fused cuDNN LSTM runs both
    directions in one call, given `seq_lengths=`).

  It needs whole sequences in a row: pad, bucket and pack batches. Truncated BPTT's chunks cut
  sequences, whose reversal would then be wrong, so `loop.fit` refuses that pairing. carry: per
  layer (forward (c, h), backward (c, h)): the forward state after each row's last real step; the
  backward state after the row's last sequence read backwards (ending at its first step, as
  PyTorch's h_n for the reverse direction). initial_carry (optional, same structure) is where
  the forward direction starts; the backward direction starts each sequence from zeros (its
  pass resets at each sequence's start, where PyTorch and cuDNN would start it from h_0), so
  its initial carry only passes through a row with no real step.
  """

  hidden_size: int
  num_layers: int = 1
  _: dataclasses.KW_ONLY  # every setting after the sizes by name
  input_projection: str = "auto"
  unroll: int = 1
  backward: str = "manual"
  matmul_dtype: str = "float32"
  cell: Any = "lstm"  # see CELLS and CellLayer
  initializer: str = "auto"  # the LSTM's and the GRU's: see INITIALIZERS
  backend: str = "auto"  # the scan or the fused cuDNN LSTM: see BACKENDS and LSTM

  def zero_carry(self, batch_size: int):
    return bidirectional_zero_carry(batch_size, self.hidden_size, self.num_layers, self.cell)

  @nn.compact
  def __call__(
    self,
    inputs: Array,
    *,
    mask: Array | None = None,
    resets: Array | None = None,
    initial_carry=None,
    deterministic: bool = True,
    seq_lengths: Array | None = None,
  ):
    del deterministic  # no dropout here (use SequenceModel's dropout around it)
    fused, lengths = fused_call(self, inputs, mask, resets, seq_lengths)
    mask, resets = check_inputs(inputs, mask, resets, seq_lengths)
    carry = self.zero_carry(inputs.shape[0]) if initial_carry is None else initial_carry
    if fused is not None:  # each layer's (forward, backward) parameters, in one fused call
      widths = [inputs.shape[-1]] + [2 * self.hidden_size] * (self.num_layers - 1)
      layers = [
        tuple(fused_layer_params(self, f"{d}_{k}", w) for d in ("forward", "backward"))
        for k, w in enumerate(widths)
      ]
      return cudnn.lstm(
        layers, inputs, lengths, bidirectional=True, initial_carry=carry, impl=fused
      )
    return bidirectional_stack(
      lambda name: stack_layer(self, name), self.num_layers, inputs, mask, resets, carry
    )


def bidirectional_stack(layer, num_layers: int, inputs, mask, resets, carry):
  """The bidirectional stack's computation (BidirectionalLSTM's docstring), for linen's module
  and the NNX front end alike: `layer(name)` gives layer `forward_{k}` or `backward_{k}` as a
  callable `(x, mask, resets, carry) -> (outputs, carry)`."""
  rev = segment_reverse_index(mask, resets)

  def flip(a):
    return jnp.take_along_axis(a, rev.reshape(rev.shape + (1,) * (a.ndim - 2)), axis=1)

  starts = (resets | (jnp.arange(mask.shape[1]) == 0)[None]) & mask  # reversed starts: same place
  x, new_carry = inputs, []
  for k in range(num_layers):
    fwd, fwd_carry = layer(f"forward_{k}")(x, mask, resets, carry[k][0])
    bwd, bwd_carry = layer(f"backward_{k}")(flip(x), mask, starts, carry[k][1])
    x = jnp.concatenate([fwd, flip(bwd)], axis=-1)
    new_carry.append((fwd_carry, bwd_carry))
  return x, tuple(new_carry)


# The any-cell stacks by what they run (`RNN(H, cell="gru")` runs a GRU): the same classes. Not
# Flax's nn.RNN: the cell by name or class, and (outputs, carry) returned (docs/research.md).
RNN = LSTM
BidirectionalRNN = BidirectionalLSTM
