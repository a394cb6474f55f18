"""The LSTM recurrence over time with a hand-written backward pass (`jax.custom_vjp`).

`recurrence(weights, bias, xs, mask, resets, carry, in_step, unroll)` scans `step` over time,
the same step `layers._MaskedStep` runs under `nn.scan` (so the forward pass gives the same
numbers); its gradient is a reverse `lax.scan` written out by hand instead of JAX's
linearize-and-transpose of the forward scan. Why (how much: BENCHMARKS.md, docs/speed.md):

* the compiled autodiff forward loop writes each of its six per-step residuals twice (12
  dynamic-update-slices per step, seen in `jit(...).lower(...).compile().as_text()`); this one
  writes the [x, h] operand, the four gate activations, the state entering the step and tanh(c)
  once, so a train step needs less XLA scratch memory and moves fewer bytes;
* inputs that need no gradient (data entering layer 0) skip the input part of the gradient GEMM
  (`symbolic_zeros`);
* the reverse scan is a smaller program than JAX's transpose of the forward one, so it traces
  and lowers faster, which is most of what a persistent-cache hit still pays.

Matmul precision (`matmul_dtype`, default float32): "bfloat16" rounds the operands of the three
GEMMs per step (forward, recurrent-input gradient, weight gradient) to bfloat16 and accumulates in
float32; the state, the gates, the residuals and the gradients' sums stay float32, the parameters
too (their bfloat16 copy is made once per call). Whether that is faster depends on the CPU:
faster where bfloat16 dot products are native and fast, slower on some CPUs that have them
(docs/speed.md lists both); measure on yours. Numbers then differ from float32 by bfloat16
rounding (~3 significant digits per operand), so the float32 default is the exact one; under
bfloat16, padding, bucketing and unpadded runs still agree with each other (same operands per
row). For XLA to keep each dot in bfloat16 (on the CPU
it widens a bfloat16 dot with a transposed operand back to float32), the backward reads a
transposed [K, B] copy of the step's GEMM input and a [4H, K] copy of the weights, so both its
dots are plain [M, K] x [K, N].

Shapes: xs [T, B, K] (K = F inputs when `in_step`, else the hoisted projection 4H);
mask/resets [T, B] float 0/1; carry (c, h) each [B, H]; weights [F + H, 4H] when `in_step`
(kernel stacked on recurrent_kernel), else the recurrent kernel [H, 4H]; bias [4H] (unused when
hoisted: the projection already added it). Returns (ys [T, B, H], (c, h)).

Gradients flow to weights, bias, xs and the initial carry; mask and resets get zero cotangents.
`tests/test_recurrence.py` checks values and gradients against JAX's autodiff of the same
recurrence (`model.LSTMLayer(backward="autodiff")`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values

from lstm_jax.errors import ConfigError

Array = jax.Array


MATMUL_DTYPES = ("float32", "bfloat16")


def _check(matmul_dtype: str) -> str:
  if matmul_dtype not in MATMUL_DTYPES:
    raise ConfigError(
      f"matmul_dtype must be one of {MATMUL_DTYPES}, got {matmul_dtype!r}; "
      f"float32 is exact, bfloat16 faster where the CPU has bfloat16 dot products."
    )
  return matmul_dtype


def cast_weights(weights, matmul_dtype: str):
  """The weights as the step's matmuls read them: float32 as they are, or a bfloat16 copy."""
  return weights.astype(jnp.dtype(_check(matmul_dtype)))


def matmul(a, b, matmul_dtype: str = "float32"):
  """a [..., K] @ b [K, N] with operands in matmul_dtype, accumulated and returned in float32.

  Differentiable: the gradients come from operands in matmul_dtype too, as float32 (JAX's own
  rule would return the weights' gradient rounded to bfloat16, one rounding per use).
  """
  if _check(matmul_dtype) == "float32":
    return a @ b
  return _low_matmul(a, b, jnp.dtype(matmul_dtype))


def _dot32(a, b):
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_matmul(a, b, dtype):
  return _dot32(a.astype(dtype), b.astype(dtype))


def _low_matmul_fwd(a, b, dtype):
  a_low, b_low = a.astype(dtype), b.astype(dtype)
  # the operands' own dtypes ride along as empty arrays (residuals must be arrays)
  return _dot32(a_low, b_low), (a_low, b_low, jnp.zeros(0, a.dtype), jnp.zeros(0, b.dtype))


def _low_matmul_bwd(dtype, saved, ct):
  a_low, b_low, a_kind, b_kind = saved
  ct_low = ct.astype(dtype)
  d_a = _dot32(ct_low, b_low.T)
  d_b = _dot32(a_low.reshape(-1, a_low.shape[-1]).T, ct_low.reshape(-1, ct_low.shape[-1]))
  return d_a.astype(a_kind.dtype), d_b.astype(b_kind.dtype)


