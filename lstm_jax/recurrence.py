"""The LSTM recurrence over time with a hand-written backward pass (`jax.custom_vjp`).

`recurrence(weights, bias, xs, mask, resets, carry, in_step, unroll)` scans `step` over time,
the same step `model._MaskedStep` runs under `nn.scan` (so the forward pass gives the same
numbers); its gradient is a reverse `lax.scan` written out by hand instead of JAX's
linearize-and-transpose of the forward scan. Why, measured on the benchmark's 2-core CPU
(BENCHMARKS.md, README "Speed"):

* the compiled autodiff forward loop writes each of its six per-step residuals twice (12
  dynamic-update-slices per step, seen in `jit(...).lower(...).compile().as_text()`); this one
  writes the [x, h] operand, the four gate activations, the state entering the step and tanh(c)
  once: 32% less XLA scratch memory per train step;
* inputs that need no gradient (data entering layer 0) skip the input part of the gradient GEMM
  (`symbolic_zeros`);
* train steps ran 6% to 29% faster (median 15%) in 14 paired timings, and tracing is cheaper:
  the LSTM's gradient traces and lowers in 19 ms against 55 ms at B=64, T=64, H=256, and the
  bucket strategy's 8 train steps trace in 0.30 s against 0.45 s, which is most of what a
  persistent-cache hit still pays.

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

Array = jax.Array


def _gates(weights, bias, x_t, h, in_step: bool):
  if in_step:
    xh = jnp.concatenate([x_t, h], axis=-1)
    return xh @ weights + bias, xh
  return x_t + h @ weights, h


def step(weights, bias, in_step: bool, carry, xs):
  """One time step for a whole batch: (new carry, output, what the backward step needs).

  xs = (x_t, mask_t, reset_t). A reset zeroes the state first (x * 0 = 0 exactly); at a masked
  step the state does not move and the output is 0 (masking by multiplication, exact for m in
  {0, 1}: a * 1 + b * 0 = a; measured faster on the CPU than jnp.where).
  """
  x_t, mask_t, reset_t = xs
  c, h = carry
  keep = 1.0 - reset_t[:, None]
  c, h = c * keep, h * keep
  z, lhs = _gates(weights, bias, x_t, h, in_step)
  # All four activations in one [B, 4H] elementwise pass (tanh on the g quarter, sigmoid on the
  # rest): the same numbers as four separate ones, 2.5% faster train steps on the CPU than four
  # [B, H] passes and a concatenation for the residuals (median of 25 paired timings).
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def recurrence(weights, bias, xs, mask, resets, carry, in_step: bool, unroll: int = 1):
  def body(carry, step_xs):
    carry, y, _ = step(weights, bias, in_step, carry, step_xs)
    return carry, y
  carry, ys = jax.lax.scan(body, carry, (xs, mask, resets), unroll=unroll)
  return ys, carry


def _fwd(weights, bias, xs, mask, resets, carry, in_step, unroll):
  # symbolic_zeros: each argument leaf comes as CustomVJPPrimal(value, perturbed).
  need_d_xs = xs.perturbed  # False for data inputs (layer 0): no input-gradient GEMM then
  weights, bias, xs, mask, resets, carry = custom_vjp_primal_tree_values(
      (weights, bias, xs, mask, resets, carry))

  def body(carry, step_xs):
    carry, y, res = step(weights, bias, in_step, carry, step_xs)
    return carry, (y, res)
  final, (ys, res) = jax.lax.scan(body, carry, (xs, mask, resets), unroll=unroll)
  # `need_d_xs` rides in the residuals' structure (None or an empty array), not as a value.
  return (ys, final), (weights, bias, mask, resets, res, jnp.zeros(0) if need_d_xs else None)


def _instantiate(ct):
  return jnp.zeros(ct.aval.shape, ct.aval.dtype) if isinstance(ct, SymbolicZero) else ct


def _bwd(in_step, unroll, saved, cotangents):
  weights, bias, mask, resets, (lhs, acts, c_in, tc), need_d_xs = saved
  d_ys, (d_c_final, d_h_final) = jax.tree.map(_instantiate, cotangents,
                                              is_leaf=lambda x: isinstance(x, SymbolicZero))
  need_d_xs = need_d_xs is not None
  hidden = c_in.shape[-1]

  # Sliced once, outside the loop: XLA re-sliced [F + H, 4H] every step. Not transposed here:
  # the dot reads [H, 4H] transposed faster than a materialized [4H, H] (measured, YNNPACK).
  w_back = weights if need_d_xs or not in_step else weights[-hidden:]

  def body(carry, step):
    dc, dh, d_w, d_b = carry
    d_y, m, r, lhs_t, a, c, t = step  # t = tanh(new c)
    m, keep = m[:, None], 1.0 - r[:, None]
    i, f, g, o = jnp.split(a, 4, axis=-1)
    d_new_h = (d_y + dh) * m                       # y = new_h * m; h_out = new_h * m + h (1 - m)
    d_new_c = dc * m + d_new_h * o * (1.0 - t * t)
    d_zi = d_new_c * g * i * (1.0 - i)
    d_zf = d_new_c * c * f * (1.0 - f)
    d_zg = d_new_c * i * (1.0 - g * g)
    d_zo = d_new_h * t * o * (1.0 - o)
    d_z = jnp.concatenate([d_zi, d_zf, d_zg, d_zo], axis=-1)
    d_c = dc * (1.0 - m) + d_new_c * f
    if in_step and need_d_xs:
      d_xh = d_z @ w_back.T
      d_x, d_h = d_xh[:, :-hidden], d_xh[:, -hidden:]
    else:  # in_step: only the recurrent rows, [B, 4H] x [4H, H]; hoisted: xs' gradient is d_z
      d_x, d_h = (d_z if need_d_xs and not in_step else None), d_z @ w_back.T
    d_h = d_h + dh * (1.0 - m)
    d_w = d_w + lhs_t.T @ d_z
    if in_step:  # hoisted: the projection outside added the bias, so it has no gradient here
      d_b = d_b + jnp.sum(d_z, axis=0)
    return (d_c * keep, d_h * keep, d_w, d_b), d_x

  init = (d_c_final, d_h_final, jnp.zeros_like(weights), jnp.zeros_like(bias))
  (d_c0, d_h0, d_w, d_b), d_xs = jax.lax.scan(
      body, init, (d_ys, mask, resets, lhs, acts, c_in, tc), reverse=True, unroll=unroll)
  # None: no cotangent (the bias when hoisted; mask, resets; xs when they need none)
  return d_w, d_b if in_step else None, d_xs, None, None, (d_c0, d_h0)


recurrence.defvjp(_fwd, _bwd, symbolic_zeros=True)
