"""Work done ahead on a background thread: `fit` assembles its next batches while a step runs.

`Prefetch(items, fn, depth)` iterates `(item, fn(item))` over `items`, with `items` drawn and
`fn` run up to `depth` items ahead on one daemon thread, in order. An exception raised there
(a damaged store file met while gathering a batch, say) is raised in the caller's thread at the
item it belongs to, with its own traceback; `close()` (or leaving a `with` block) stops the
thread and waits for it, so no thread outlives the loop that used it. `depth=0` does the work
in the caller's thread, at the time the item is taken.

Batches from a memory-mapped store are gathered this way: the rows a batch reads (and any page
faults they take) are read while the previous step computes, and the next epoch is planned
while this one's last steps run.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()
_POLL_SECONDS = 0.05  # how often a blocked put checks for close()


class _Raised:
  def __init__(self, error: BaseException):
    self.error = error


class Prefetch(Iterator[tuple[Any, Any]]):
  """(item, fn(item)) for each item, computed up to `depth` items ahead on a daemon thread."""

  def __init__(
    self, items: Iterable[T], fn: Callable[[T], R], depth: int = 2, name: str = "prefetch"
  ):
    if depth < 0:
      raise ValueError(f"prefetch depth must be >= 0, got {depth}.")
    self._items, self._fn = iter(items), fn
    self._stop = threading.Event()
    self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
    self._thread = None
    self._finished = False
    if depth:
      self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
      self._thread.start()

  def _produce(self) -> None:
    try:
      for item in self._items:
        if self._stop.is_set() or not self._put((item, self._fn(item))):
          return
    except BaseException as e:  # raised in the consumer's thread, at this item
      self._put(_Raised(e))
      return
    self._put(_END)

  def _put(self, value) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(value, timeout=_POLL_SECONDS)
        return True
      except queue.Full:
        continue
    return False

  def __next__(self):
    if self._finished:
      raise StopIteration
    if self._thread is None:
      item = next(self._items)
      return item, self._fn(item)
    value = self._queue.get()
    if value is _END:
      self._finished = True
      raise StopIteration
    if isinstance(value, _Raised):
      self._finished = True
      raise value.error
    return value

  def close(self) -> None:
    """Stops the thread (after the item it is working on) and waits for it."""
    self._stop.set()
    self._finished = True
    if self._thread is not None:
      self._thread.join()

  def __enter__(self) -> Prefetch:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
