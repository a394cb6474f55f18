# ruff: noqa: F401  (the TYPE_CHECKING imports re-export the names __all__ lists)
"""lstm_jax: LSTMs on variable-length sequences, with bucketing, masked padding, packing and
stateful truncated BPTT behind one batch contract, exact to float32 rounding, compiles counted.

The names research code uses, importable from here (`from lstm_jax import Bucket, SequenceModel,
fit`); each is loaded on first use (PEP 562), so `import lstm_jax` stays cheap and imports no
JAX. The modules (`lstm_jax.batching`, `.model`, `.train`, `.data`, ...) stay importable as
they are. docs/api.md lists every name with its signature and summary.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it (an empty attribute: the name is that module)
_EXPORTS: dict[str, tuple[str, str]] = {
  # data: ragged sequences in memory or on disk
  "RaggedDataset": ("data", "RaggedDataset"),
  "from_sequences": ("data", "from_sequences"),
  "next_token_dataset": ("data", "next_token_dataset"),
  "tasks": ("tasks", ""),  # synthetic tasks with a known answer (the README's first example)
  "open_store": ("store", "open_store"),
  "write_store": ("store", "write_store"),
  "StoreSchema": ("store", "StoreSchema"),  # what a written store holds (write_store's schema)
  # one's own files: the UCR/UEA .ts format and ragged .npz, each (dataset, identity)
  "load_ts": ("labelled_files", "load_ts"),
  "load_npz": ("labelled_files", "load_npz"),
  # normalisations fitted on the training split (global, minmax, per_sequence, ...)
  "fit_normalizer": ("normalization", "fit_normalizer"),
  "normalize": ("normalization", "normalize"),
  # strategies: every one emits the same Batch
  "Batch": ("batching", "Batch"),
  "Strategy": ("batching", "Strategy"),  # the base class of a strategy of one's own
  "Pad": ("batching", "Pad"),
  "Bucket": ("batching", "Bucket"),
  "Pack": ("batching", "Pack"),
  "TBPTT": ("batching", "TBPTT"),
  "VariableTBPTT": ("batching", "VariableTBPTT"),
  "PadBatchMax": ("batching", "PadBatchMax"),
  # models (linen); the NNX front end is the `nnx_model` module; `readout`: mean, max and
  # attention pooling for sequence labels (SequenceModel(readout=...))
  "SequenceModel": ("model", "SequenceModel"),
  "SequenceClassifier": ("model", "SequenceClassifier"),
  "RNN": ("model", "RNN"),
  "BidirectionalRNN": ("model", "BidirectionalRNN"),
  "LSTM": ("model", "LSTM"),
  "BidirectionalLSTM": ("model", "BidirectionalLSTM"),
  "nnx_model": ("nnx_model", ""),
  # training
  "create_train_state": ("train", "create_train_state"),
  "fit": ("loop", "fit"),
  # fit's three records: what the host does ahead (compiles, prefetch), saving and resuming
  # (and signals), what is called and written as it trains (callbacks, evaluation, writer, bar)
  "Pipeline": ("loop", "Pipeline"),
  "Checkpointing": ("loop", "Checkpointing"),
  "Hooks": ("loop", "Hooks"),
  "evaluate": ("evaluation", "evaluate"),
  "predict": ("evaluation", "predict"),
  "predict_batches": ("evaluation", "predict_batches"),
  "Checkpointer": ("checkpoint", "Checkpointer"),
  "quiet_orbax": ("checkpoint", "quiet_orbax"),  # orbax's fault tracebacks as one message
  "Streamer": ("streaming", "Streamer"),
  # Hooks(writer=...): TensorBoard event files in step with the checkpoints (tensorboardX,
  # optional); Hooks(progress=...): a progress bar (rich in a terminal, plain lines elsewhere)
  "metric_writers": ("metric_writers", ""),
  "Progress": ("progress", "Progress"),
  # weights to and from PyTorch and Keras
  "convert": ("convert", ""),
  # Grain's packed batches to and from the Batch; any strategy as a Grain IterDataset
  "interop": ("interop", ""),
  # errors: one base class, one line each
  "LstmJaxError": ("errors", "LstmJaxError"),
  "ConfigError": ("errors", "ConfigError"),
  "DataError": ("errors", "DataError"),
  "CheckpointError": ("errors", "CheckpointError"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module 'lstm_jax' has no attribute {name!r}")
  module, attr = _EXPORTS[name]
  value = importlib.import_module(f"lstm_jax.{module}")
  if attr:
    value = getattr(value, attr)
  globals()[name] = value  # the next lookup is a plain attribute
  return value


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly (re-exports)
  from lstm_jax import convert, interop, metric_writers, nnx_model, tasks
  from lstm_jax.batching import (
    TBPTT,
    Batch,
    Bucket,
    Pack,
    Pad,
    PadBatchMax,
    Strategy,
    VariableTBPTT,
  )
  from lstm_jax.checkpoint import Checkpointer, quiet_orbax
  from lstm_jax.data import RaggedDataset, from_sequences, next_token_dataset
  from lstm_jax.errors import CheckpointError, ConfigError, DataError, LstmJaxError
  from lstm_jax.evaluation import evaluate, predict, predict_batches
  from lstm_jax.labelled_files import load_npz, load_ts
  from lstm_jax.loop import Checkpointing, Hooks, Pipeline, fit
  from lstm_jax.model import (
    LSTM,
    RNN,
    BidirectionalLSTM,
    BidirectionalRNN,
    SequenceClassifier,
    SequenceModel,
  )
  from lstm_jax.normalization import fit_normalizer, normalize
  from lstm_jax.progress import Progress
  from lstm_jax.store import StoreSchema, open_store, write_store
  from lstm_jax.streaming import Streamer
  from lstm_jax.train import create_train_state
