"""Counted compilation: every jitted step says how often it traced and compiled, and how long.

`CountedJit(fn)` behaves like `jax.jit(fn)`, but it lowers and compiles ahead of time, once per
input signature (the pytree structure plus each leaf's shape and dtype), and keeps a
`CompileRecord` per signature: the traces of `fn` (counted inside the traced function, so a
silent retrace shows up), the compiles, and the seconds spent tracing/lowering and compiling,
plus XLA's memory analysis of the compiled step. `compile(*args)` accepts `jax.ShapeDtypeStruct`s,
so a strategy's shapes can all be compiled before the timer starts.

Compiles off the critical path: `compile_in_background(arg_sets, workers)` compiles signatures in
worker threads, in the order given (XLA releases the GIL while it compiles), while the caller
goes on; a call that needs a signature still compiling waits for it, and the time callers spend
blocked on compiles (waiting, or compiling in place) is counted (`blocked_seconds`,
`blocked_calls`). `loop.fit(compile_shapes="background")` and the runner
(`config.train.background_compiles`) use it: training starts on the first batch's shape while
the others compile.

Persistent caching (`enable_persistent_cache(dir)`) has two layers. JAX's own compilation cache
skips XLA's compile but still traces and lowers every step; `ExecutableCache` (under
`dir/executables`) also skips the lowering: a counted step is traced (which is what makes the key
safe: the key is the traced program itself), and if an executable for that exact program,
platform and versions is on disk it is loaded instead of lowered and compiled.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import sys
import threading
import time
import warnings
from typing import Any, Callable, Sequence

import jax
import jaxlib
import numpy as np
from jax.experimental import serialize_executable

from lstm_jax.files import atomic_write

_EXECUTABLE_CACHE: ExecutableCache | None = None

# Compiles, per thread, that JAX's own persistent cache answered: an executable it loaded
# cannot be serialized again (on the CPU the copy runs until its first call, then fails with
# "NOT_FOUND: Function ... not found"), so the ExecutableCache stores only fresh compiles.
_JAX_CACHE_HITS = threading.local()


def _count_jax_cache_hit(event: str, **kwargs: Any) -> None:
  del kwargs
  if event == "/jax/compilation_cache/cache_hits":
    _JAX_CACHE_HITS.count = getattr(_JAX_CACHE_HITS, "count", 0) + 1


jax.monitoring.register_event_listener(_count_jax_cache_hit)


def enable_persistent_cache(directory: str, executables: bool = True) -> None:
  """Turns on persistent compilation caching in `directory`, for every compile from now on.

  JAX's compilation cache: each compiled executable is written there, keyed by its HLO, options
  and backend, and a later process (or this one) that compiles the same step loads it instead of
  compiling again; the thresholds are set to zero so that every step is cached, the small ones
  included. With `executables` (the default), counted steps (`CountedJit`) also go through an
  `ExecutableCache` in `directory/executables`, which skips lowering as well. Call it before the
  first compile: JAX sets its cache up once per process.
  """
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if executables:
    enable_executable_cache(os.path.join(directory, "executables"))


def enable_executable_cache(directory: str) -> None:
  """Counted steps (`CountedJit`) compiled from now on go through an `ExecutableCache` there."""
  global _EXECUTABLE_CACHE
  _EXECUTABLE_CACHE = ExecutableCache(directory)


def disable_executable_cache() -> None:
  global _EXECUTABLE_CACHE
  _EXECUTABLE_CACHE = None


class ExecutableCache:
  """Compiled executables on disk, keyed by the traced program.

  The key hashes everything the executable depends on: the jaxpr's text (every operation, shape,
  dtype and literal, including the backward pass, since the step is traced after `grad`), the
  values of any closed-over constants, the jit's shardings and donated arguments, the devices,
  XLA_FLAGS and JAX's optimization switch (`jax_disable_most_optimizations`), and the Python,
  jax and jaxlib versions. A different model, optimizer setting or shape therefore traces to a
  different key and compiles afresh. Only single-process runs use it
  (a multi-host executable is tied to its device assignment). A file that cannot be loaded is
  reported, removed and compiled again.
  """

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)

  def key(self, traced: Any, jit_kwargs: dict) -> str:
    h = hashlib.sha256()
    for part in (
      sys.version,
      jax.__version__,
      jaxlib.__version__,
      os.environ.get("XLA_FLAGS", ""),
      # compile options JAX sets from its own flags (an executable built with XLA's backend
      # optimizations off must not be loaded by a run that wants them on)
      repr(jax.config.read("jax_disable_most_optimizations")),
      repr([(d.platform, d.device_kind, d.id) for d in jax.devices()]),
      repr(sorted((k, repr(v)) for k, v in jit_kwargs.items())),
      repr(traced.donate_argnums),
      str(traced.jaxpr),
    ):
      h.update(part.encode())
      h.update(b"\0")
    for c in traced.jaxpr.consts:
      a = np.asarray(c)
      h.update(repr((a.shape, a.dtype.str)).encode())
      h.update(a.tobytes())
    return h.hexdigest()

  def _path(self, key: str) -> str:
    return os.path.join(self.directory, key + ".xla")

  def load(self, key: str, traced: Any) -> Any | None:
    path = self._path(key)
    if not os.path.exists(path):
      return None
    try:
      with open(path, "rb") as f:
        payload = f.read()
      return serialize_executable.deserialize_and_load(payload, traced.in_tree, traced.out_tree)
    except Exception as e:  # damaged or from an incompatible build: compile again
      warnings.warn(
        f"executable cache entry {path} could not be loaded ({type(e).__name__}: "
        f"{str(e)[:200]}); removing it and compiling again."
      )
      os.remove(path)
      return None

  def store(self, key: str, compiled: Any) -> None:
    payload, _, _ = serialize_executable.serialize(compiled)
    with atomic_write(self._path(key), "wb") as f:  # readers never see half a file
      f.write(payload)


@dataclasses.dataclass
class CompileRecord:
  """One input signature of a counted function."""

  label: str
  traces: int = 0
  compiles: int = 0
  cache_loads: int = 0  # of the compiles, how many loaded an ExecutableCache entry
  lower_seconds: float = 0.0
  compile_seconds: float = 0.0
  temp_bytes: int | None = None  # XLA's scratch memory for one call
  argument_bytes: int | None = None
  output_bytes: int | None = None
  alias_bytes: int | None = None  # outputs written into donated arguments
  finished_at: float | None = None  # time.perf_counter() when its last compile finished

  @property
  def seconds(self) -> float:
    return self.lower_seconds + self.compile_seconds


def _leaf_signature(x) -> tuple:
  if isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) or hasattr(x, "aval"):
    return (tuple(x.shape), np.dtype(x.dtype).str, bool(getattr(x, "weak_type", False)))
  if isinstance(x, (np.generic,)):
    return ((), x.dtype.str, False)
  raise TypeError(
    f"CountedJit takes arrays only (got {type(x).__name__}); make Python values "
    f"static fields of a pytree, or wrap them with jnp.asarray."
  )


def signature(args: Sequence[Any]) -> tuple:
  leaves, treedef = jax.tree.flatten(args)
  return (treedef, tuple(_leaf_signature(x) for x in leaves))


class CountedJit:
  """`jax.jit(fn, donate_argnums=...)` that counts traces and compiles per input signature.

  Args:
    fn: the pure function to jit.
    name: how reports call it.
    donate_argnums: as for `jax.jit` (e.g. the train state).
    label_argnum: which argument's largest leaf shape labels a signature in reports.
    **jit_kwargs: passed on to `jax.jit` (e.g. in_shardings / out_shardings).
  """

  def __init__(
    self,
    fn: Callable,
    *,
    name: str,
    donate_argnums: Sequence[int] = (),
    label_argnum: int = 1,
    **jit_kwargs,
  ):
    self.fn = fn
    self.name = name
    self.label_argnum = label_argnum
    self.records: dict[tuple, CompileRecord] = {}
    self._executables: dict[tuple, Any] = {}
    self._pending: dict[tuple, concurrent.futures.Future] = {}
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._lock = threading.Lock()
    self._local = threading.local()  # the record being traced, per thread
    self._jit_kwargs = jit_kwargs  # shardings etc., part of the executable cache's key
    self.blocked_seconds = 0.0  # time callers waited on compiles (in place or in background)
    self.blocked_calls = 0  # calls that waited on a compile

    def traced(*args):
      rec = getattr(self._local, "record", None)
      if rec is not None:
        rec.traces += 1
      return self.fn(*args)

    traced.__name__ = traced.__qualname__ = name  # HLO module and cache entries say jit_<name>
    self._jitted = jax.jit(traced, donate_argnums=tuple(donate_argnums), **jit_kwargs)

  def _label(self, args) -> str:
    arg = args[self.label_argnum] if len(args) > self.label_argnum else args
    shapes = sorted({tuple(x.shape) for x in jax.tree.leaves(arg)}, key=lambda s: (-len(s), s))
    return "x".join(map(str, shapes[0])) if shapes else "()"

  def compile(self, *args) -> Any:
    """The executable for the signature of `args` (arrays or ShapeDtypeStructs): compiled now
    unless already done, or waited for if it is compiling in the background."""
    key = signature(args)
    exe = self._executables.get(key)
    if exe is not None:
      return exe
    t0 = time.perf_counter()
    with self._lock:
      pending = self._pending.get(key)
    exe = pending.result() if pending is not None else self._compile(key, args)
    self.blocked_seconds += time.perf_counter() - t0
    self.blocked_calls += 1
    return exe

  def _compile(self, key: tuple, args: Sequence[Any], publish: bool = True) -> Any:
    with self._lock:
      exe = self._executables.get(key)
      if exe is not None:
        return exe
      rec = self.records.setdefault(key, CompileRecord(label=self._label(args)))
    self._local.record = rec
    cache = _EXECUTABLE_CACHE if jax.process_count() == 1 else None
    try:
      t0 = time.perf_counter()
      traced = self._jitted.trace(*args)
      exe = cache_key = None
      if cache is not None:
        cache_key = cache.key(traced, self._jit_kwargs)
        t1 = time.perf_counter()
        exe = cache.load(cache_key, traced)
      if exe is None:
        lowered = traced.lower()
        t1 = time.perf_counter()
        hits = getattr(_JAX_CACHE_HITS, "count", 0)
        exe = lowered.compile()
        if cache is not None and cache_key and getattr(_JAX_CACHE_HITS, "count", 0) == hits:
          cache.store(cache_key, exe)  # compiled here, not loaded from JAX's cache
      else:
        rec.cache_loads += 1
      t2 = time.perf_counter()
    finally:
      self._local.record = None
    mem = exe.memory_analysis()
    with self._lock:
      rec.compiles += 1
      rec.lower_seconds += t1 - t0
      rec.compile_seconds += t2 - t1
      rec.finished_at = t2
      if mem is not None:
        rec.temp_bytes = int(mem.temp_size_in_bytes)
        rec.argument_bytes = int(mem.argument_size_in_bytes)
        rec.output_bytes = int(mem.output_size_in_bytes)
        rec.alias_bytes = int(mem.alias_size_in_bytes)
      if publish:
        self._executables[key] = exe
    return exe

  def compile_in_background(
    self,
    arg_sets: Sequence[Sequence[Any]],
    workers: int = 1,
    on_compiled: Callable[[Sequence[Any], CompileRecord], None] | None = None,
  ) -> None:
    """Starts compiling each signature in `arg_sets` (tuples of arrays or ShapeDtypeStructs), in
    that order, on `workers` threads; returns at once. `on_compiled(args, record)` runs in the
    worker after each compile; an exception it (or the compile) raises is raised again by the
    call that needs that signature and by `raise_background_errors`."""
    with self._lock:
      if self._pool is None:
        self._pool = concurrent.futures.ThreadPoolExecutor(
          max(1, workers), thread_name_prefix=f"compile-{self.name}"
        )
      for args in arg_sets:
        key = signature(args)
        if key in self._executables or key in self._pending:
          continue

        def job(key=key, args=tuple(args)):
          exe = self._compile(key, args, publish=False)
          if on_compiled is not None:  # a shape it refuses is never run
            on_compiled(args, self.records[key])
          with self._lock:
            self._executables[key] = exe
          return exe

        self._pending[key] = self._pool.submit(job)

  def raise_background_errors(self) -> None:
    """Raises the first error of a finished background compile (or its `on_compiled`)."""
    if not self._pending:  # nothing compiles in the background: the usual step pays nothing
      return
    with self._lock:
      done = [f for f in self._pending.values() if f.done()]
    for f in done:
      error = f.exception()
      if error is not None:
        raise error

  def stop_background(self) -> None:
    """Cancels the background compiles not yet started (those running finish)."""
    with self._lock:
      pool, self._pool = self._pool, None
      self._pending = {k: f for k, f in self._pending.items() if not f.cancel()}
    if pool is not None:
      pool.shutdown(wait=False, cancel_futures=True)

  @property
  def last_compile_finished(self) -> float | None:
    """time.perf_counter() when the latest compile so far finished (None before any)."""
    ends = [r.finished_at for r in self.records.values() if r.finished_at is not None]
    return max(ends) if ends else None

  def record(self, *args) -> CompileRecord | None:
    """The record of `args`' signature (arrays or ShapeDtypeStructs), None if never compiled."""
    return self.records.get(signature(args))

  def is_compiled(self, *args) -> bool:
    """Whether a call with `args` would run without compiling."""
    return signature(args) in self._executables

  def __call__(self, *args):
    return self.compile(*args)(*args)

  # --- reporting -----------------------------------------------------------------------------
  @property
  def traces(self) -> int:
    return sum(r.traces for r in self.records.values())

  @property
  def compiles(self) -> int:
    return sum(r.compiles for r in self.records.values())

  @property
  def compile_seconds(self) -> float:
    return sum(r.seconds for r in self.records.values())

  @property
  def cache_loads(self) -> int:
    return sum(r.cache_loads for r in self.records.values())

  def summary(self) -> dict:
    return dict(
      name=self.name,
      traces=self.traces,
      compiles=self.compiles,
      cache_loads=self.cache_loads,
      compile_seconds=self.compile_seconds,
      per_shape={
        r.label: dict(
          traces=r.traces, compiles=r.compiles, seconds=round(r.seconds, 4), temp_bytes=r.temp_bytes
        )
        for r in self.records.values()
      },
    )

  def __repr__(self) -> str:
    return (
      f"CountedJit({self.name}: {self.compiles} compiles, {self.traces} traces, "
      f"{self.compile_seconds:.2f}s)"
    )
