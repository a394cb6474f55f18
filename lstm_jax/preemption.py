"""Preemption: SIGTERM and SIGINT end training at a step boundary, with a checkpoint.

    with Preemption() as preemption:
      train.fit(state, strategy, epochs=3, checkpointer=ckpt, preemption=preemption)
      # on a signal: the step in flight completes, a checkpoint of it is written (the caller's
      # extra state included), and fit raises Preempted; the same call resumes from it

A scheduler's SIGTERM (SLURM's `--signal=TERM@120`, Kubernetes, a spot VM's notice) or Ctrl-C is
noted, not obeyed at once: `fit` asks `requested()` after each step and, once it says yes, saves
and raises `Preempted`, whose message names the step and the checkpoint. The command-line mains
print that one line and exit with `EXIT_PREEMPTED` (75, sysexits' EX_TEMPFAIL: "try again later"),
so a batch script can requeue on it. A second signal ends the process at once, with the signal's
own status (143 for SIGTERM, 130 for SIGINT), and nothing more is written: the last complete
checkpoint is where the rerun resumes.

Multi-host (`jax.distributed` initialised): every process must stop at the same step, or the
ones still stepping wait forever in a collective. There JAX's preemption service owns SIGTERM:
a SIGTERM to any one process reaches all of them, and `requested()` is
`multihost_utils.reached_preemption_sync_point`, true on every process at the same check. A
SIGINT is handed to that service as a SIGTERM to this process.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped at a signal, after writing a checkpoint (if it had a checkpointer)."""

  def __init__(self, signal_name: str, step: int, directory: str | None, row: str | None = None):
    self.signal_name, self.step, self.directory, self.row = signal_name, step, directory, row
    where = f" of {row}" if row else ""
    if directory is not None:
      said = (
        f"stopped by {signal_name} after step {step}{where}, with its checkpoint in "
        f"{directory}: run the same command again to resume from step {step}."
      )
    else:
      said = (
        f"stopped by {signal_name} after step {step}{where}; there is no checkpointer, so "
        f"the run cannot resume from here (give fit a Checkpointer)."
      )
    super().__init__(said)

  def for_row(self, row: str) -> Preempted:
    return Preempted(self.signal_name, self.step, self.directory, row)


def _distributed() -> bool:
  from jax._src import distributed  # noqa: PLC0415 (the state jax.distributed.initialize sets)

  return (
    distributed.global_state.client is not None
    and distributed.global_state.preemption_sync_manager is not None
  )


class Preemption:
  """Notes SIGTERM and SIGINT while entered (in the main thread; elsewhere it only answers
  `requested()` as False), and restores the previous handlers on exit."""

  def __init__(self, signals: tuple = SIGNALS):
    self.signals = signals
    self.received: int | None = None  # the first signal's number
    self._previous: dict = {}
    self._checks = 0  # requested() calls: the same count on every process (the sync point's id)
    self._multihost = False

  def __enter__(self) -> Preemption:
    if threading.current_thread() is not threading.main_thread():
      return self
    self._multihost = _distributed()
    for s in self.signals:
      if self._multihost and s == signal.SIGTERM:
        continue  # JAX's preemption service has it
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.received).name if self.received else "SIGTERM"

  def _handle(self, signum, frame) -> None:
    name = signal.Signals(signum).name
    if self.received is not None:  # the second: the signal's own default action, now
      print(f"{name} again: exiting now, without a checkpoint.", file=sys.stderr, flush=True)
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.received = signum
    print(
      f"{name} received: stopping after the current step, with a checkpoint "
      f"(a second {name} exits at once, without one).",
      file=sys.stderr,
      flush=True,
    )
    if self._multihost:
      os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption service, which tells the rest

  def requested(self) -> bool:
    """Whether to stop now. Call it at the same points on every process (after each step)."""
    self._checks += 1
    if self._multihost:
      from jax.experimental import multihost_utils  # noqa: PLC0415

      stop = multihost_utils.reached_preemption_sync_point(self._checks)
      if stop and self.received is None:
        self.received = signal.SIGTERM  # another process's signal
      return stop
    return self.received is not None
