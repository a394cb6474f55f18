"""Run by tests/test_host.py: minor page faults per call of a compiled LSTM gradient whose XLA
scratch (~74 MiB: B=512, T=128, H=32) is larger than a glibc thread arena's heap (64 MiB).

    python tests/scripts/page_faults_check.py tuned|default

Prints one JSON line: {"faults_per_call" (the median over the steady calls), "faults" (each call's),
"temp_bytes", "rss_bytes", "malloc"}.
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from lstm_jax import host  # noqa: E402

host.tune_malloc(sys.argv[1] == "tuned")  # before jax allocates anything

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lstm_jax import recurrence  # noqa: E402

# Wide and narrow: the scratch of a B=64, H=256 step, for less compile and run time (5.4 s a
# process against 7.1 s, Xeon, 2026-12-01).
T, B, F, H = 128, 512, 8, 32
k = jax.random.split(jax.random.key(0), 2)
w = 0.05 * jax.random.normal(k[0], (F + H, 4 * H))
xs = jax.random.normal(k[1], (T, B, F))
mask, resets = jnp.ones((T, B)), jnp.zeros((T, B))
carry = (jnp.zeros((B, H)), jnp.zeros((B, H)))


def loss(w, b):
  ys, _ = recurrence.recurrence(w, b, (xs, mask, resets), carry, True, 1)
  return jnp.mean(ys**2)


step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(w, jnp.zeros(4 * H)).compile()
for _ in range(4):  # warm-up: the heap grows to the step's size
  jax.block_until_ready(step(w, jnp.zeros(4 * H)))
faults = []
for _ in range(16):  # the tuned heap still grows now and then (fragmentation): a median, not a mean
  before = host.minor_page_faults()
  jax.block_until_ready(step(w, jnp.zeros(4 * H)))
  faults.append(host.minor_page_faults() - before)
print(
  json.dumps(
    dict(
      faults_per_call=statistics.median(faults),
      faults=faults,
      temp_bytes=step.memory_analysis().temp_size_in_bytes,
      rss_bytes=int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE"),
      malloc=host.malloc_state(),
    )
  )
)
