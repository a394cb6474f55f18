#!/usr/bin/env bash
# The accelerator check in one command (docs/speed.md, "The fused cuDNN LSTM"): the scan and
# the fused cuDNN LSTM under pad and bucket, tbptt and pack on the scan, Flax's nn.RNN in
# power-of-two buckets, all on workload W, and the exactness checks repeated on the GPU;
# writes benchmarks/gpu/RESULTS.md (and .json). About 3 to 6 minutes on one GPU.
#
#   bash benchmarks/gpu/run.sh [OUT.md]
#
# It installs nothing it can find already: the project runs from this checkout (PYTHONPATH),
# on the machine's python3 and its jax / flax / optax. Only what is missing is installed:
# ml_collections (from wheels in benchmarks/gpu/wheels/ if there, for a machine with no
# network: `pip download --no-deps ml_collections==1.1.0 absl-py -d benchmarks/gpu/wheels`),
# and, where jax sees no GPU, the CUDA jaxlib wheel for the pinned jax.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-benchmarks/gpu/RESULTS.md}"
py="${PYTHON:-python3}"
wheels=benchmarks/gpu/wheels
if ! "$py" -c "import ml_collections" 2>/dev/null; then
  if compgen -G "$wheels/*.whl" >/dev/null; then
    "$py" -m pip install --quiet --no-deps --no-index "$wheels"/*.whl
  else
    "$py" -m pip install --quiet "ml_collections==1.1.0"
  fi
fi
if ! "$py" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  "$py" -m pip install --quiet "jax[cuda12]==0.10.2"
fi
"$py" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
PYTHONPATH=. PYTHONUNBUFFERED=1 "$py" -m lstm_jax.benchmark.gpu --out "$out"
