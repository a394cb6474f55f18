"""The training loop: `fit` runs one strategy for N epochs or a budget of real tokens through
`StepFunctions` (lstm_jax.train), whose `CountedJit`s record the traces, compiles and compile
seconds per batch shape. It compiles every shape of an epoch before that epoch's first step (or
in the background, or as training meets them), dispatches step n+1 before fetching step n's
metrics (so the host never idles the device), and records per step: loss, real tokens, computed
tokens and the seconds between consecutive step completions.

With a `Checkpointer` it resumes exactly (`resume`: the state, the carry, the stream's position
and the history), saves every so many steps and once at the end; with a `Preemption`, a SIGTERM
or SIGINT ends it after the step in flight, saved. (Before 2026-12-07 these lived in
`lstm_jax.train`; `lstm_jax.fit` is the same function as ever.)

fit's settings beyond the budget come in three records, each checked when built: `Pipeline`
(compile_shapes, compile_workers, prefetch), `Checkpointing` (checkpointer, settings, resumed,
preemption) and `Hooks` (on_step, formerly `callback`; on_eval with eval_every_tokens; writer;
progress). Until 2026-12-07 these were fit's own keywords, 17 in all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lstm_jax import sharding
from lstm_jax.backend import step_backend
from lstm_jax.batching import Strategy, StreamPosition
from lstm_jax.checkpoint import Checkpointer
from lstm_jax.compiles import CountedJit
from lstm_jax.errors import ConfigError
from lstm_jax.model import Carry
from lstm_jax.preemption import Preempted, Preemption
from lstm_jax.prefetch import Prefetch
from lstm_jax.progress import Progress
from lstm_jax.train import (
  StepFunctions,
  TrainState,
  check_model_fits_data,
  compile_in_background,
  precompile,
)

if TYPE_CHECKING:
  from lstm_jax.metric_writers import MetricWriter


@dataclasses.dataclass
class FitResult:
  state: TrainState
  history: list[dict]  # one record per step
  steps: StepFunctions
  carry: Carry | None  # the last carry (strategies that carry state)
  position: StreamPosition  # where the data stream stands: the next batch, if training went on
  resumed_from: int | None = None  # the checkpoint step training resumed from, if any
  clock_start: float | None = None  # time.perf_counter() when the first step's clock started

  @property
  def real_tokens(self) -> int:
    """Real tokens trained on, resumed runs' earlier ones included."""
    return self.position.real_tokens


def _batch_loss(m: dict) -> float:
  w = float(m["weight_sum"])
  return float(m["loss_sum"]) / w if w > 0 else math.nan


def stream_identity(strategy: Strategy) -> dict:
  """What a checkpoint must share with a run to resume it: strategy, seed, data and plan."""
  plans = strategy.plan(0)
  return dict(
    strategy=strategy.name,
    seed=strategy.seed,
    data_fingerprint=strategy.dataset.fingerprint(),
    plan=f"{len(plans)} batches of {strategy.shapes()}",
  )


@dataclasses.dataclass
class Resumed:
  """What a checkpoint hands back to training (`resume`)."""

  state: TrainState
  step: int  # the checkpoint's step
  position: StreamPosition  # the next batch of the data stream
  carry: Carry | None  # the carry for that batch (strategies that carry state)
  history: list[dict]  # the step records so far
  extra: dict  # the caller's own state, as it was saved (`Checkpointer.extra_state`)


def _saved_carry(strategy: Strategy, carry: Carry | None):
  """The carry a checkpoint holds: the live one, or a placeholder for strategies with none."""
  return carry if strategy.carries_state else jnp.zeros((), jnp.float32)


def _identity(strategy: Strategy, settings: dict | None) -> dict:
  identity = stream_identity(strategy)
  if settings is not None:
    identity["settings"] = settings
  return identity


def resume(
  checkpointer: Checkpointer,
  state: TrainState,
  strategy: Strategy,
  steps: StepFunctions | None = None,
  settings: dict | None = None,
) -> Resumed | None:
  """The newest readable checkpoint of `checkpointer`, restored for `state` and `strategy`; None
  when there is none. It must come from the same strategy, seed, data and plan, and (if given)
  the same `settings` (CheckpointError otherwise, naming what differs)."""
  steps = steps or StepFunctions.create()
  template = steps.zero_carry(state.model, strategy.plan(0)[0].batch_size)
  if steps.mesh is not None:
    state = sharding.replicate(state, steps.mesh)
  restored = checkpointer.restore(
    state, _saved_carry(strategy, template), _identity(strategy, settings)
  )
  if restored is None:
    return None
  stream = restored.stream
  return Resumed(
    state=restored.state,
    step=restored.step,
    position=StreamPosition(stream["epoch"], stream["index"], stream["real_tokens"]),
    carry=restored.carry if strategy.carries_state else None,
    history=list(stream["history"]),
    extra=dict(stream.get("extra") or {}),
  )


