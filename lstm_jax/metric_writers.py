"""Metric writers: scalars, hyperparameters and text through one small interface (CLU's method
names), with a TensorBoard backend that keeps its event files in step with the checkpoints.

    writer = create_default_writer(logdir, just_logging=jax.process_index() > 0)
    fit(state, strategy, epochs=3, checkpointing=Checkpointing(ckpt), hooks=Hooks(writer=writer))
    writer.write_scalars(step, {"eval/loss": 1.23})
    writer.flush()

`TensorBoardWriter` holds what it is given in memory and writes it to its event file only at
`flush()`; `fit` flushes it right after each checkpoint is saved (and at the end), so a run
killed between checkpoints has events up to its last checkpoint and no further, and its resume
writes the lost steps once. A writer opened on a resume (`purge_step`: the first step the resume
will write) also starts its file with TensorBoard's restart marker (a `SessionLog.START` at that
step), which hides any event of an earlier file at or past it (a kill between a flush and its
checkpoint's commit): TensorBoard honours it, and so does `read_scalars`.

The backend is tensorboardX (the optional extra `pip install 'lstm_jax[tensorboard]'`): it
writes TensorBoard's event files with numpy and protobuf only (protobuf is here already through
orbax), where CLU's `metric_writers` needs TensorFlow for the same files. The events are written
synchronously on the caller's thread (tensorboardX's `RecordWriter`, fsynced at each flush), so a
full disk is seen where it happens: one warning line, the writer stops, training goes on (the
runner's metrics.jsonl stays the source of truth).

Any object with these five methods can stand in for a writer (a Weights & Biases wrapper, say).
"""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid
import warnings
from collections.abc import Mapping
from typing import Any, Protocol

from lstm_jax.errors import ConfigError, os_error_text

INSTALL_HINT = "pip install 'lstm_jax[tensorboard]' (tensorboardX)"


class MetricWriter(Protocol):
  """What `fit` and the runner write through (CLU's `MetricWriter` method names)."""

  def write_scalars(
    self, step: int, scalars: Mapping[str, float], *, walltime: float | None = None
  ) -> None: ...

  def write_hparams(self, hparams: Mapping[str, Any]) -> None: ...

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None: ...

  def flush(self) -> None: ...

  def close(self) -> None: ...


class NullWriter:
  """Writes nothing (the other processes of a multi-host run; TensorBoard off)."""

  def write_scalars(self, step, scalars, *, walltime=None) -> None:
    pass

  def write_hparams(self, hparams) -> None:
    pass

  def write_texts(self, step, texts) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def tensorboard_available() -> bool:
  try:
    import tensorboardX  # noqa: F401
  except ImportError:
    return False
  return True


def _tensorboardx():
  try:
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import RecordWriter
  except ImportError:
    raise ConfigError(f"TensorBoard event files need tensorboardX: {INSTALL_HINT}.") from None
  return summary, RecordWriter, event_pb2


def _hparam_value(value: Any) -> bool | int | float | str:
  if isinstance(value, (bool, int, float, str)):
    return value
  return str(value)  # tuples, None, ...: TensorBoard's hparams take scalars and strings only


