"""One recurrent layer, masked and resettable: the built-in LSTM layer and any Flax cell's,
their initialisers and the cell settings (the stacks and heads on top are lstm_jax.model).

The step (`recurrence.step`) is scanned with a hand-written backward pass by default
(`backward="manual"`, `recurrence.recurrence`), or with `flax.linen.scan` and JAX's autodiff
(`backward="autodiff"`); same forward computation, gradients equal to float32 rounding (tested),
the manual one faster to run and to trace (BENCHMARKS.md). `backward="deferred"` is the manual
one with the weight and bias gradients taken after the reverse scan, as one GEMM over all steps'
rows (`recurrence.recurrence_deferred`): faster with few rows per step (docs/speed.md).

Parameters of layer k (`params["layer_{k}"]`, or `params["lstm"]["layer_{k}"]` in the heads):

    kernel            <float32>[F, 4H]   input weights   (F = H for layers above the first)
    recurrent_kernel  <float32>[H, 4H]   recurrent weights
    bias              <float32>[4H]      one bias (PyTorch's bias_ih + bias_hh folded into one)

The 4H axis holds the gates in the order i, f, g, o (input, forget, cell candidate, output): the
layout of PyTorch's `nn.LSTM` (transposed) and of Keras' `LSTM`, so weights convert both ways
exactly. One step, for a row whose step t is real (mask[b, t] is True):

    c, h = (0, 0) if resets[b, t] else (c, h)       # a reset restores the zero state first
    i, f, g, o = split(x_t @ kernel + h @ recurrent_kernel + bias, 4)
    c = sigmoid(f) * c + sigmoid(i) * tanh(g);   h = sigmoid(o) * tanh(c)

At a padded step (mask False) the state does not move and the output is 0, so a sequence's
outputs, final state and gradients do not depend on the padding after it or on what else shares
its row (after a reset) or its batch.

The input projection `x @ kernel + bias` runs inside the scanned step ("in_step", fused with the
recurrent matmul into one [B, F + H] x [F + H, 4H] GEMM per step) or as one matmul over all steps
before the scan ("hoisted", what cuDNN does). "auto" picks per backend: in_step on the CPU, where
it measured faster, hoisted elsewhere. Both give the same numbers to rounding.

`matmul_dtype="bfloat16"` runs the LSTM's matmuls on bfloat16 operands with float32 accumulation
(state, gates and parameters stay float32; see `recurrence`): faster on some CPUs with bfloat16
dot products, slower on others (docs/speed.md), and no longer float32-exact, so float32 is the
default.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import recurrence
from lstm_jax.errors import ConfigError, DataError

Array = jax.Array
Carry = tuple[tuple[Array, Array], ...]  # per layer (c, h), each <float32>[B, H]

INPUT_PROJECTIONS = ("auto", "in_step", "hoisted")
# The recurrent cells by name. "lstm" is the hand-written masked LSTM (LSTMLayer: its own
# backward pass, in-step or hoisted projection, bfloat16 matmuls); the others are Flax's cells
# run by CellLayer, the same masked, resettable scan for any cell, differentiated by JAX. A
# SequenceModel also takes a cell class of one's own (see CellLayer for the contract).
CELLS = {
  "lstm": None,
  "flax_lstm": nn.LSTMCell,
  "optimized_lstm": nn.OptimizedLSTMCell,
  "gru": nn.GRUCell,
  "mgu": nn.MGUCell,
  "simple": nn.SimpleCell,
}
BACKWARDS = ("manual", "deferred", "autodiff")
MATMUL_DTYPES = recurrence.MATMUL_DTYPES


def resolve_input_projection(input_projection: str, backend: str | None = None) -> str:
  """ "in_step" or "hoisted": "auto" resolves per backend (in_step on CPU, hoisted on GPU/TPU)."""
  if input_projection not in INPUT_PROJECTIONS:
    raise ConfigError(
      f"input_projection must be one of {INPUT_PROJECTIONS}, got {input_projection!r}."
    )
  if input_projection != "auto":
    return input_projection
  return "in_step" if (backend or jax.default_backend()) == "cpu" else "hoisted"


# The initialisations of the built-in LSTM and of the GRU (`SequenceModel(initializer=...)`,
# config.model.initializer):
#   auto     the default: each cell's own, "keras" for the built-in LSTM, "flax" for the GRU
#            (Flax's GRUCell as it comes); every other cell initialises as its class does
#   keras    Keras' LSTM / GRU: a glorot-uniform input kernel over [F, 4H] (GRU [F, 3H]), one
#            orthogonal init over the whole [H, 4H] ([H, 3H]) recurrent matrix, zero bias with 1
#            on the LSTM's forget gate
#   flax     Flax's LSTMCell / GRUCell: each gate's [F, H] input kernel lecun-normal and its
#            [H, H] recurrent block orthogonal on its own, zero bias
#   pytorch  torch.nn.LSTM / GRU: every weight uniform in +-1/sqrt(H), each bias torch's
#            (bias_ih + bias_hh: the sum of two such draws where torch adds two)
INITIALIZERS = ("auto", "keras", "flax", "pytorch")


def resolve_initializer(cell: Any, initializer: str) -> str:
  """The initialisation a layer of `cell` gets ("keras", "flax" or "pytorch"; "auto" for a
  cell that has only its own): "auto" resolves to "keras" for the built-in LSTM and "flax" for
  the GRU; any other cell takes "auto" only (ConfigError otherwise)."""
  if initializer not in INITIALIZERS:
    raise ConfigError(f"initializer must be one of {INITIALIZERS}, got {initializer!r}.")
  cls = resolve_cell(cell)
  if cls is None:
    return "keras" if initializer == "auto" else initializer
  if cls is nn.GRUCell:
    return "flax" if initializer == "auto" else initializer
  if initializer != "auto":
    raise ConfigError(
      f"initializer={initializer!r} is a choice for cell='lstm' and cell='gru'; cell "
      f"{cell_name(cell)!r} initialises as its own class does. Leave initializer at 'auto'."
    )
  return initializer


def _per_gate(init):
  """`init` applied to each gate's [rows, H] block of a [rows, 4H] matrix, with its own key."""

  def f(key, shape, dtype=jnp.float32):
    rows, cols = shape
    keys = jax.random.split(key, 4)
    return jnp.concatenate([init(k, (rows, cols // 4), dtype) for k in keys], axis=1)

  return f


def _uniform(scale: float, draws: int = 1):
  def f(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, draws) if draws > 1 else [key]
    return sum(jax.random.uniform(k, shape, dtype, -scale, scale) for k in keys)

  return f


def lstm_initializers(name: str, hidden_size: int) -> tuple[Any, Any, Any]:
  """(kernel_init, recurrent_init, bias_init) of the built-in LSTM's initialisation `name`
  (INITIALIZERS)."""
  name = resolve_initializer("lstm", name)
  if name == "keras":
    return nn.initializers.glorot_uniform(), nn.initializers.orthogonal(), forget_bias_init(1.0)
  if name == "flax":
    return (
      _per_gate(nn.initializers.lecun_normal()),
      _per_gate(nn.initializers.orthogonal()),
      nn.initializers.zeros_init(),
    )
  if name == "pytorch":
    k = 1.0 / float(np.sqrt(hidden_size))
    return _uniform(k), _uniform(k), _uniform(k, draws=2)
  raise ConfigError(f"initializer must be one of {INITIALIZERS}, got {name!r}.")


def forget_bias_init(value: float = 1.0):
  """Zero bias with `value` on the forget gate (the second quarter), as Keras' unit_forget_bias."""

  def init(key, shape, dtype=jnp.float32):
    del key
    h = shape[0] // 4
    return jnp.zeros(shape, dtype).at[h : 2 * h].set(value)

  return init


def resolve_cell(cell: Any) -> type | None:
  """The cell class a `cell` setting names (None: the hand-written LSTM), or a ConfigError."""
  if isinstance(cell, str):
    if cell not in CELLS:
      raise ConfigError(
        f"unknown cell {cell!r}; use one of {sorted(CELLS)} or pass a flax.linen "
        f"RNNCellBase subclass (features field, (carry, x) -> (carry, y), initialize_carry)."
      )
    return CELLS[cell]
  if isinstance(cell, type) and issubclass(cell, nn.Module) and hasattr(cell, "initialize_carry"):
    return cell
  raise ConfigError(
    f"cell must be one of {sorted(CELLS)} or a flax.linen RNNCellBase subclass with a "
    f"`features` field, `__call__(carry, x) -> (carry, y)` and `initialize_carry(rng, "
    f"input_shape)`; got {cell!r}."
  )


def cell_name(cell: Any) -> str:
  """The cell's name for results and reports: the setting, or a user class's name."""
  return cell if isinstance(cell, str) else getattr(cell, "__name__", repr(cell))


def zero_carry(batch_size: int, hidden_size: int, num_layers: int = 1, cell: Any = "lstm") -> Carry:
  """The initial state of a stack of `num_layers` layers of `cell`: for the LSTM, per layer
  (c, h), each <float32>[batch_size, hidden_size] zeros; for another cell, per layer what its
  `initialize_carry` returns (zeros for Flax's cells). Resets restore this state."""
  cls = resolve_cell(cell)
  if cls is None:
    z = jnp.zeros((batch_size, hidden_size), jnp.float32)
    return tuple((z, z) for _ in range(num_layers))
  one = cls(features=hidden_size, parent=None).initialize_carry(
    jax.random.key(0), (batch_size, hidden_size)
  )
  return tuple(one for _ in range(num_layers))


def stack_name(cell: Any) -> str:
  """Where a SequenceModel keeps its recurrent stack's parameters: "lstm" for the hand-written
  LSTM (the layout lstm_jax.convert reads), "rnn" for any other cell."""
  return "lstm" if resolve_cell(cell) is None else "rnn"


def _select_rows(pick_B: Array, a: Any, b: Any) -> Any:
  """a where pick_B (one flag per batch row), else b, leaf by leaf of two carries."""
  return jax.tree.map(
    lambda u, v: jnp.where(pick_B.reshape((-1,) + (1,) * (u.ndim - 1)) > 0, u, v), a, b
  )


def _masked_cell_step(cell, carry, xs, init):
  """One time step of any cell for a batch: a reset restores `init` first, a masked step keeps
  the carry and outputs zero."""
  x_t, mask_t, reset_t = xs
  carry = _select_rows(reset_t, init, carry)
  new_carry, y = cell(carry, x_t)
  carry = _select_rows(mask_t, new_carry, carry)
  return carry, jnp.where(mask_t[:, None] > 0, y, 0.0)


class LayerSettings(NamedTuple):
  """How an LSTM layer computes (`LSTMLayer`'s fields of the same names): the input projection
  (in the step or hoisted), the scan's unroll, the backward pass (manual or autodiff) and the
  matmuls' operand dtype."""

  input_projection: str = "auto"
  unroll: int = 1
  backward: str = "manual"
  matmul_dtype: str = "float32"


class CellLayer(nn.Module):
  """One layer of any recurrent cell over a batch, with the LSTM's semantics (module
  docstring): the carry advances only at real steps, a reset restores the cell's initial carry
  before its step, outputs are zero at masked steps. Computed by `cell_layer` (a `jax.lax.scan`
  of the cell, differentiated by JAX; Flax's GRUCell by a fused equivalent, `_gru_layer`).

  cell: a Flax cell class (`nn.GRUCell`, `nn.MGUCell`, `nn.SimpleCell`, `nn.LSTMCell`,
    `nn.OptimizedLSTMCell`) or one's own with the same contract: a `features` field,
    `__call__(carry, x) -> (carry, y)` with y <float32>[B, features], and
    `initialize_carry(rng, input_shape)` (decorated `nn.nowrap`), which gives the state that
    sequences start from and resets restore. Its parameters (a "params" collection only) are
    `params["cell"]`, the tree the cell itself makes.
  """

  cell: Any
  hidden_size: int
  unroll: int = 1
  backward: str = "manual"  # GRUCell: "manual"/"deferred" (fused, hand-written) or "autodiff"
  initializer: str = "auto"  # the GRU's: see INITIALIZERS; other cells their class's own

  @nn.compact
  def __call__(
    self, x_BxTxF: Array, mask_BxT: Array, resets_BxT: Array, carry: Any
  ) -> tuple[Array, Any]:
    features = x_BxTxF.shape[-1]
    params = self.param(
      "cell",
      lambda key: cell_params(self.cell, features, self.hidden_size, key, self.initializer),
    )
    return cell_layer(
      self.cell,
      self.hidden_size,
      params,
      x_BxTxF,
      mask_BxT,
      resets_BxT,
      carry,
      LayerSettings(unroll=self.unroll, backward=self.backward),
    )


def cell_params(
  cls: type, in_features: int, hidden_size: int, key: Array, initializer: str = "auto"
) -> dict:
  """Fresh parameters of one `cls(features=hidden_size)` cell reading `in_features` features:
  the tree linen's CellLayer keeps under `params["cell"]` (the NNX front end's layout too).
  `initializer` (INITIALIZERS) chooses the GRU's; "auto" and "flax" are the class's own."""
  initializer = resolve_initializer(cls, initializer)
  if cls is nn.GRUCell and initializer in ("keras", "pytorch"):
    return gru_params(initializer, in_features, hidden_size, key)
  cell = cls(features=hidden_size, parent=None)
  carry = cell.initialize_carry(jax.random.key(0), (1, in_features))
  return cell.init(key, carry, jnp.zeros((1, in_features), jnp.float32))["params"]


def gru_params(initializer: str, in_features: int, hidden_size: int, key: Array) -> dict:
  """Flax GRUCell's parameter tree (Dense layers ir, iz, in with bias; hr, hz; hn with bias)
  drawn as Keras' GRU ("keras": glorot-uniform over the whole [F, 3H] input kernel, one
  orthogonal init over the whole [H, 3H] recurrent kernel, Keras' gate order z, r, n; zero
  biases) or torch.nn.GRU ("pytorch": everything uniform in +-1/sqrt(H); r's and z's biases
  bias_ih + bias_hh, n's input bias and its recurrent bias (inside the reset product) apart)."""
  f, h = in_features, hidden_size
  k_i, k_h, k_bi, k_bh = jax.random.split(key, 4)
  if initializer == "keras":
    w_i = nn.initializers.glorot_uniform()(k_i, (f, 3 * h))
    w_h = nn.initializers.orthogonal()(k_h, (h, 3 * h))
    z, r, n = (slice(g * h, (g + 1) * h) for g in range(3))
    b_i = b_h = jnp.zeros((3 * h,), jnp.float32)
  elif initializer == "pytorch":
    u = _uniform(1.0 / float(np.sqrt(h)))
    w_i, w_h, b_i, b_h = (
      u(k_i, (f, 3 * h)),
      u(k_h, (h, 3 * h)),
      u(k_bi, (3 * h,)),
      u(k_bh, (3 * h,)),
    )
    r, z, n = (slice(g * h, (g + 1) * h) for g in range(3))
  else:
    raise ConfigError(f"gru_params draws 'keras' or 'pytorch', got {initializer!r}.")
  return {
    "ir": {"kernel": w_i[:, r], "bias": b_i[r] + b_h[r]},
    "iz": {"kernel": w_i[:, z], "bias": b_i[z] + b_h[z]},
    "in": {"kernel": w_i[:, n], "bias": b_i[n]},
    "hr": {"kernel": w_h[:, r]},
    "hz": {"kernel": w_h[:, z]},
    "hn": {"kernel": w_h[:, n], "bias": b_h[n]},
  }


def cell_layer(
  cls: type,
  hidden_size: int,
  params: dict,
  x_BxTxF: Array,
  mask_BxT: Array,
  resets_BxT: Array,
  carry: Any,
  settings: LayerSettings = LayerSettings(),
) -> tuple[Array, Any]:
  """CellLayer as a function of the cell's parameters: `jax.lax.scan` over `_masked_cell_step`,
  differentiated by JAX (linen's CellLayer and the NNX front end both compute through it).
  Flax's own GRUCell with backward="manual" runs `_gru_layer` instead: the same numbers, fused
  GEMMs and a hand-written backward pass (whose weight gradients already come after its reverse
  scan, so "deferred" is the same); backward="autodiff" keeps the cell, the reference.
  Of `settings`, a cell layer takes `unroll` and `backward` (the cell computes its own
  projections, in float32)."""
  unroll, backward = settings.unroll, settings.backward
  if settings.matmul_dtype != "float32":
    raise ConfigError(
      f"matmul_dtype={settings.matmul_dtype!r} is the LSTM layer's; a cell layer computes in "
      f"float32 (leave matmul_dtype unset for cell={cls.__name__})."
    )
  if backward not in BACKWARDS:
    raise ConfigError(f"backward must be one of {BACKWARDS}, got {backward!r}.")
  if cls is nn.GRUCell and backward in ("manual", "deferred"):
    return _gru_layer(params, x_BxTxF, mask_BxT, resets_BxT, carry, unroll)
  cell = cls(features=hidden_size, parent=None)
  init = zero_carry(x_BxTxF.shape[0], hidden_size, 1, cls)[0]

  def step(c, xs):
    return _masked_cell_step(lambda c, x: cell.apply({"params": params}, c, x), c, xs, init)

  xs = (jnp.swapaxes(x_BxTxF, 0, 1), mask_BxT.T, resets_BxT.T)
  carry, ys_TxBxH = jax.lax.scan(step, carry, xs, unroll=unroll)
  return jnp.swapaxes(ys_TxBxH, 0, 1), carry


def _gru_layer(p: dict, x_BxTxF, mask_BxT, resets_BxT, h_BxH, unroll: int = 1):
  """Flax's `nn.GRUCell` over a batch with CellLayer's masking and resets, from the cell's own
  parameter tree, through `recurrence.gru_recurrence`: its six Dense layers fused into two GEMMs
  per step, and a hand-written backward pass (one GEMM per step; the weight gradients as one
  GEMM each after the reverse scan). The same numbers as the cell to float32 rounding, and the
  same gradients as JAX's autodiff of it (tests/test_cells.py)."""
  w_i = jnp.concatenate([p[g]["kernel"] for g in ("ir", "iz", "in")], axis=1)  # [F, 3H]
  b_i = jnp.concatenate([p[g]["bias"] for g in ("ir", "iz", "in")])
  w_h = jnp.concatenate([p[g]["kernel"] for g in ("hr", "hz", "hn")], axis=1)  # [H, 3H]
  dtype = jnp.float32
  seq = (
    jnp.swapaxes(x_BxTxF, 0, 1).astype(dtype),
    mask_BxT.T.astype(dtype),
    resets_BxT.T.astype(dtype),
  )
  ys_TxBxH, h_BxH = recurrence.gru_recurrence((w_i, b_i, w_h, p["hn"]["bias"]), seq, h_BxH, unroll)
  return jnp.swapaxes(ys_TxBxH, 0, 1), h_BxH


def recurrent_layer(
  cell: Any,
  hidden_size: int,
  input_projection: str,
  unroll: int,
  backward: str,
  matmul_dtype: str,
  name: str,
  initializer: str = "auto",
) -> nn.Module:
  """Layer `name` of a stack: the hand-written LSTMLayer for cell "lstm", else a CellLayer
  (input_projection and matmul_dtype are the LSTM's settings; backward chooses between the
  GRU's hand-written backward pass and JAX's autodiff of Flax's GRUCell, and other cells are
  always JAX's)."""
  cls = resolve_cell(cell)
  if cls is None:
    kernel_init, recurrent_init, bias_init = lstm_initializers(initializer, hidden_size)
    return LSTMLayer(
      hidden_size,
      input_projection,
      unroll,
      kernel_init=kernel_init,
      recurrent_init=recurrent_init,
      bias_init=bias_init,
      backward=backward,
      matmul_dtype=matmul_dtype,
      name=name,
    )
  check_cell_matmul(cell, matmul_dtype)
  return CellLayer(cls, hidden_size, unroll, backward, initializer, name=name)


def stack_layer(stack: Any, name: str) -> nn.Module:
  """Layer `name` of a linen stack (`LSTM` or `BidirectionalLSTM`), from the stack's settings."""
  return recurrent_layer(
    stack.cell,
    stack.hidden_size,
    stack.input_projection,
    stack.unroll,
    stack.backward,
    stack.matmul_dtype,
    name=name,
    initializer=stack.initializer,
  )


def fused_layer_params(stack: Any, name: str, in_features: int) -> dict:
  """Layer `name` of a linen stack's parameters ({kernel, recurrent_kernel, bias}), made or read
  by the scan's own layer: what the fused path (`lstm_jax.cudnn`) computes from."""
  return stack_layer(stack, name)(jnp.zeros((1, 1, in_features)), None, None, None, True)


def check_cell_matmul(cell: Any, matmul_dtype: str) -> None:
  """bfloat16 matmuls are the hand-written LSTM's; every other cell computes in float32 (the
  linen and NNX layers both ask here)."""
  if resolve_cell(cell) is not None and matmul_dtype != "float32":
    raise ConfigError(
      f"matmul_dtype={matmul_dtype!r} is implemented for cell='lstm' only; use float32 "
      f"with cell {cell_name(cell)!r}."
    )


class _MaskedStep(nn.Module):
  """One time step for a whole batch. Owns no parameters: the weights come in broadcast."""

  in_step_projection: bool
  matmul_dtype: str = "float32"

  @nn.compact
  def __call__(self, carry, xs, weights, bias):
    # x_t: [B, F], or [B, 4H] already projected; mask_t, reset_t: [B] float 0/1.
    # weights: [F + H, 4H] (kernel stacked on recurrent_kernel) in step, else recurrent_kernel.
    carry, y, _ = recurrence.step(
      weights, bias, self.in_step_projection, carry, xs, self.matmul_dtype
    )
    return carry, y


class LSTMLayer(nn.Module):
  """One LSTM layer over a whole batch of sequences. See the module docstring.

  backward: how the gradient is computed. "manual" (default): `recurrence.recurrence`, a
  hand-written reverse scan (`jax.custom_vjp`), faster to run and to trace; "autodiff": the step
  scanned with `nn.scan` and differentiated by JAX, the reference the manual one is tested
  against; "deferred": the manual reverse scan with the weight and bias gradients taken after it,
  one [F + H, T*B] x [T*B, 4H] GEMM and one sum (`recurrence.recurrence_deferred`; 1.18-1.22x at
  8 rows per step, 1.02-1.12x at 16-128 on an AMD EPYC, docs/speed.md), which
  sums in another order (the same gradients up to float32 rounding) and keeps one more
  [T, B, 4H] buffer. The forward pass is the same computation in all three (`lstm_layer`).

  matmul_dtype: "float32" (default, exact) or "bfloat16" (bfloat16 operands, float32
  accumulation, for speed; see the module docstring).
  """

  hidden_size: int
  input_projection: str = "auto"
  unroll: int = 1
  kernel_init: Any = nn.initializers.glorot_uniform()
  recurrent_init: Any = nn.initializers.orthogonal()
  bias_init: Any = forget_bias_init(1.0)
  backward: str = "manual"
  matmul_dtype: str = "float32"

  @nn.compact
  def __call__(
    self,
    x_BxTxF: Array,
    mask_BxT: Array,
    resets_BxT: Array,
    carry: tuple[Array, Array],
    params_only: bool = False,
  ) -> Any:
    """The layer over the batch: (outputs, carry). params_only: only make (or read) the
    parameters, for the fused path (`lstm_jax.cudnn`): {kernel, recurrent_kernel, bias}."""
    features, hidden = x_BxTxF.shape[-1], self.hidden_size
    if self.has_variable("params", "kernel"):
      expected: int = self.get_variable("params", "kernel").shape[0]
      if expected != features:
        raise DataError(
          f"{self.name}: the inputs have {features} features per step but the model "
          f"was initialised for {expected}; re-initialise the model for {features} "
          f"features or feed it {expected}-feature inputs."
        )
    kernel = self.param("kernel", self.kernel_init, (features, 4 * hidden), jnp.float32)
    recurrent_kernel = self.param(
      "recurrent_kernel", self.recurrent_init, (hidden, 4 * hidden), jnp.float32
    )
    bias = self.param("bias", self.bias_init, (4 * hidden,), jnp.float32)
    if params_only:
      return dict(kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias)

    def linen_scan(weights, bias, seq, carry, in_step, unroll, dtype):
      scan = nn.scan(
        _MaskedStep,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=(0, nn.broadcast, nn.broadcast),
        out_axes=0,
        unroll=unroll,
      )
      carry, ys_TxBxH = scan(in_step_projection=in_step, matmul_dtype=dtype, name="scan")(
        carry, tuple(seq), weights, bias
      )
      return ys_TxBxH, carry

    params = dict(kernel=kernel, recurrent_kernel=recurrent_kernel, bias=bias)
    settings = LayerSettings(self.input_projection, self.unroll, self.backward, self.matmul_dtype)
    return lstm_layer(
      params, x_BxTxF, mask_BxT, resets_BxT, (carry[0], carry[1]), settings, linen_scan
    )


def _autodiff_scan(weights, bias, seq, carry, in_step, unroll, dtype):
  """The LSTM step scanned by `jax.lax.scan`, differentiated by JAX: the reference for the
  hand-written backward pass (`recurrence.recurrence`), the same forward computation."""

  def body(c, step_xs):
    c, y, _ = recurrence.step(weights, bias, in_step, c, step_xs, dtype)
    return c, y

  carry, ys = jax.lax.scan(body, carry, tuple(seq), unroll=unroll)
  return ys, carry


def lstm_layer(
  params: dict,
  x_BxTxF: Array,
  mask_BxT: Array,
  resets_BxT: Array,
  carry: tuple[Array, Array],
  settings: LayerSettings = LayerSettings(),
  autodiff_scan=None,
) -> tuple[Array, tuple[Array, Array]]:
  """One masked, resettable LSTM layer as a function of its parameters (`params`: kernel
  [F, 4H], recurrent_kernel [H, 4H], bias [4H]; the module docstring's step over a batch):
  outputs <float32>[B, T, H] and the carry (c, h). Linen's `LSTMLayer` and the NNX front end
  (`lstm_jax.nnx_model`) both compute through it. autodiff_scan: how backward="autodiff" scans
  the step (linen passes `nn.scan`; default `jax.lax.scan`), both `(weights, bias, (xs, mask,
  resets), carry, in_step, unroll, matmul_dtype) -> (ys, carry)`."""
  kernel, recurrent_kernel, bias = params["kernel"], params["recurrent_kernel"], params["bias"]
  input_projection, unroll, backward, matmul_dtype = settings
  recurrence.cast_weights(bias, matmul_dtype)  # checks the setting: a clear error
  in_step = resolve_input_projection(input_projection) == "in_step"
  xs_TxBx = jnp.swapaxes(x_BxTxF, 0, 1)
  if in_step:
    weights = jnp.concatenate([kernel, recurrent_kernel], axis=0)  # [F + H, 4H]
  else:
    # one [T*B, F] x [F, 4H] matmul before the scan
    xs_TxBx = recurrence.matmul(xs_TxBx, kernel, matmul_dtype) + bias[None, None, :]
    weights = recurrent_kernel

  def as_float(a):
    return a.T.astype(xs_TxBx.dtype)

  mask_TxB, resets_TxB = as_float(mask_BxT), as_float(resets_BxT)
  if backward not in BACKWARDS:
    raise ConfigError(f"backward must be one of {BACKWARDS}, got {backward!r}.")
  scan = {"manual": recurrence.recurrence, "deferred": recurrence.recurrence_deferred}.get(
    backward, autodiff_scan or _autodiff_scan
  )
  ys_TxBxH, carry = scan(
    weights, bias, (xs_TxBx, mask_TxB, resets_TxB), tuple(carry), in_step, unroll, matmul_dtype
  )
  return jnp.swapaxes(ys_TxBxH, 0, 1), carry