WRITER_FLUSH_SECONDS = 30.0  # Hooks(writer=) without a checkpointer: flushed this often


class _Watch:
  """What `fit` shows of each step beyond its record: the caller's callback, the metric
  writer's train scalars (their wall time the training clock: the steps' seconds summed) and
  the progress bar (real tokens of the planned total, loss, tokens/s)."""

  def __init__(self, strategy, epochs, real_tokens, position, history, hooks: Hooks):
    self.callback, self.writer, bar = hooks.on_step, hooks.writer, hooks.progress
    self.seconds = sum(h["step_seconds"] for h in history)
    self.tokens = position.real_tokens
    self.flush_by_time, self.last_flush = False, time.perf_counter()
    self.bar = None
    if bar:
      self.bar = bar if isinstance(bar, Progress) else Progress()
      per_epoch = int(strategy.plan(0).real_tokens.sum())
      totals = [t for t in (real_tokens, epochs and epochs * per_epoch) if t]
      self.bar.start("fit", min(totals), done=self.tokens)

  def record(self, rec: dict) -> None:
    if self.callback is not None:
      self.callback(rec)
    self.seconds += rec["step_seconds"]
    self.tokens += rec["real_tokens"]
    rate = rec["real_tokens"] / max(rec["step_seconds"], 1e-9)
    if self.writer is not None:
      scalars = {
        "train/loss": rec["loss"],
        "train/real_tokens_per_second": rate,
        "train/padding": 1.0 - rec["real_tokens"] / max(rec["computed_tokens"], 1),
      }
      self.writer.write_scalars(rec["step"], scalars, walltime=self.seconds)
      now = time.perf_counter()
      if self.flush_by_time and now - self.last_flush >= WRITER_FLUSH_SECONDS:
        self.writer.flush()
        self.last_flush = now
    if self.bar is not None:
      self.bar.update(
        self.tokens,
        f"step {rec['step']} loss {rec['loss']:.4f} "
        f"{self.tokens / max(self.seconds, 1e-9):,.0f} tok/s",
      )

  def close(self, flush_writer: bool) -> None:
    if self.writer is not None and flush_writer:
      self.writer.flush()
    if self.bar is not None:
      self.bar.end()


class _PendingStep:
  """The step dispatched last, whose metrics are fetched only after the next step is dispatched
  (so the host never idles the device). It owns the step clock: a step's seconds run from the
  previous step's completion (or a `restart_clock`) to its own, so a compile belongs to the step
  that needs it, and evaluation or a checkpoint's blocking part to no step."""

  def __init__(
    self, history: list[dict], callback: Callable[[dict], None] | None, checkpoint_dir: str | None
  ):
    self.history, self.callback, self.checkpoint_dir = history, callback, checkpoint_dir
    self.item: tuple[dict, Any] | None = None
    self.t_last: float | None = None

  def restart_clock(self) -> None:
    self.t_last = time.perf_counter()

  def hold(self, record: dict, metrics: Any) -> None:
    """`record`'s step was dispatched: complete the one held before it, then hold this one."""
    self.flush()
    self.item = (record, metrics)

  def flush(self) -> None:
    """Fetches the held step's metrics, checks its loss is finite, times and records it."""
    if self.item is None:
      return
    (record, metrics), self.item = self.item, None
    m = jax.device_get(metrics)
    now = time.perf_counter()
    record.update(
      loss=_batch_loss(m),
      weight_sum=float(m["weight_sum"]),
      correct_sum=float(m["correct_sum"]),
      step_seconds=now - (self.t_last or now),
    )
    if not math.isfinite(float(m["loss_sum"])):
      raise FloatingPointError(
        f"the loss became {float(m['loss_sum'])} at step {record['step']} (epoch "
        f"{record['epoch']}, batch shape {record['shape']}); lower the learning rate or add "
        f"gradient clipping (optax.clip_by_global_norm)."
        + (f" The last good checkpoint is in {self.checkpoint_dir}." if self.checkpoint_dir else "")
      )
    self.t_last = now
    self.history.append(record)
    if self.callback is not None:
      self.callback(record)