class TensorBoardWriter:
  """Scalars, hyperparameters and text into one TensorBoard run directory (`logdir`), held in
  memory until `flush()` (see the module's docstring).

  purge_step: on a resume, the first step this writer will write: TensorBoard then hides the
    events at that step or later that an earlier file holds. None on a fresh run.
  Scalars take an optional `walltime` (seconds): the runner passes the row's training clock,
  so TensorBoard's "Relative" horizontal axis shows training seconds (evaluations and
  checkpoint writes excluded) and rows compare on it; None: the time of writing.
  """

  def __init__(self, logdir: str, *, purge_step: int | None = None):
    self._summary, self._record_writer, self._event_pb2 = _tensorboardx()
    self.logdir, self.purge_step = logdir, purge_step
    self._pending: list = []
    self._writer: Any = None  # the event file's RecordWriter, opened at the first flush
    self.failed: str | None = None  # why the writer stopped, if it did (a full disk, say)

  def _event(self, step: int, walltime: float | None = None, **fields):
    wall = time.time() if walltime is None else float(walltime)
    return self._event_pb2.Event(step=int(step), wall_time=wall, **fields)

  def write_scalars(
    self, step: int, scalars: Mapping[str, float], *, walltime: float | None = None
  ) -> None:
    values = [self._summary.scalar(tag, float(v)).value[0] for tag, v in scalars.items()]
    self._pending.append(self._event(step, walltime, summary=self._summary.Summary(value=values)))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The row's settings, shown in TensorBoard's HParams tab (values that are not scalars or
    strings as their text)."""
    exp, ssi, sei = self._summary.hparams({k: _hparam_value(v) for k, v in hparams.items()}, {})
    for s in (exp, ssi, sei):
      self._pending.append(self._event(0, summary=s))

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    for tag, text in texts.items():
      self._pending.append(self._event(step, summary=self._summary.text(tag, text)))

  def _open(self):
    """The run's event file (TensorBoard's TFRecord framing, through tensorboardX's
    RecordWriter), its first records written: the file version and the restart marker."""
    os.makedirs(self.logdir, exist_ok=True)
    # a name no other writer has, sorting after every earlier file of this host (TensorBoard
    # and read_scalars read the files in name order; the name starts with the second)
    now = time.time()
    name = (
      f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{time.time_ns()}."
      f"{os.getpid()}.{uuid.uuid4().hex[:6]}"
    )
    recorder = self._record_writer(os.path.join(self.logdir, name))
    try:
      recorder.write(self._event(0, now, file_version="brain.Event:2").SerializeToString())
      if self.purge_step is not None:
        log = self._event_pb2.SessionLog(status=self._event_pb2.SessionLog.START)
        recorder.write(self._event(self.purge_step, session_log=log).SerializeToString())
    except OSError:
      recorder.close()
      raise
    return recorder

  def flush(self) -> None:
    """Writes what was given since the last flush to the event file, fsynced. A failed write
    (a full or read-only disk) is one warning, after which this writer writes nothing more."""
    if self.failed is not None or not self._pending:
      return
    try:
      if self._writer is None:
        self._writer = self._open()
      for event in self._pending:
        self._writer.write(event.SerializeToString())
      self._writer.flush()
    except OSError as e:
      self.failed = os_error_text(e)
      warnings.warn(
        f"TensorBoard: cannot write to {self.logdir} ({self.failed}); its event files stop "
        f"here (metrics.jsonl and the checkpoints are not affected). Free space and resume.",
        RuntimeWarning,
        stacklevel=2,
      )
    finally:
      self._pending = []

  def close(self) -> None:
    self.flush()
    if self._writer is not None:
      try:
        self._writer.close()
      except OSError:
        pass
      self._writer = None


def create_default_writer(
  logdir: str, *, just_logging: bool = False, purge_step: int | None = None
) -> TensorBoardWriter | NullWriter:
  """A TensorBoard writer on `logdir`, or a `NullWriter` where `just_logging` (CLU's argument:
  pass `jax.process_index() > 0`, so only process 0 writes)."""
  if just_logging:
    return NullWriter()
  return TensorBoardWriter(logdir, purge_step=purge_step)


def _records(path: str):
  """The records of a TFRecord file (an event file); a record cut short at the end (a kill
  mid-write) ends the file."""
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float, float]]]:
  """Every scalar in `logdir`'s event files, as TensorBoard shows them: {tag: [(step, value,
  walltime), ...]} in step order, the files read in name (time) order and a restart marker
  (`SessionLog.START` at step s) hiding the earlier events at step s or later."""
  _, _, event_pb2 = _tensorboardx()
  points: dict[str, list[tuple[int, float, float]]] = {}
  files = sorted(f for f in os.listdir(logdir) if ".tfevents." in f)
  for name in files:
    for data in _records(os.path.join(logdir, name)):
      event = event_pb2.Event.FromString(data)
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        for tag in points:
          points[tag] = [p for p in points[tag] if p[0] < event.step]
      for value in event.summary.value:
        if value.HasField("simple_value"):
          points.setdefault(value.tag, []).append(
            (int(event.step), float(value.simple_value), float(event.wall_time))
          )
  return {tag: sorted(p, key=lambda x: x[0]) for tag, p in points.items()}
