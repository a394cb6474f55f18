"""The hand-written backward passes (`recurrence.recurrence`, LSTMLayer(backward="manual"), the
default, and `recurrence.recurrence_deferred`, backward="deferred", whose weight gradient is one
GEMM after the reverse scan) against JAX's autodiff of the same recurrence scanned with nn.scan
(backward="autodiff"): the forward passes are the same operations, the gradients agree to float32
rounding (<= 1e-5 relative, max |a - b| / max |b|) with respect to parameters, inputs and the
initial carry, through masks, resets and several layers, for both input projections, in float32
and with bfloat16 matmuls (`matmul_dtype`), which are also checked against float32 and in the
compiled program."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import max_rel_err, ragged_features
from lstm_jax import batching, loop, recurrence, train
from lstm_jax.errors import ConfigError
from lstm_jax.layers import BACKWARDS, MATMUL_DTYPES
from lstm_jax.model import SequenceModel

TOL = 1e-5
B, T, F, H = 5, 11, 3, 7
HAND_WRITTEN = ("manual", "deferred")
assert set(BACKWARDS) == {*HAND_WRITTEN, "autodiff"}


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(B, T, F)), jnp.float32)
  mask = jnp.asarray(rng.random((B, T)) > 0.25)
  resets = jnp.asarray(rng.random((B, T)) > 0.8)
  return x, mask, resets


def _models(**kw):
  return {b: SequenceModel(H, num_outputs=2, backward=b, **kw) for b in BACKWARDS}


def _random_carry(model, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), model.zero_carry(B)
  )


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("projection", ["in_step", "hoisted"])
def test_manual_backward_equals_autodiff(projection, num_layers, matmul_dtype):
  models = _models(num_layers=num_layers, input_projection=projection, matmul_dtype=matmul_dtype)
  x, mask, resets = _inputs()
  params = models["manual"].init(jax.random.key(0), x, mask=mask, resets=resets)
  carry0 = _random_carry(models["manual"])

  def loss(p, x, c0, which):
    preds, carry = models[which].apply(p, x, mask=mask, resets=resets, initial_carry=c0)
    # nonlinear in the outputs and in the final (c, h) of every layer
    return jnp.sum(jnp.sin(preds)) + sum(jnp.sum(jnp.cos(a)) for a in jax.tree.leaves(carry))

  out = {
    b: jax.jit(
      lambda p, x, c0, b=b: models[b].apply(p, x, mask=mask, resets=resets, initial_carry=c0)
    )(params, x, carry0)
    for b in BACKWARDS
  }
  for hand in HAND_WRITTEN:
    assert max_rel_err(out[hand], out["autodiff"]) <= 1e-6  # same forward computation
  grads = {
    b: jax.jit(jax.grad(lambda p, x, c0, b=b: loss(p, x, c0, b), argnums=(0, 1, 2)))(
      params, x, carry0
    )
    for b in BACKWARDS
  }
  for hand in HAND_WRITTEN:
    names = ("params", "inputs", "initial carry")
    for name, a, b in zip(names, grads[hand], grads["autodiff"]):
      assert max_rel_err(a, b) <= TOL, (hand, name)
    assert float(jnp.max(jnp.abs(grads[hand][1]))) > 0  # the input gradient is really there


@pytest.mark.parametrize("projection", ["in_step", "hoisted"])
def test_parameter_only_gradient(projection):
  """Inputs that need no gradient (data) skip the input-gradient GEMM: same parameter gradient."""
  models = _models(num_layers=2, input_projection=projection)
  x, mask, resets = _inputs(seed=2)
  params = models["manual"].init(jax.random.key(3), x, mask=mask, resets=resets)
  grads = {
    b: jax.jit(
      jax.grad(lambda p, b=b: jnp.sum(models[b].apply(p, x, mask=mask, resets=resets)[0] ** 2))
    )(params)
    for b in BACKWARDS
  }
  for hand in HAND_WRITTEN:
    assert max_rel_err(grads[hand], grads["autodiff"]) <= TOL, hand


@pytest.mark.parametrize("use", ["outputs only", "final carry only"])
def test_unused_outputs_give_zero_cotangents(use):
  """A loss on the outputs alone (truncated BPTT drops the final carry) or on the carry alone."""
  models = _models()
  x, mask, resets = _inputs(seed=4)
  params = models["manual"].init(jax.random.key(5), x, mask=mask, resets=resets)

  def loss(p, which):
    preds, carry = models[which].apply(p, x, mask=mask, resets=resets)
    return jnp.sum(preds**2) if use == "outputs only" else jnp.sum(carry[0][1] ** 2)

  grads = {b: jax.jit(jax.grad(loss), static_argnums=1)(params, b) for b in BACKWARDS}
  for hand in HAND_WRITTEN:
    assert max_rel_err(grads[hand], grads["autodiff"]) <= TOL, hand


@pytest.mark.parametrize("strategy", ["bucket", "tbptt"])
def test_train_steps_agree(strategy):
  """Three jitted train steps (donated state, Adam) give the same parameters either way."""
  ds = ragged_features([3, 9, 4, 12, 7, 5, 2, 10], num_features=F, seed=1)
  strat = (
    batching.Bucket(ds, batch_size=4, boundaries=[6, 12])
    if strategy == "bucket"
    else batching.TBPTT(ds, num_streams=2, chunk_length=5)
  )
  params = {}
  for b in BACKWARDS:
    model = SequenceModel(H, num_outputs=2, backward=b)
    state = train.create_train_state(model, optax.adam(1e-2), ds, seed=0)
    result = loop.fit(state, strat, epochs=1)
    params[b] = result.state.params
  for hand in HAND_WRITTEN:
    assert max_rel_err(params[hand], params["autodiff"]) <= TOL, hand


def test_unknown_backward_is_a_config_error():
  x, mask, resets = _inputs()
  with pytest.raises(ConfigError, match="backward must be one of"):
    SequenceModel(H, num_outputs=2, backward="fast").init(
      jax.random.key(0), x, mask=mask, resets=resets
    )


@pytest.mark.parametrize("projection", ["in_step", "hoisted"])
def test_bfloat16_matmuls_are_close_to_float32_but_not_float32(projection):
  """bfloat16 operands change the numbers by bfloat16 rounding (~3 digits), no more."""
  x, mask, resets = _inputs(seed=6)
  models = {
    d: SequenceModel(H, num_outputs=2, num_layers=2, input_projection=projection, matmul_dtype=d)
    for d in MATMUL_DTYPES
  }
  params = models["float32"].init(jax.random.key(7), x, mask=mask, resets=resets)
  outs, grads = {}, {}
  for d, m in models.items():
    outs[d] = jax.jit(lambda p, m=m: m.apply(p, x, mask=mask, resets=resets))(params)
    grads[d] = jax.jit(
      jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x, mask=mask, resets=resets)[0])))
    )(params)
  for a, b in ((outs["bfloat16"], outs["float32"]), (grads["bfloat16"], grads["float32"])):
    assert 1e-5 < max_rel_err(a, b) < 3e-2


def _dot_operand_types(hlo: str) -> list[tuple[str, str]]:
  """(lhs, rhs) element types of every dot in an optimized HLO module's text."""
  types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
  return [(types[a], types[b]) for a, b in re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo)]