@dataclasses.dataclass(frozen=True)
class _Stop:
  """Where training stops: after `epochs` epochs or `real_tokens` real tokens, whichever
  comes first (None: that rule is off)."""

  epochs: int | None
  real_tokens: int | None

  def reached(self, at: StreamPosition) -> bool:
    return (self.epochs is not None and at.epoch >= self.epochs) or (
      self.real_tokens is not None and at.real_tokens >= self.real_tokens
    )

  def planned(self, strategy: Strategy, start: StreamPosition):
    """The stream from `start` up to where training stops, no further."""
    if not self.reached(start):
      for plan, after in strategy.stream(start):
        yield plan, after
        if self.reached(after):
          return


@dataclasses.dataclass
class _Run:
  """What `fit`'s loop advances, in one place: the train state, the step count, where the data
  stream stands (the next batch) and the carry handed to it (strategies that carry state)."""

  state: TrainState
  step: int
  position: StreamPosition
  carry: Carry | None

  def stream(self, identity: dict, history: list[dict]) -> dict:
    """The checkpoint's JSON part: the run's identity, the stream's position, the history."""
    p = self.position
    return dict(identity, epoch=p.epoch, index=p.index, real_tokens=p.real_tokens, history=history)


class _EvalSchedule:
  """`on_eval` each time another `every` real tokens have been trained on."""

  def __init__(self, every: int | None, on_eval: Callable | None, real_tokens: int):
    self.every, self.on_eval = every, on_eval
    self.next = (real_tokens // every + 1) * every if every and on_eval else None

  def due(self, real_tokens: int) -> bool:
    return self.next is not None and real_tokens >= self.next

  def run(self, state: TrainState, real_tokens: int) -> None:
    assert self.on_eval and self.every and self.next is not None  # `due` said so
    self.on_eval(state, real_tokens)
    while self.next <= real_tokens:
      self.next += self.every


COMPILE_SHAPES = ("ahead", "lazily", "background")  # Pipeline(compile_shapes=...)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pipeline:
  """What the host does ahead of the steps, so that a step does not wait for it.

  Args:
    compile_shapes: when each train shape compiles (COMPILE_SHAPES): "ahead", every shape of an
      epoch before its first step; "lazily", a step compiles when it meets a new shape;
      "background", `compile_workers` threads compile the epoch's shapes in the order training
      meets them while it trains, and a step whose shape is not ready waits for it. A step that
      compiled or waited for a compile says `compiled: True` in its record (its seconds include
      that).
    compile_workers: the background compile threads (compile_shapes="background" only).
    prefetch: batches assembled ahead on a background thread (`lstm_jax.prefetch`), so a step
      does not wait for its rows to be gathered (from a memory-mapped store, say); 0 assembles
      each batch in the loop. The numbers are the same either way.
  """

  compile_shapes: str = "ahead"
  compile_workers: int = 1
  prefetch: int = 2

  def __post_init__(self) -> None:
    if self.compile_shapes not in COMPILE_SHAPES:
      raise ConfigError(
        f"compile_shapes must be one of {COMPILE_SHAPES}, got {self.compile_shapes!r}."
      )
    if self.compile_workers < 1:
      raise ConfigError(f"compile_workers must be >= 1, got {self.compile_workers}.")
    if self.compile_workers > 1 and self.compile_shapes != "background":
      raise ConfigError(
        f"compile_workers={self.compile_workers} compiles in the background; set "
        f'compile_shapes="background" (it is {self.compile_shapes!r}) or leave compile_workers 1.'
      )
    if self.prefetch < 0:
      raise ConfigError(f"prefetch must be >= 0 (0: no prefetching), got {self.prefetch}.")


@dataclasses.dataclass(frozen=True)
class Checkpointing:
  """How a run saves and resumes, and what a signal does to it.

  Args:
    checkpointer: training resumes from its newest readable checkpoint (`resume`, which must come
      from the same strategy, seed, data, plan and `settings`), saves every
      `checkpointer.every_steps` steps (after that step's loss is checked to be finite, and after
      any evaluation due at it) and once at the end. Each save holds the state, the carry, the
      data stream's position, the step history and the caller's own state
      (`Checkpointer.extra_state`: the runner's eval curve and clock), which `resume` hands back
      as `Resumed.extra`.
    settings: what else a checkpoint must share with this run to be resumed (the runner passes
      `config.run_settings`: model, optimizer, training and data settings, versions); saved with
      each checkpoint, and a checkpoint whose settings differ raises CheckpointError naming them.
    resumed: a `resume` result the caller already has (the runner reads it first, to report it
      and take back its own state); otherwise fit calls `resume` itself.
    preemption: an entered `Preemption`, asked after each step whether a SIGTERM or SIGINT came;
      if so, the step in flight completes, a checkpoint of it is written (and waited for), and
      fit raises `Preempted` naming the step and the checkpoint's directory. Resuming from it
      loses no step. (With `checkpointer` None the run stops after the step, unsaved.)
  """

  checkpointer: Checkpointer | None
  _: dataclasses.KW_ONLY
  settings: dict | None = None
  resumed: Resumed | None = None
  preemption: Preemption | None = None

  def __post_init__(self) -> None:
    if self.checkpointer is None:
      if self.settings is not None or self.resumed is not None:
        raise ConfigError(
          "Checkpointing got settings or resumed without a checkpointer: they are a "
          "checkpoint's; pass the Checkpointer they belong to."
        )
    elif not isinstance(self.checkpointer, Checkpointer):
      raise ConfigError(
        f"Checkpointing needs a lstm_jax.Checkpointer, got {type(self.checkpointer).__name__}; "
        f"build one with Checkpointer(directory, every_steps=...)."
      )
    if self.resumed is not None and not isinstance(self.resumed, Resumed):
      raise ConfigError(
        f"Checkpointing(resumed=...) takes what loop.resume returned, got "
        f"{type(self.resumed).__name__}."
      )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hooks:
  """What `fit` calls and writes as it trains (none of it changes the numbers).

  Args:
    on_step(record): called with each step's record (loss, real tokens, seconds, compiled).
    on_eval(state, real_tokens): called each time another `eval_every_tokens` real tokens have
      been trained on; its time is not counted in any step's `step_seconds`. The two come
      together: one without the other is refused.
    writer: a metric writer (`lstm_jax.metric_writers`, CLU's method names): each step's
      `train/loss`, `train/real_tokens_per_second` and `train/padding` at its step number, its
      wall time the training clock (the steps' seconds summed, resumed steps included). Flushed
      right after each checkpoint save (and at the end), so its files end where the newest
      checkpoint does; without a checkpointer, every `WRITER_FLUSH_SECONDS` and at the end.
      fit does not close it (the caller may write evaluations into it too).
    progress: True (or a `lstm_jax.progress.Progress`): a progress bar of the steps (real
      tokens/s, loss, the time left) on stderr, drawn by `rich` in a terminal and a plain line
      every few seconds elsewhere. Off by default.
  """

  on_step: Callable[[dict], None] | None = None
  on_eval: Callable[[TrainState, int], None] | None = None
  eval_every_tokens: int | None = None
  writer: MetricWriter | None = None
  progress: bool | Progress = False

  def __post_init__(self) -> None:
    every = self.eval_every_tokens
    if every is not None and every < 1:
      raise ConfigError(f"eval_every_tokens must be >= 1 (None: no evaluation), got {every}.")
    if (every is None) != (self.on_eval is None):
      given, missing = (
        ("on_eval", "eval_every_tokens") if every is None else ("eval_every_tokens", "on_eval")
      )
      raise ConfigError(
        f"Hooks got {given} without {missing}: an evaluation needs both, what to call and how "
        f"often (in real tokens)."
      )


def _check_fit_arguments(state, strategy, epochs, real_tokens, records) -> None:
  kinds: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("pipeline", Pipeline),
    ("checkpointing", (Checkpointing, type(None))),
    ("hooks", Hooks),
  )
  for (name, kind), value in zip(kinds, records):
    if not isinstance(value, kind):
      raise ConfigError(
        f"fit's {name}= takes a lstm_jax.loop.{name.capitalize()}, got {type(value).__name__}."
      )
  if epochs is None and real_tokens is None:
    raise ConfigError("fit needs epochs or real_tokens (or both) to know when to stop.")
  if epochs is not None and epochs < 1:
    raise ConfigError(f"epochs must be >= 1, got {epochs}.")
  if real_tokens is not None and real_tokens < 1:
    raise ConfigError(f"real_tokens must be >= 1, got {real_tokens}.")
  check_model_fits_data(state.model, strategy.dataset, state.params)
  if getattr(state.model, "bidirectional", False) and strategy.carries_state:
    raise ConfigError(
      f"a bidirectional model needs whole sequences in each row, and "
      f"{strategy.name} cuts them into chunks; use pad, bucket or pack."
    )
  step_backend(state.model, right_padded=strategy.right_padded, training=True)  # servable?


