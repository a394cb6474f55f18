"""Which computation runs a recurrent stack's call: the one policy, for the linen and the NNX
stacks, the train and eval steps, and the runner.

`resolve_backend` checks a stack's settings; `fused_call` decides one call (its layout, dropout)
and gives the rows' lengths the fused LSTM takes; `step_backend` says what a train or eval step
runs on a strategy's batches (results record it); `row_backend` is the runner's per-row reading
of `config.model.backend` (a row that packs or chunks its rows keeps the scan). The fused
kernels themselves live in lstm_jax.cudnn; the scan in lstm_jax.recurrence and lstm_jax.model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lstm_jax.errors import ConfigError

Array = jax.Array


def _name(cell: Any) -> str:
  return cell if isinstance(cell, str) else getattr(cell, "__name__", repr(cell))


# How the built-in LSTM stack computes (`LSTM(backend=...)`, `SequenceModel(backend=...)`):
#   auto       the fused cuDNN LSTM on a CUDA device where the call allows it (the built-in
#              LSTM in float32, no dropout in use, right-padded rows given as seq_lengths=,
#              no resets), else the scan: on the CPU always the scan, the same numbers as ever
#   scan       the masked scan (any layout: padded, packed, chunked with resets)
#   cudnn      the fused cuDNN LSTM (lstm_jax.cudnn); a call it cannot serve is a ConfigError
#   reference  the same wiring through jax.experimental.rnn's reference (any device: tests)
BACKENDS = ("auto", "scan", "cudnn", "reference")


def resolve_backend(backend: str, cell: Any = "lstm", matmul_dtype: str = "float32") -> str:
  """ "scan", "cudnn" or "reference" for a stack's settings (not yet its call: see LSTM)."""
  if backend not in BACKENDS:
    raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}.")
  fusable = cell == "lstm" and matmul_dtype == "float32"  # the built-in LSTM, float32
  if backend == "auto":
    return "cudnn" if fusable and jax.default_backend() == "gpu" else "scan"
  if backend != "scan" and not fusable:
    raise ConfigError(
      f"backend={backend!r} is the fused LSTM's: it needs cell='lstm' and "
      f"matmul_dtype='float32' (got cell={_name(cell)!r}, matmul_dtype={matmul_dtype!r}); "
      f"use backend='scan' or 'auto'."
    )
  if backend == "cudnn" and jax.default_backend() != "gpu":
    raise ConfigError(
      f"backend='cudnn' needs a CUDA GPU; this machine runs {jax.default_backend()}. Use "
      f"backend='auto' (the scan here, cuDNN on a GPU), 'scan', or 'reference' (the same "
      f"wiring through jax.experimental.rnn's reference, on any device)."
    )
  return backend


def right_padded_lengths(inputs: Array, mask: Array | None, seq_lengths: Array | None):
  """The rows' lengths where a call's layout is right-padded, one sequence per row from step
  0 (seq_lengths given, or neither a mask nor seq_lengths: every step real), else None (a mask
  can hold any layout): what the fused LSTM takes."""
  if seq_lengths is not None:
    return seq_lengths
  if mask is None:
    return jnp.full((inputs.shape[0],), inputs.shape[1], jnp.int32)
  return None


def fused_backend(
  backend: str, cell: Any, matmul_dtype: str, *, seq_lengths: bool, resets: bool, dropout: bool
) -> str | None:
  """The fused implementation ("cudnn" or "reference") one call of a stack runs, or None: the
  scan. The fused LSTM serves right-padded rows (`seq_lengths`: `right_padded_lengths` has
  them; no `resets`) with no `dropout` in use; backend "auto" falls back to the scan
  otherwise, an explicit one is a ConfigError that says why it cannot (the linen and NNX
  stacks both ask here)."""
  impl = resolve_backend(backend, cell, matmul_dtype)
  if impl == "scan":
    return None
  why = (
    "it needs right-padded rows given as seq_lengths= (a mask can hold any layout), or all "
    "steps real (neither)"
    if not seq_lengths
    else "it takes no resets (one sequence per row, from step 0)"
    if resets
    else "dropout is in use (deterministic=False)"
    if dropout
    else None
  )
  if why is None:
    return impl
  if backend == "auto":
    return None
  raise ConfigError(f"backend={backend!r} cannot serve this call: {why}; or use 'auto'.")


def fused_call(stack: Any, inputs: Array, mask, resets, seq_lengths, dropout: bool = False):
  """(the fused implementation one call of `stack` runs or None, the rows' lengths it takes):
  `fused_backend` for a stack (linen's or NNX's LSTM or BidirectionalLSTM: its backend, cell
  and matmul_dtype) on this call's layout; `dropout`: whether dropout drops in this call."""
  impl = fused_backend(
    stack.backend,
    stack.cell,
    stack.matmul_dtype,
    seq_lengths=seq_lengths is not None or mask is None,  # right_padded_lengths' layouts
    resets=resets is not None,
    dropout=dropout,
  )
  if impl is None:  # the scan: no lengths to make
    return None, None
  return impl, right_padded_lengths(inputs, mask, seq_lengths)


def stack_backend(stack: Any, backend: str, cell: Any, matmul_dtype: str) -> None:
  """Sets an NNX stack's `backend` and `matmul_dtype` (what `fused_call` reads), checked as
  linen's stack is (`resolve_backend`)."""
  resolve_backend(backend, cell, matmul_dtype)
  stack.backend, stack.matmul_dtype = backend, matmul_dtype


def step_backend(model: Any, *, right_padded: bool, training: bool = False) -> str:
  """What a train or eval step of `model` runs on a strategy's batches: "scan", "cudnn" or
  "reference" (`train._apply` asks, and results record it). The fused LSTM takes a batch of
  right-padded rows (`Strategy.right_padded`: pad, pad_batch_max, bucket without pack_rows),
  with no dropout in use while training; "auto" falls back to the scan elsewhere, an explicit
  backend is a ConfigError that names the strategies it can serve. A model without a `backend`
  setting of BACKENDS (one's own module) runs as it is: "scan"."""
  backend = getattr(model, "backend", None)
  if not isinstance(backend, str) or backend not in BACKENDS:
    return "scan"  # a SequenceModel's own check refuses a misspelt backend at init
  dropout = (
    training
    and max(getattr(model, k, 0.0) for k in ("dropout_rate", "input_dropout", "output_dropout")) > 0
  )
  try:
    impl = fused_backend(
      backend,
      getattr(model, "cell", "lstm"),
      getattr(model, "matmul_dtype", "float32"),
      seq_lengths=right_padded,
      resets=False,
      dropout=dropout,
    )
  except ConfigError as e:
    if right_padded:
      raise
    raise ConfigError(
      f"backend={backend!r} runs right-padded rows, one sequence each (strategies pad, "
      f"pad_batch_max, bucket without pack_rows); this strategy packs or chunks its rows "
      f"(resets inside rows). Use backend='auto' or 'scan' for it."
    ) from e
  return impl or "scan"


def row_backend(backend: str, *, right_padded: bool) -> str:
  """The backend setting a runner row's model gets from `config.model.backend`: as set, except
  that an explicit fused backend ("cudnn", "reference") on a row that packs or chunks its rows
  (not `right_padded`) keeps the scan, so one config can fuse the rows that allow it. "auto"
  stays "auto": each step picks (`step_backend`)."""
  if backend in ("cudnn", "reference") and not right_padded:
    return "scan"
  return backend
