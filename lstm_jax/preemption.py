"""Preemption: SIGTERM and SIGINT end training at a step boundary, with a checkpoint.

    with Preemption() as preemption:
      loop.fit(state, strategy, epochs=3, checkpointing=Checkpointing(ckpt, preemption=preemption))
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

import contextlib
import os
import signal
import sys
import threading

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Training stopped at a signal, after writing a checkpoint (if it had a checkpointer); or,
  with `step` None, at once where nothing was unsaved (`Preemption(at_once=True)`)."""

  def __init__(
    self, signal_name: str, step: int | None, directory: str | None, row: str | None = None
  ):
    self.signal_name, self.step, self.directory, self.row = signal_name, step, directory, row
    where = f" of {row}" if row else ""
    if step is None:
      said = (
        f"stopped by {signal_name} where nothing was unsaved (loading, planning, compiling or "
        f"reporting{where}; what earlier steps and rows wrote is kept): run the same command "
        f"again to go on."
      )
    elif directory is not None:
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
  `requested()` as False), and restores the previous handlers on exit.

  at_once: for a main whose process ends when it stops (the runner). Wherever nothing is
  unsaved, which is everywhere but inside `fit`'s step loop (`deferred()`), a signal stops the
  run at once: `Preempted` (step None) is raised where the main thread is, and if the main
  thread is held in native code (an XLA compile) for more than `grace_seconds`, a watchdog
  thread ends the process with status 75 itself. Once stopping, further signals are ignored
  (the status stays 75), also after the context exits with the stop."""

  def __init__(self, signals: tuple = SIGNALS, at_once: bool = False, grace_seconds: float = 3.0):
    self.signals = signals
    self.received: int | None = None  # the first signal's number
    self.saved = False  # the stop's checkpoint is complete: a second signal changes nothing
    self.at_once, self.grace_seconds = at_once, grace_seconds
    self._deferred = 0  # inside fit's step loop: the stop waits for the step's checkpoint
    self._previous: dict = {}
    self._checks = 0  # requested() calls: the same count on every process (the sync point's id)
    self._multihost = False
    self._wakeup: tuple[int, int] | None = None
    self._previous_wakeup = -1

  def __enter__(self) -> Preemption:
    if threading.current_thread() is not threading.main_thread():
      return self
    self._multihost = _distributed()
    self.at_once = self.at_once and not self._multihost  # there, every process stops together
    for s in self.signals:
      if self._multihost and s == signal.SIGTERM:
        continue  # JAX's preemption service has it
      self._previous[s] = signal.signal(s, self._handle)
    if self.at_once:  # the C-level handler writes each signal here, whatever the main thread does
      r, w = os.pipe()
      os.set_blocking(w, False)
      self._wakeup = (r, w)
      self._previous_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
      threading.Thread(
        target=self._watch, args=(r,), name="preemption-watchdog", daemon=True
      ).start()
    return self

  def __exit__(self, kind, value, tb) -> None:
    stopping = self.at_once and isinstance(value, Preempted)
    for s, handler in self._previous.items():  # a stopping main ignores them until it exits
      signal.signal(s, signal.SIG_IGN if stopping else handler)
    self._previous = {}
    if self._wakeup is not None:
      signal.set_wakeup_fd(self._previous_wakeup)
      os.close(self._wakeup[1])  # the watchdog reads EOF and ends
      self._wakeup = None

  @contextlib.contextmanager
  def deferred(self):
    """Inside: a signal waits for `requested()` (fit's step loop: the step in flight ends and
    its checkpoint is written first)."""
    self._deferred += 1
    try:
      yield self
    finally:
      self._deferred -= 1

  def _stops_at_once(self) -> bool:
    return self.at_once and not self._deferred

  def _watch(self, r: int) -> None:
    """The watchdog: a signal where nothing is unsaved, and the main thread (held in native
    code) has not ended the process within the grace period: end it here."""
    while True:
      try:
        data = os.read(r, 64)
      except OSError:
        return
      if not data:
        os.close(r)
        return
      if not self._stops_at_once():
        continue
      threading.Event().wait(self.grace_seconds)
      if self._wakeup is None or not self._stops_at_once():
        continue  # the main thread stopped (or deferred) in time
      try:
        name = signal.Signals(data[0]).name
      except ValueError:
        name = "a signal"
      print(
        f"preempted: stopped by {name} where nothing was unsaved (the main thread was held "
        f"{self.grace_seconds:g} s in native code, a compile): run the same command again.",
        file=sys.stderr,
        flush=True,
      )
      sys.stdout.flush()
      os._exit(EXIT_PREEMPTED)

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.received).name if self.received else "SIGTERM"

  def _handle(self, signum, frame) -> None:
    name = signal.Signals(signum).name
    if self.received is not None:
      if self.saved or self._stops_at_once():  # the stop is complete or needs nothing: 75 stays
        print(f"{name} again: already stopping, nothing left to save.", file=sys.stderr, flush=True)
        return
      # the second while a step's checkpoint is pending: the signal's own default action, now
      print(f"{name} again: exiting now, without a checkpoint.", file=sys.stderr, flush=True)
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.received = signum
    if self._stops_at_once():
      raise Preempted(name, None, None)
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