@pytest.mark.xla_optimized  # reads the program XLA compiles by default
@pytest.mark.parametrize(
  "scan", [recurrence.recurrence, recurrence.recurrence_deferred], ids=["manual", "deferred"]
)
@pytest.mark.parametrize("projection", ["in_step", "hoisted"])
def test_bfloat16_dots_stay_bfloat16_in_the_compiled_gradient(projection, scan):
  """XLA on the CPU widens a bfloat16 dot with a transposed operand back to float32; the manual
  backward's layouts keep all three GEMMs of a step (forward, input gradient, weight gradient) in
  bfloat16, and the float32 setting has no bfloat16 dot."""
  T_, B_, F_, H_ = 6, 4, 3, 8
  in_step = projection == "in_step"
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=((F_ + H_) if in_step else H_, 4 * H_)), jnp.float32)
  xs = jnp.asarray(rng.normal(size=(T_, B_, F_ if in_step else 4 * H_)), jnp.float32)
  ones, zeros = jnp.ones((T_, B_)), jnp.zeros((T_, B_))
  carry = (jnp.zeros((B_, H_)), jnp.zeros((B_, H_)))
  for dtype in MATMUL_DTYPES:

    def loss(w, b, xs):
      return jnp.sum(scan(w, b, (xs, ones, zeros), carry, in_step, 1, dtype)[0])

    hlo = (
      jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(w, jnp.zeros(4 * H_), xs).compile().as_text()
    )
    dots = _dot_operand_types(hlo)
    assert len(dots) >= 3, dots
    want = ("bf16", "bf16") if dtype == "bfloat16" else ("f32", "f32")
    assert all(d == want for d in dots), (dtype, dots)


def test_unknown_matmul_dtype_is_a_config_error():
  x, mask, resets = _inputs()
  with pytest.raises(ConfigError, match="matmul_dtype must be one of"):
    SequenceModel(H, num_outputs=2, matmul_dtype="float16").init(
      jax.random.key(0), x, mask=mask, resets=resets
    )
  with pytest.raises(ConfigError, match="matmul_dtype must be one of"):  # the function alone too
    recurrence.matmul(x, jnp.ones((F, 4)), "fp8")
