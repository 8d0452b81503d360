"""The training loop's bookkeeping, shared by every recipe (library pieces, not a base class).

* :class:`Counters`: step, non-finite total and current streak, checkpointed.
* :class:`TrainState`: model + optimiser (DCP) and the recipe's named components (per rank),
  saved and resumed under the resume rules of :mod:`mmkit.train.resume`.
* :class:`LogWindow`: device-side sums of losses and gradient norms between log steps, read on the
  host once per log step; ``perf/*`` (samples/s, tokens/s, TFLOP/s per device, MFU, data wait; see
  :mod:`mmkit.train.perf`) exclude time spent in evaluation and checkpoints.
* :func:`prepare_training`: optimiser, schedule, grad scaler, :class:`~mmkit.train.step.TrainStep`
  and :class:`TrainState` from a recipe's ``optim`` / ``precision`` / ``checkpoint`` sections.
* :func:`train_loop`: steps until ``total_steps`` with logging, evaluation, checkpoints (never
  during a non-finite streak: a due checkpoint waits for the next finite step), the streak bound,
  the SIGTERM stop every rank agrees on, and the kill fault of the resume tests.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.train.checkpoint import CheckpointConfig, CheckpointManager, RNGState, Stateful
from mmkit.train.context import RunContext
from mmkit.train.optim import OptimConfig, build_optimizer
from mmkit.train.perf import PerfMeter
from mmkit.train.resume import SchedulerState, resume
from mmkit.train.step import StepOptions, StepOutcome, TrainStep, make_grad_scaler
from mmkit.utils import config_to_dict
from mmkit.utils.errors import StateError


class NonFiniteError(StateError):
    """Too many non-finite steps in a row."""


@dataclass
class Counters:
    """Step and non-finite counters (a checkpointed component)."""

    step: int = 0
    nonfinite_total: int = 0
    nonfinite_streak: int = 0

    def mark(self, finite: bool) -> None:
        """Count a step's outcome (``step`` is advanced by the loop as each step runs; a step decided on
        the device is marked when its flag is read)."""
        self.nonfinite_streak = 0 if finite else self.nonfinite_streak + 1
        self.nonfinite_total += 0 if finite else 1

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.step, self.nonfinite_total = int(state["step"]), int(state["nonfinite_total"])
        self.nonfinite_streak = int(state["nonfinite_streak"])


class TrainState:
    """Everything a run checkpoints, and the resume rules that guard it.

    Args:
        ctx: the run context (its config is stored in every checkpoint and compared on resume).
        config: the recipe's ``checkpoint`` section.
        model, optimizer: saved through DCP (DDP and FSDP2 alike).
        components: ``{name: stateful}`` saved per rank (scheduler, scaler, data, RNG, ...);
            :attr:`counters` is added as ``"counters"``.
        frozen: config fields that must not change on resume (dotted prefixes).
    """

    def __init__(
        self,
        ctx: RunContext,
        config: CheckpointConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        components: Mapping[str, Stateful],
        frozen: Sequence[str],
    ) -> None:
        self.ctx, self.config, self.model, self.optimizer = ctx, config, model, optimizer
        self.counters = Counters()
        self.components: dict[str, Stateful] = {**components, "counters": self.counters}
        self.frozen = tuple(frozen)
        self.manager = CheckpointManager(ctx.run_dir / "checkpoints", keep=config.keep, comm=ctx.comm)

    @property
    def step(self) -> int:
        return self.counters.step

    def save(self) -> Path:
        meta = {"config": config_to_dict(self.ctx.config)}
        return self.manager.save(self.step, self.model, self.optimizer, self.components, meta)

    def resume(self) -> bool:
        """Apply ``checkpoint.resume``; True when a checkpoint was loaded. Writes ``config.yaml``."""
        meta = resume(
            self.manager,
            self.config.resume,
            self.model,
            self.optimizer,
            self.components,
            self.ctx.config,
            self.frozen,
            log=self.ctx.print,
        )
        self.ctx.write_config()
        return meta is not None

    def latest(self) -> Path | None:
        return self.manager.latest()


def prepare_training(
    ctx: RunContext,
    model: nn.Module,
    raw_model: nn.Module,
    *,
    optim: OptimConfig,
    precision: str,
    checkpoint: CheckpointConfig,
    components: Mapping[str, Stateful],
    frozen: Sequence[str],
    after_update: Callable[[], None] | None = None,
    perf: PerfMeter | None = None,
) -> tuple[TrainStep, TrainState]:
    """What every recipe builds after its model: AdamW + warmup-cosine over ``raw_model``'s trainable
    parameters, a ``GradScaler`` for fp16, the :class:`TrainStep` on the wrapped ``model`` (measured by
    ``perf``, default a :class:`~mmkit.train.perf.PerfMeter` of the device and precision), and the
    :class:`TrainState` checkpointing it with the recipe's own ``components`` plus the scheduler,
    the scaler and the RNG states. Call ``state.resume()`` next."""
    optimizer, scheduler = build_optimizer(raw_model, optim)
    scaler = make_grad_scaler(precision, ctx.device)
    options = StepOptions(precision, optim.grad_accum, optim.max_grad_norm)
    perf = perf if perf is not None else PerfMeter(ctx.device, precision)
    step = TrainStep(
        ctx,
        model,
        optimizer,
        scheduler,
        options,
        params=raw_model.parameters(),
        scaler=scaler,
        after_update=after_update,
        perf=perf,
    )
    everything = {"scheduler": SchedulerState(scheduler), **components, "rng": RNGState()}
    if scaler is not None:
        everything["grad_scaler"] = scaler
    return step, TrainState(ctx, checkpoint, model, optimizer, everything, frozen)


class LogWindow:
    """Per-key means of device tensors over the steps since the last read, and where the time went
    (``perf/*``, see :meth:`read`)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.samples, self.paused = 0, 0.0
        self.tokens, self.flops, self.wait = 0, 0.0, 0.0
        self.peak: float | None = None
        self.start = time.perf_counter()
        self.grad_norm: Tensor | None = None

    def add(self, outcome: StepOutcome) -> None:
        for k, v in outcome.losses.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            self.counts[k] = self.counts.get(k, 0) + 1
        self.samples += outcome.samples
        self.grad_norm = outcome.grad_norm
        self.tokens += outcome.tokens
        self.flops += outcome.flops
        self.wait += outcome.data_wait
        self.peak = outcome.peak_flops

    @contextmanager
    def pause(self):
        """Time spent inside does not count against ``perf/*``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - t

    def read(self, world_size: int = 1) -> dict[str, float]:
        """``loss/<k>`` means, the last ``grad_norm`` and :meth:`perf`; resets."""
        keys = list(self.sums)
        tensors = [self.sums[k] / self.counts[k] for k in keys]
        if self.grad_norm is not None:
            tensors.append(self.grad_norm)
        values = torch.stack(tensors).tolist() if tensors else []  # the one host read of the window
        out = {f"loss/{k}": v for k, v in zip(keys, values, strict=False)}
        if self.grad_norm is not None:
            out["grad_norm"] = values[-1]
        out.update(self.perf(world_size))
        self._reset()
        return out

    def perf(self, world_size: int = 1) -> dict[str, float]:
        """Over the window's wall time less its pauses: ``perf/samples_per_s`` and ``perf/tokens_per_s``
        (all ranks, as ``world_size`` times this rank's), ``perf/tflops_per_device`` (this rank's model FLOPs),
        ``perf/mfu`` (those against the device's peak, when known) and ``perf/data_wait`` (the share of the
        time this rank waited for batches)."""
        elapsed = max(time.perf_counter() - self.start - self.paused, 1e-9)
        out = {
            "perf/samples_per_s": self.samples * world_size / elapsed,
            "perf/tokens_per_s": self.tokens * world_size / elapsed,
            "perf/tflops_per_device": self.flops / elapsed / 1e12,
            "perf/data_wait": min(self.wait / elapsed, 1.0),
        }
        if self.peak:
            out["perf/mfu"] = self.flops / elapsed / self.peak
        return out


def progress_bar(ctx: RunContext, total: int, initial: int, desc: str, enabled: bool = True):
    """tqdm on rank 0 (redrawn rarely when stderr is a log file, so logs stay readable); else None."""
    if not (enabled and ctx.is_main):
        return None
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0
    )


@dataclass(frozen=True)
class LoopOptions:
    """When :func:`train_loop` logs, evaluates, checkpoints and stops.

    Args:
        total_steps: the last step.
        checkpoint_every: steps between checkpoints (the last step saves too).
        max_nonfinite: non-finite steps in a row that stop the run (:class:`NonFiniteError`).
        log_every: steps between log records (the last step logs too).
        eval_every: steps between evaluations before the last (None or 0: never).
        progress: a progress bar on rank 0.
        desc: the progress bar's label.
        decide_every: with the decision on the device, the most steps between reads of their flags.
    """

    total_steps: int
    checkpoint_every: int
    max_nonfinite: int
    log_every: int
    eval_every: int | None = None
    progress: bool = True
    desc: str = "train"
    decide_every: int = 10


def loop_options(cfg: Any, desc: str = "train") -> LoopOptions:
    """:func:`train_loop`'s settings from a recipe config in the shared vocabulary: ``optim.total_steps``,
    ``checkpoint.every``, ``max_nonfinite``, ``log_every``, ``eval_every``, ``progress``; ``desc`` labels the
    progress bar."""
    return LoopOptions(
        total_steps=cfg.optim.total_steps,
        checkpoint_every=cfg.checkpoint.every,
        max_nonfinite=cfg.max_nonfinite,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        progress=cfg.progress,
        desc=desc,
    )


def train_loop(
    ctx: RunContext,
    state: TrainState,
    step_fn: Callable[[int], StepOutcome],
    options: LoopOptions,
    *,
    on_log: Callable[[int, dict[str, float], StepOutcome], None],
    on_eval: Callable[[int], None] | None = None,
) -> bool:
    """Run steps ``state.step + 1 .. options.total_steps``; returns True when all ran, False after a stop.

    Order after each step: count it, check the streak bound, log (every ``log_every`` and the last),
    evaluate (every ``eval_every`` before the last, through ``on_eval``), checkpoint (every
    ``checkpoint_every`` and the last, deferred while non-finite), the kill fault, then the agreed stop
    (which saves first). Steps decided on the device (:attr:`StepOutcome.nonfinite`) are counted and
    checked, and a stop agreed, at the next step that logs, evaluates, checkpoints or is a multiple of
    ``decide_every`` (one read). ``on_log(step, record, outcome)`` receives each log record.

    Raises:
        NonFiniteError: ``max_nonfinite`` non-finite steps in a row.
    """
    o, total = options, options.total_steps
    bar = progress_bar(ctx, total, state.step, o.desc, o.progress)
    window, pending, undecided = LogWindow(), False, []
    try:
        while state.step < total:
            outcome = step_fn(state.step + 1)
            state.counters.step += 1
            step, stop = state.step, outcome.stop
            window.add(outcome)
            evaluate = on_eval is not None and o.eval_every and step % o.eval_every == 0 and step < total
            pending = pending or step % o.checkpoint_every == 0 or step == total
            if outcome.finite is not None:
                _check_streak(ctx, state, o.max_nonfinite, outcome.finite, step)
            else:
                undecided.append((step, outcome.nonfinite))
                if pending or evaluate or step % o.log_every == 0 or step % o.decide_every == 0:
                    stop = _decide(ctx, state, o.max_nonfinite, undecided)
            if bar is not None:
                bar.update(1)
            if step % o.log_every == 0 or step == total:
                on_log(step, window.read(ctx.info.world_size), outcome)
            with window.pause():
                if evaluate:
                    on_eval(step)
                if pending and state.counters.nonfinite_streak == 0:
                    state.save()
                    pending = False
            ctx.after_step(step)
            if stop:
                return _stop(ctx, state)
        return True
    finally:
        if bar is not None:
            bar.close()


def _decide(ctx: RunContext, state: TrainState, max_nonfinite: int, undecided: list[tuple[int, Tensor]]) -> bool:
    """Read the device flags of ``undecided`` steps and agree on the stop request, in one collective;
    count and check each step as it would have been at once. Returns whether to stop."""
    *bad, stop = ctx.comm.any(*(flag for _, flag in undecided), ctx.stop_requested)
    steps = [step for step, _ in undecided]
    undecided.clear()
    for step, b in zip(steps, bad, strict=True):
        _check_streak(ctx, state, max_nonfinite, not b, step)
    return stop


def _check_streak(ctx: RunContext, state: TrainState, max_nonfinite: int, finite: bool, step: int) -> None:
    c = state.counters
    c.mark(finite)
    if finite:
        return
    if ctx.is_main:
        print(f"step {step}: non-finite loss or gradient, update skipped", file=sys.stderr, flush=True)
    if c.nonfinite_streak >= max_nonfinite:
        raise NonFiniteError(
            f"{c.nonfinite_streak} non-finite steps in a row (last at step {step}); stopping. "
            f"{_last_good(state.latest())}. Lower optim.lr or check the data."
        )


def _last_good(latest: Any) -> str:
    """Which checkpoint a stopped run can go back to: its path, or that there is none yet."""
    if latest is None:
        return "No checkpoint has been saved yet (the run would start again from scratch)"
    return f"The last good checkpoint is {latest} (checkpoint.resume=auto continues from it)"


def _stop(ctx: RunContext, state: TrainState) -> bool:
    latest = state.latest()
    saved_now = latest is not None and CheckpointManager.step_of(latest) == state.step
    if state.counters.nonfinite_streak == 0 and not saved_now:
        state.save()
        ctx.print(f"SIGTERM: checkpoint saved at step {state.step}, exiting")
    elif not saved_now:
        ctx.print(f"SIGTERM during a non-finite streak: not saved. {_last_good(latest)}")
    return False


def read_scalar(t: Any) -> float:
    """A parameter or tensor as a float (gathers an FSDP2 DTensor)."""
    t = t.detach()
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)


def memory_mib(device: torch.device) -> float:
    """Peak CUDA memory, or this process's peak resident set size, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 and plain models are returned as they are)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