_low_matmul.defvjp(_low_matmul_fwd, _low_matmul_bwd)


def _gates(weights, bias, x_t, h, in_step: bool, matmul_dtype: str):
  if in_step:
    xh = jnp.concatenate([x_t, h], axis=-1)
    return matmul(xh, weights, matmul_dtype) + bias[None, :], xh
  return x_t + matmul(h, weights, matmul_dtype), h


def step(weights, bias, in_step: bool, carry, xs, matmul_dtype: str = "float32"):
  """One time step for a whole batch: (new carry, output, what the backward step needs).

  matmul_dtype: the matmul's operand dtype (`matmul`); the weights may come cast already.

  xs = (x_t, mask_t, reset_t). A reset zeroes the state first (x * 0 = 0 exactly); at a masked
  step the state does not move and the output is 0 (masking by multiplication, exact for m in
  {0, 1}: a * 1 + b * 0 = a; measured faster on the CPU than jnp.where).
  """
  x_t, mask_t, reset_t = xs
  c, h = carry
  keep = 1.0 - reset_t[:, None]
  c, h = c * keep, h * keep
  z, lhs = _gates(weights, bias, x_t, h, in_step, matmul_dtype)
  # All four activations in one [B, 4H] elementwise pass (tanh on the g quarter, sigmoid on the
  # rest): the same numbers as four separate ones, one fused loop over the gates instead of four
  # [B, H] passes and a concatenation for the residuals (faster on the CPU: docs/speed.md).
  quarter = jnp.arange(z.shape[-1]) // (z.shape[-1] // 4)
  acts = jnp.where(quarter == 2, jnp.tanh(z), jax.nn.sigmoid(z))
  i, f, g, o = jnp.split(acts, 4, axis=-1)
  new_c = f * c + i * g
  tc = jnp.tanh(new_c)
  new_h = o * tc
  m = mask_t[:, None]
  out_c = new_c * m + c * (1.0 - m)
  out_h = new_h * m + h * (1.0 - m)
  return (out_c, out_h), new_h * m, (lhs, acts, c, tc)


def _recurrence(
  weights,
  bias,
  seq,
  carry,
  in_step: bool,
  unroll: int = 1,
  matmul_dtype: str = "float32",
):
  """The masked, resettable LSTM over time with its hand-written backward pass: seq = (xs
  [T, B, F] (or [T, B, 4H] projected), mask [T, B], resets [T, B]), carry (c, h) [B, H] ->
  (ys [T, B, H], the carry after each row's last real step)."""
  w = cast_weights(weights, matmul_dtype)

  def body(carry, step_xs):
    carry, y, _ = step(w, bias, in_step, carry, step_xs, matmul_dtype)
    return carry, y

  carry, ys = jax.lax.scan(body, carry, tuple(seq), unroll=unroll)
  return ys, carry


def _fwd(weights, bias, seq, carry, in_step, unroll, matmul_dtype):
  # symbolic_zeros: each argument leaf comes as CustomVJPPrimal(value, perturbed).
  need_d_xs = seq[0].perturbed  # False for data inputs (layer 0): no input-gradient GEMM then
  weights, bias, (xs, mask, resets), carry = custom_vjp_primal_tree_values(
    (weights, bias, tuple(seq), carry)
  )
  w = cast_weights(weights, matmul_dtype)
  low = matmul_dtype != "float32"

  def body(carry, step_xs):
    carry, y, (lhs, acts, c, tc) = step(w, bias, in_step, carry, step_xs, matmul_dtype)
    # bfloat16: the weight gradient's GEMM reads the input transposed ([K, B], see the docstring)
    return carry, (y, (lhs.T if low else lhs, acts, c, tc))

  final, (ys, res) = jax.lax.scan(body, carry, (xs, mask, resets), unroll=unroll)
  # `need_d_xs` rides in the residuals' structure (None or an empty array), not as a value.
  return (ys, final), (weights, bias, mask, resets, res, jnp.zeros(0) if need_d_xs else None)


def _instantiate(ct):
  return jnp.zeros(ct.aval.shape, ct.aval.dtype) if isinstance(ct, SymbolicZero) else ct