def _starting_point(
  state: TrainState,
  strategy: Strategy,
  steps: StepFunctions,
  checkpointer: Checkpointer | None,
  settings: dict | None,
  resumed: Resumed | None,
) -> tuple[_Run, list[dict], Resumed | None]:
  """Where training starts: the state (replicated over the mesh), or the newest checkpoint's
  state, position, carry and history; and the resume it came from."""
  if steps.mesh is not None:
    for b, _ in strategy.shapes():
      sharding.check_divisible(b, steps.mesh)
    state = sharding.replicate(state, steps.mesh)
  if checkpointer is not None and resumed is None:
    resumed = resume(checkpointer, state, strategy, steps, settings)
  if resumed is None:
    return _Run(state, int(state.step), StreamPosition(), None), [], None
  run = _Run(resumed.state, int(resumed.state.step), resumed.position, resumed.carry)
  return run, list(resumed.history), resumed


def _save(
  checkpointer: Checkpointer | None,
  pending: _PendingStep,
  writer: MetricWriter | None,
  strategy: Strategy,
  run: _Run,
  identity: dict,
  history: list[dict],
  force: bool = False,
) -> None:
  """A checkpoint of `run` (its last step's loss checked first); the writer flushed after it,
  so its events end where this checkpoint does."""
  assert checkpointer is not None  # fit saves only with one
  pending.flush()  # never save a state whose loss was not checked
  carry = _saved_carry(strategy, run.carry)
  checkpointer.save(run.step, run.state, carry, run.stream(identity, history), force=force)
  if writer is not None:
    writer.flush()
  pending.restart_clock()  # the save's blocking part belongs to no step


