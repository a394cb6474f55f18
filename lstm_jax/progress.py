"""Progress bars: `rich`'s in a terminal, a plain line every few seconds elsewhere.

    bar = Progress()
    bar.start("bucket s0", total=1_000_000)
    bar.update(250_000, "loss 1.234  52,000 tok/s")  # done so far, and what to show beside it
    bar.note("a line above the bar")
    bar.end()

One class for the runner's rows, `fit(hooks=Hooks(progress=True))` and `prepare_data`. In a
terminal the bar is rich's (a live line, redrawn by its own thread, with the percentage and the
time left); when the stream is not a terminal (a log file, CI, a pipe) it writes a plain line at
the start, every `every_seconds` and at the end, so logs stay short. `rich` is a dependency of
flax already, so this adds no package.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


def _clock(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """A progress bar of `done` out of `total` (None: unknown, no percentage) with a text beside.

  Args:
    stream: where it is drawn (stderr by default).
    quiet: draw nothing, notes included.
    every_seconds: how often the plain line is written when not in a terminal.
    terminal: draw rich's live bar (default: whether `stream` is a terminal).
  """

  def __init__(
    self,
    *,
    stream: IO[str] | None = None,
    quiet: bool = False,
    every_seconds: float = 30.0,
    terminal: bool | None = None,
  ):
    self.stream = stream or sys.stderr
    self.quiet, self.every_seconds = quiet, every_seconds
    self.terminal = (
      getattr(self.stream, "isatty", lambda: False)() if terminal is None else terminal
    )
    self.description, self.text = "", ""
    self.total: float | None = None
    self.done: float = 0.0
    self._rich: Any = None  # rich.progress.Progress while a bar is drawn in a terminal
    self._task: Any = None
    self._started: float | None = None  # when the bar started (None: no bar)
    self._first_done: float = 0.0
    self._last_line: float = 0.0

  # --- the bar's life ---
  def start(self, description: str, total: float | None, *, done: float = 0) -> None:
    """A new bar (ending the one before, if any); `done`: where it starts (a resumed run)."""
    self.end()
    self.description, self.total, self.done, self.text = description, total, done, ""
    self._started, self._first_done, self._last_line = time.perf_counter(), done, 0.0
    if self.quiet:
      return
    if self.terminal:
      from rich import progress as rp
      from rich.console import Console

      self._rich = rp.Progress(
        rp.TextColumn("{task.description}"),
        rp.BarColumn(bar_width=24),
        rp.TaskProgressColumn(),
        rp.TextColumn("{task.fields[text]}"),
        rp.TimeRemainingColumn(),
        console=Console(file=self.stream, force_terminal=True),
        refresh_per_second=5,
      )
      self._rich.start()
      self._task = self._rich.add_task(description, total=total, completed=done, text="")
    else:
      self._line()

  def update(self, done: float, text: str | None = None) -> None:
    """`done` so far (absolute), and the text beside the bar (None: keep the last)."""
    self.done = done
    if text is not None:
      self.text = text
    if self.quiet or self._started is None:
      return
    if self._rich is not None:
      self._rich.update(self._task, completed=done, text=self.text)
    elif time.perf_counter() - self._last_line >= self.every_seconds:
      self._line()

  def note(self, text: str) -> None:
    """A line of its own (above the bar in a terminal)."""
    if self.quiet:
      return
    if self._rich is not None:
      self._rich.console.print(text, markup=False, highlight=False)
    else:
      self.stream.write(text + "\n")
      self.stream.flush()

  def end(self) -> None:
    """The bar's final state, and a new line after it."""
    if self._started is None:
      return
    if self._rich is not None:
      self._rich.update(self._task, completed=self.done, text=self.text)
      self._rich.stop()
      self._rich = self._task = None
    elif not self.quiet:
      self._line()
    self._started = None

  # --- the plain line ---
  def eta_seconds(self) -> float | None:
    """The time left at the rate since the bar started, or None (no total or no rate yet)."""
    if self._started is None:
      return None
    gained = self.done - self._first_done
    elapsed = time.perf_counter() - self._started
    if self.total is None or gained <= 0 or elapsed <= 0:
      return None
    return max(self.total - self.done, 0) * elapsed / gained

  def line(self) -> str:
    """The plain line: description, bar and percentage (with a total), text, time left."""
    parts = [self.description]
    if self.total:
      frac = min(1.0, self.done / self.total)
      parts.append(f"[{'#' * int(24 * frac):.<24}] {100 * frac:5.1f}%")
    if self.text:
      parts.append(self.text)
    eta = self.eta_seconds()
    if eta is not None and self.done < (self.total or 0):
      parts.append(f"left {_clock(eta)}")
    return " ".join(parts)

  def _line(self) -> None:
    self._last_line = time.perf_counter()
    if self.total is None and not self.text:
      return  # nothing to say yet
    self.stream.write(self.line() + "\n")
    self.stream.flush()