def _bwd(in_step, unroll, matmul_dtype, saved, cotangents, deferred: bool = False):
  """The reverse scan. `deferred`: the weight and bias gradients are not summed step by step but
  taken after the scan, one GEMM over all T x B rows ([K, T*B] x [T*B, 4H]) and one sum, from
  the stacked d_z (backward="deferred": faster with few rows per step, the same gradients up to
  float32 rounding of another summation order, one more [T, B, 4H] buffer)."""
  weights, bias, mask, resets, (lhs, acts, c_in, tc), need_d_xs = saved
  low = matmul_dtype != "float32"
  d_ys, (d_c_final, d_h_final) = jax.tree.map(
    _instantiate, cotangents, is_leaf=lambda x: isinstance(x, SymbolicZero)
  )
  need_d_xs = need_d_xs is not None
  hidden = c_in.shape[-1]

  # Sliced once, outside the loop: XLA re-sliced [F + H, 4H] every step. Not transposed in float32:
  # the dot reads [H, 4H] transposed faster than a materialized [4H, H] (measured, YNNPACK).
  w_back = weights if need_d_xs or not in_step else weights[-hidden:]
  if low:  # [4H, K] in bfloat16: d_z @ it is a plain GEMM that XLA keeps in bfloat16
    w_back_t = cast_weights(w_back.T, matmul_dtype)

    def d_lhs(d_z):
      return _dot32(d_z.astype(w_back_t.dtype), w_back_t)

    def d_weights(lhs_t, d_z):  # lhs_t: [K, rows], transposed in the forward pass
      return _dot32(lhs_t.astype(w_back_t.dtype), d_z.astype(w_back_t.dtype))

  else:

    def d_lhs(d_z):
      return d_z @ w_back.T

    def d_weights(lhs, d_z):  # lhs: [rows, K], as the forward pass kept it
      return lhs.T @ d_z

  def body(carry, step):
    dc, dh, d_w, d_b = carry
    d_y, m, r, lhs_t, a, c, t = step  # t = tanh(new c)
    m, keep = m[:, None], 1.0 - r[:, None]
    i, f, g, o = jnp.split(a, 4, axis=-1)
    d_new_h = (d_y + dh) * m  # y = new_h * m; h_out = new_h * m + h (1 - m)
    d_new_c = dc * m + d_new_h * o * (1.0 - t * t)
    d_zi = d_new_c * g * i * (1.0 - i)
    d_zf = d_new_c * c * f * (1.0 - f)
    d_zg = d_new_c * i * (1.0 - g * g)
    d_zo = d_new_h * t * o * (1.0 - o)
    d_z = jnp.concatenate([d_zi, d_zf, d_zg, d_zo], axis=-1)
    d_c = dc * (1.0 - m) + d_new_c * f
    if in_step and need_d_xs:
      d_xh = d_lhs(d_z)
      d_x, d_h = d_xh[:, :-hidden], d_xh[:, -hidden:]
    else:  # in_step: only the recurrent rows, [B, 4H] x [4H, H]; hoisted: xs' gradient is d_z
      d_x, d_h = (d_z if need_d_xs and not in_step else None), d_lhs(d_z)
    d_h = d_h + dh * (1.0 - m)
    if deferred:  # d_z leaves the loop; the sums over it come after
      return (d_c * keep, d_h * keep, d_w, d_b), (d_x, d_z)
    d_w = d_w + d_weights(lhs_t, d_z)
    if in_step:  # hoisted: the projection outside added the bias, so it has no gradient here
      d_b = d_b + jnp.sum(d_z, axis=0)
    return (d_c * keep, d_h * keep, d_w, d_b), (d_x, None)

  sums = (None, None) if deferred else (jnp.zeros_like(weights), jnp.zeros_like(bias))
  init = (d_c_final, d_h_final, *sums)
  (d_c0, d_h0, d_w, d_b), (d_xs, d_zs) = jax.lax.scan(
    body, init, (d_ys, mask, resets, lhs, acts, c_in, tc), reverse=True, unroll=unroll
  )
  if deferred:  # one step's d_weights over all T x B rows: [K, T*B] x [T*B, 4H]
    # lhs: [T, B, K], or [T, K, B] in bfloat16 (the forward keeps each step's transposed copy)
    k = weights.shape[0]
    lhs_all = jnp.transpose(lhs, (1, 0, 2)).reshape(k, -1) if low else lhs.reshape(-1, k)
    d_w = d_weights(lhs_all, d_zs.reshape(-1, d_zs.shape[-1]))
    d_b = jnp.sum(d_zs, axis=(0, 1)) if in_step else None
  # None: no cotangent (the bias when hoisted; mask, resets; xs when they need none)
  return d_w, d_b if in_step else None, (d_xs, None, None), (d_c0, d_h0)


recurrence = jax.custom_vjp(_recurrence, nondiff_argnums=(4, 5, 6))
recurrence.defvjp(_fwd, _bwd, symbolic_zeros=True)