def _defer_signals(stack: contextlib.ExitStack, preemption: Preemption | None) -> bool:
  """From here a SIGTERM or SIGINT waits for the step in flight and its checkpoint."""
  if preemption is not None:
    stack.enter_context(preemption.deferred())
  return True


def _compile_epoch(
  train: CountedJit, run: _Run, strategy: Strategy, plan, pipeline: Pipeline
) -> None:
  """An epoch starts (or a run resumes): its shapes compiled as `pipeline.compile_shapes` says."""
  if pipeline.compile_shapes == "background":
    compile_in_background(
      train, run.state, strategy, run.position.epoch, pipeline.compile_workers, first=[plan.shape]
    )
  elif pipeline.compile_shapes == "ahead":
    precompile(train, run.state, strategy, run.position.epoch)


def _stop_for_signal(
  preemption: Preemption, checkpointer: Checkpointer | None, save: Callable, step: int
) -> None:
  """A SIGTERM or SIGINT came: the step in flight is done; it is saved (and waited for), then
  Preempted names the step and the checkpoint's directory."""
  if checkpointer is not None:
    save(force=True)
    checkpointer.wait()
  preemption.saved = True
  raise Preempted(preemption.signal_name, step, checkpointer.directory if checkpointer else None)


def fit(
  state: TrainState,
  strategy: Strategy,
  *,
  epochs: int | None = None,
  real_tokens: int | None = None,
  steps: StepFunctions | None = None,
  pipeline: Pipeline = Pipeline(),
  checkpointing: Checkpointing | None = None,
  hooks: Hooks = Hooks(),
) -> FitResult:
  """Trains on `strategy`'s batches for `epochs` epochs, or until `real_tokens` real tokens.

  With both given, stops at whichever comes first.

  Args:
    state: the train state (`create_train_state`); donated to the first step, so its arrays
      are gone afterwards: use the result's.
    strategy: where the batches come from (`Pad`, `Bucket`, `Pack`, `TBPTT`, ...).
    epochs: epochs to train; real_tokens: real (non-padding) tokens to train on.
    steps: the jitted step functions (`StepFunctions.create(mesh)`); None: fresh ones.
    pipeline: what the host does ahead of the steps (`Pipeline`: when shapes compile, batches
      assembled ahead); the default compiles an epoch's shapes before its first step and
      prefetches 2 batches.
    checkpointing: saving, resuming and signals (`Checkpointing`: the checkpointer, the settings
      a checkpoint must share, a resume already read, a `Preemption`); None: none of them.
    hooks: what is called and written as training goes (`Hooks`: per-step callback, evaluation
      every so many real tokens, a metric writer, a progress bar).

  Returns:
    A `FitResult`: the trained `state`, the final `carry`, the per-step `history`, the step
    functions (`steps`: their compile counts and seconds) and `resumed_from`.
  """
  _check_fit_arguments(state, strategy, epochs, real_tokens, (pipeline, checkpointing, hooks))
  checkpointer = checkpointing.checkpointer if checkpointing else None
  settings = checkpointing.settings if checkpointing else None
  resumed = checkpointing.resumed if checkpointing else None
  preemption = checkpointing.preemption if checkpointing else None
  steps = steps or StepFunctions.create()
  zero_carry = functools.lru_cache(maxsize=None)(lambda b: steps.zero_carry(state.model, b))
  run, history, resumed = _starting_point(state, strategy, steps, checkpointer, settings, resumed)
  identity = _identity(strategy, settings) if checkpointer is not None else {}
  watch = _Watch(strategy, epochs, real_tokens, run.position, history, hooks)
  watch.flush_by_time = checkpointer is None  # with one, the writer is flushed at its saves
  pending = _PendingStep(history, watch.record, checkpointer.directory if checkpointer else None)
  stop = _Stop(epochs, real_tokens)
  evals = _EvalSchedule(hooks.eval_every_tokens, hooks.on_eval, run.position.real_tokens)

  save = functools.partial(
    _save, checkpointer, pending, hooks.writer, strategy, run, identity, history
  )

  # each batch assembled ahead, while the steps before it run (depth 0: when it is taken)
  batches = Prefetch(
    stop.planned(strategy, run.position),
    lambda p: steps.batch(strategy.dataset, p[0], strategy.right_padded),
    pipeline.prefetch,
    "fit-batches",
  )
  clock_start = None
  deferring, deferring_on = contextlib.ExitStack(), False
  try:
    for (plan, after), batch in batches:
      if run.position.index == 0 or pending.t_last is None:  # an epoch starts, or a resume
        _compile_epoch(steps.train, run, strategy, plan, pipeline)
        if strategy.carries_state and run.position.index == 0:
          run.carry = zero_carry(plan.batch_size)
      if pending.t_last is None:  # the first step's clock starts after the first precompile
        pending.restart_clock()
        clock_start = pending.t_last
      step_carry = run.carry if strategy.carries_state else zero_carry(plan.batch_size)
      lr_scale = np.float32(plan.lr_scale)
      if not steps.train.is_compiled(run.state, batch, step_carry, lr_scale):
        pending.flush()  # close the previous step first: the compile belongs to this one
      steps.train.raise_background_errors()
      blocked_before = steps.train.blocked_calls
      run.state, metrics, new_carry = steps.train(run.state, batch, step_carry, lr_scale)
      if strategy.carries_state:
        run.carry = new_carry
      run.step += 1
      if not deferring_on:  # a step of this call is done: from here a signal waits for its save
        deferring_on = _defer_signals(deferring, preemption)
      pending.hold(
        dict(
          step=run.step,
          epoch=run.position.epoch,
          shape=f"{plan.batch_size}x{plan.length}",
          real_tokens=plan.real_tokens,
          computed_tokens=plan.computed_tokens,
          compiled=steps.train.blocked_calls > blocked_before,
        ),
        metrics,
      )
      run.position = after
      if evals.due(run.position.real_tokens):
        pending.flush()
        evals.run(run.state, run.position.real_tokens)
        pending.restart_clock()  # evaluation time belongs to no step
      if checkpointer is not None and checkpointer.due(run.step):
        save()
      if preemption is not None and preemption.requested():
        _stop_for_signal(preemption, checkpointer, save, run.step)
      if stop.reached(run.position):
        break
    pending.flush()
    if checkpointer is not None:
      save(force=True)
  finally:
    watch.close(flush_writer=checkpointer is None)  # with one: flushed at the saves only
    batches.close()
    steps.train.stop_background()  # shapes the run never reached are not compiled
    if checkpointer is not None:
      checkpointer.wait()
    deferring.close()
  return FitResult(
    state=run.state,
    history=history,
    steps=steps,
    carry=run.carry,
    position=run.position,
    resumed_from=None if resumed is None else resumed.step,
    clock_start=clock_start,
  )