# backward="deferred": the same forward pass; the weight and bias gradients after the reverse scan
recurrence_deferred = jax.custom_vjp(_recurrence, nondiff_argnums=(4, 5, 6))
recurrence_deferred.defvjp(_fwd, functools.partial(_bwd, deferred=True), symbolic_zeros=True)


# The GRU (Flax's nn.GRUCell: gates r, z, n; the recurrent bias of n inside the reset product)
# with the same masking and resets, and its hand-written backward pass. Weights arrive fused:
# w_i [F, 3H] (ir, iz, in), b_i [3H], w_h [H, 3H] (hr, hz, hn), b_hn [H]. The reverse scan runs
# one [B, 3H] x [3H, H] GEMM per step; the weight and input gradients are one GEMM each over
# all T x B rows after it. JAX's autodiff of Flax's cell (model.CellLayer, backward="autodiff")
# is the reference (tests/test_cells.py).


def _gru_forward(params, seq, h0, unroll):
  w_i, b_i, w_h, b_hn = params
  h = w_h.shape[0]

  def body(h_prev, step_xs):
    x_t, mask_t, reset_t = step_xs
    h_prev = h_prev * (1.0 - reset_t[:, None])  # a reset restores the cell's zeros
    gx, gh = x_t @ w_i + b_i[None, :], h_prev @ w_h
    r = jax.nn.sigmoid(gx[:, :h] + gh[:, :h])
    z = jax.nn.sigmoid(gx[:, h : 2 * h] + gh[:, h : 2 * h])
    hn = gh[:, 2 * h :] + b_hn[None, :]
    n = jnp.tanh(gx[:, 2 * h :] + r * hn)
    new = (1.0 - z) * n + z * h_prev
    keep = mask_t[:, None] > 0
    return jnp.where(keep, new, h_prev), (jnp.where(keep, new, 0.0), (h_prev, r, z, n, hn))

  return jax.lax.scan(body, h0, tuple(seq), unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gru_recurrence(params, seq, h0, unroll=1):
  """The masked, resettable GRU over time: params = (w_i, b_i, w_h, b_hn) (above), seq = (xs
  [T, B, F], mask [T, B], resets [T, B], float 0/1), h0 [B, H] -> (ys [T, B, H], zero at masked
  steps; h [B, H] after each row's last real step)."""
  h_last, (ys, _) = _gru_forward(params, seq, h0, unroll)
  return ys, h_last


def _gru_fwd(params, seq, h0, unroll):
  h_last, (ys, saved) = _gru_forward(params, seq, h0, unroll)
  w_i, _, w_h, _ = params
  xs, mask, resets = seq
  return (ys, h_last), (w_i, w_h, xs, mask, resets, saved)


def _gru_bwd(unroll, saved, cotangents):
  w_i, w_h, xs, mask, resets, (h_prev, r, z, n, hn) = saved
  d_ys, d_h = cotangents
  w_h_t = w_h.T

  def body(d_h, step):
    d_y, mask_t, reset_t, h_prev, r, z, n, hn = step
    keep = mask_t[:, None]
    d_new = keep * (d_h + d_y)
    d_n = d_new * (1.0 - z) * (1.0 - n * n)  # through tanh
    d_r = d_n * hn * r * (1.0 - r)
    d_z = d_new * (h_prev - n) * z * (1.0 - z)
    d_gh = jnp.concatenate([d_r, d_z, d_n * r], axis=-1)
    d_prev = d_new * z + (1.0 - keep) * d_h + d_gh @ w_h_t
    d_gx = jnp.concatenate([d_r, d_z, d_n], axis=-1)
    return d_prev * (1.0 - reset_t[:, None]), (d_gx, d_gh)

  d_h0, (d_gx, d_gh) = jax.lax.scan(
    body, d_h, (d_ys, mask, resets, h_prev, r, z, n, hn), reverse=True, unroll=unroll
  )
  t, b, f = xs.shape
  hidden = w_h.shape[0]
  d_gx, d_gh = d_gx.reshape(t * b, 3 * hidden), d_gh.reshape(t * b, 3 * hidden)
  d_params = (
    xs.reshape(t * b, f).T @ d_gx,
    d_gx.sum(axis=0),
    h_prev.reshape(t * b, hidden).T @ d_gh,
    d_gh[:, 2 * hidden :].sum(axis=0),
  )
  d_seq = ((d_gx @ w_i.T).reshape(t, b, f), jnp.zeros_like(mask), jnp.zeros_like(resets))
  return d_params, d_seq, d_h0


gru_recurrence.defvjp(_gru_fwd, _gru_bwd)
