"""One optimiser step, the same for every recipe.

:class:`TrainStep` runs ``grad_accum`` micro-batches (gradient synchronisation skipped on all but
the last: DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync``; given a
:class:`~mmkit.train.whole_batch.WholeBatchForward`, in two passes whose contrastive loss sees the whole
accumulated batch), under autocast for ``bf16`` / ``fp16``, with a ``GradScaler`` for ``fp16``; unscales,
clips, and decides on the device whether the step is finite. That decision and the stop request
(SIGTERM) are combined in ONE all-reduce (MAX) so every rank skips or applies the same updates and
stops at the same step; it is the only host read of a normal step. Losses and the gradient norm stay
on the device (:class:`StepOutcome`) until a log step reads them.

GradScaler done right: ``unscale_`` every step, and ``update`` every step — on a skipped step the
scale is backed off explicitly (so ranks whose own gradients were finite back off too) — and the
scaler's state is a checkpointed component.

With a fused optimiser (``optim.fused``: torch's fused AdamW) and no scaler the step makes NO host read:
the ranks' non-finite flags are all-reduced on the device and handed to the fused kernel as its
``found_inf``, which skips the update there (parameters, moments and step count untouched). The step
then returns its flag undecided (:attr:`StepOutcome.nonfinite`) and the training loop reads the flags
of several steps, and agrees on the stop request, in one collective at its next decision point (a log,
evaluation or checkpoint step, or every few steps): the same updates, counters and checkpoints as the
per-step decision, learnt a few steps later.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.train.context import RunContext
from mmkit.train.perf import PerfMeter, meter_context
from mmkit.train.whole_batch import WholeBatchForward, embed_all, rng_restore, whole_batch_gradients
from mmkit.utils.errors import InputError

PRECISIONS = ("fp32", "bf16", "fp16")
ForwardFn = Callable[[nn.Module, Any], tuple[Tensor, dict[str, Tensor]]]  # (model, batch) -> (loss, {name: loss})


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` (``fp32``: none). LayerNorm and softmax stay fp32 under
    autocast's own rules."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for ``fp16`` (on CUDA, or torch's CPU scaler), else None."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def _sync_gradients(model: nn.Module, sync: bool):
    """Context for a micro-batch: with ``sync=False`` gradients are accumulated locally only."""
    if hasattr(model, "no_sync"):  # DDP
        return nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return nullcontext()


@dataclass
class StepOutcome:
    """What a step leaves behind: device tensors (read them at log steps) and host decisions.

    ``finite`` / ``stop`` are None when the step decided on the device (:attr:`TrainStep.on_device`):
    ``nonfinite`` is then the 0-d flag every rank agreed on (1.0: the update was skipped), for the loop
    to read later, and the stop request is agreed there too."""

    finite: bool | None
    stop: bool | None
    losses: dict[str, Tensor] = field(default_factory=dict)  # per objective, mean over micro-batches
    grad_norm: Tensor | None = None
    samples: int = 0
    nonfinite: Tensor | None = None
    data_wait: float = 0.0  # seconds this rank waited for the step's batches
    tokens: int = 0  # image patches + text tokens of this rank's batches
    flops: float = 0.0  # model FLOPs of this rank's forward and backward (mmkit.train.perf)
    peak_flops: float | None = None  # this device's dense peak FLOP/s (None: unknown)


@dataclass(frozen=True)
class StepOptions:
    """How a :class:`TrainStep` runs.

    Args:
        precision: ``fp32`` | ``bf16`` | ``fp16``.
        grad_accum: micro-batches per step (>= 1).
        max_grad_norm: clip threshold (None: no clipping, the norm is still measured).
        on_device: decide the non-finite skip on the device (no host read; see the module docs).
            Default: where it can, i.e. a fused optimiser and no scaler.
    """

    precision: str = "fp32"
    grad_accum: int = 1
    max_grad_norm: float | None = None
    on_device: bool | None = None


class TrainStep:
    """Gradient accumulation, autocast, gradient scaling, clipping and the agreed non-finite skip.

    Args:
        ctx: the run context (collectives, stop request, fault hooks).
        model: the (wrapped) model the forward runs on.
        optimizer, scheduler: stepped once per call (the scheduler also on skipped steps: the schedule
            follows the step count).
        options: precision, accumulation, clipping and where the skip is decided (:class:`StepOptions`).
        params: parameters to clip (default: the model's trainable ones).
        scaler: the ``GradScaler`` (``fp16``; see :func:`make_grad_scaler`).
        after_update: called after each applied update (e.g. clamping ``logit_scale``); with the decision
            on the device, after every step (a skipped step left the parameters as they were).
        perf: a :class:`~mmkit.train.perf.PerfMeter` that times the batch waits and counts tokens and FLOPs
            into each :class:`StepOutcome` (attribute ``perf``); None: not measured.
    """

    def __init__(
        self,
        ctx: RunContext,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        options: StepOptions = StepOptions(),  # frozen: one shared default is safe
        *,
        params: Iterable[nn.Parameter] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        after_update: Callable[[], None] | None = None,
        perf: PerfMeter | None = None,
    ) -> None:
        if options.grad_accum < 1:
            raise InputError(f"grad_accum must be >= 1, got {options.grad_accum}")
        if options.precision == "fp16" and scaler is None:
            raise InputError("precision fp16 needs a GradScaler (make_grad_scaler)")
        can = scaler is None and bool(optimizer.defaults.get("fused"))
        if options.on_device and not can:
            raise InputError(
                "the non-finite skip can be decided on the device only with a fused optimiser "
                "(optim.fused=true) and no GradScaler (precision fp32 or bf16)"
            )
        self.on_device = can if options.on_device is None else options.on_device
        self.ctx, self.model, self.optimizer, self.scheduler = ctx, model, optimizer, scheduler
        self.params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        self.options = options
        self.precision, self.grad_accum = options.precision, options.grad_accum
        self.max_grad_norm = options.max_grad_norm
        self.scaler, self.after_update, self.perf = scaler, after_update, perf

    def __call__(self, next_batch: Callable[[], Any], forward: ForwardFn | WholeBatchForward, step: int) -> StepOutcome:
        """Run step ``step`` (1-based): ``forward(model, batch)`` returns ``(loss, {name: loss})``. A
        :class:`~mmkit.train.whole_batch.WholeBatchForward` with ``grad_accum > 1`` takes its contrastive
        loss over the whole accumulated batch in two passes (see :mod:`mmkit.train.whole_batch`)."""
        if isinstance(forward, WholeBatchForward) and self.grad_accum > 1:
            losses, samples = self._two_passes(next_batch, forward, step)
        else:
            plain = forward.forward if isinstance(forward, WholeBatchForward) else forward
            losses, samples = self._accumulate(next_batch, plain, step)
        total = losses["total"]
        grad_norm = self._unscale_and_clip()
        nonfinite = ~(torch.isfinite(total) & torch.isfinite(grad_norm))
        wait, tokens, flops = self.perf.take() if self.perf is not None else (0.0, 0, 0.0)
        perf = dict(data_wait=wait, tokens=tokens, flops=flops, peak_flops=self.perf and self.perf.peak)
        if self.on_device:
            flag = self.ctx.comm.all_reduce(nonfinite.float(), "max")  # every rank's, still on the device
            self.optimizer.found_inf = flag  # the fused kernel skips the update where it is 1
            self._apply(True)
            return StepOutcome(None, None, losses, grad_norm, samples, nonfinite=flag, **perf)
        bad, stop = self.ctx.comm.any(nonfinite, self.ctx.stop_requested)
        self._apply(not bad)
        return StepOutcome(not bad, stop, losses, grad_norm, samples, **perf)

    def _fetch(self, next_batch: Callable[[], Any]) -> Any:
        """The next batch (its wait timed and its tokens counted when measured)."""
        return next_batch() if self.perf is None else self.perf.fetch(next_batch)

    def _accumulate(self, next_batch: Callable[[], Any], forward: ForwardFn, step: int) -> tuple[dict, int]:
        """Plain accumulation: each micro-batch's losses on its own rows. Returns ``(losses, samples)``."""
        losses: dict[str, Tensor] = {}
        total = torch.zeros((), device=self.ctx.device)
        samples = 0
        for micro in range(self.grad_accum):
            batch = self._fetch(next_batch)
            with meter_context(self.perf, batch):
                with (
                    _sync_gradients(self.model, micro == self.grad_accum - 1),
                    autocast(self.precision, self.ctx.device),
                ):
                    loss, parts = forward(self.model, batch)
                    if micro == 0 and self.ctx.inject_nonfinite(step):
                        loss = loss * float("nan")
                    loss = loss / self.grad_accum
                self._backward(loss)
            total += loss.detach().float()
            for k, v in parts.items():
                losses[k] = losses.get(k, 0) + v.detach().float() / self.grad_accum
            samples += batch_size(batch)
        losses["total"] = total
        return losses, samples

    def _two_passes(self, next_batch: Callable[[], Any], fwd: WholeBatchForward, step: int) -> tuple[dict, int]:
        """Whole-batch accumulation (:mod:`mmkit.train.whole_batch`). Returns ``(losses, samples)``."""
        k = self.grad_accum
        batches = [self._fetch(next_batch) for _ in range(k)]
        with meter_context(self.perf, *batches):
            return self._two_passes_of(batches, fwd, step)

    def _two_passes_of(self, batches: list, fwd: WholeBatchForward, step: int) -> tuple[dict, int]:
        k, device = self.grad_accum, self.ctx.device
        rows, states = embed_all(self.model, batches, fwd, lambda: autocast(self.precision, device), device)
        cached = whole_batch_gradients(fwd, rows, k)
        losses: dict[str, Tensor] = dict(cached.values)
        total = cached.loss.float().to(device)
        for micro, batch in enumerate(batches):
            rng_restore(states[micro], device)  # the first pass's dropout and patch-dropout draws again
            last = micro == k - 1
            grads, params = cached.rows[micro], (cached.params if last else {})
            with _sync_gradients(self.model, last), autocast(self.precision, device):
                if grads is None and not params:
                    (loss, parts), term = fwd.forward(self.model, batch), None
                else:
                    loss, parts, term = fwd.backprop(self.model, batch, grads or {}, params)
                if micro == 0 and self.ctx.inject_nonfinite(step):
                    loss, term = loss * float("nan"), None if term is None else term * float("nan")
                loss = loss / k
            self._backward(loss if term is None else loss + term)
            total += loss.detach().float()
            for name, v in parts.items():
                losses[name] = losses.get(name, 0) + v.detach().float() / k
        losses["total"] = total
        return losses, sum(batch_size(b) for b in batches)

    def _backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _unscale_and_clip(self) -> Tensor:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm or float("inf"))
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        return norm.detach().float()

    def _apply(self, finite: bool) -> None:
        if finite:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.after_update is not None:
                self.after_update()
        elif self.scaler is not None:
            backoff(self.scaler)
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.scheduler.step()
        else:
            advance_past_skip(self.scheduler)


def advance_past_skip(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Advance ``scheduler`` past a skipped update: the learning rate follows the step count, skipped steps
    included (so that it is the same function of the step on every rank, in every run and after a resume).
    Torch warns when a schedule's first advance comes before any optimiser update; here that is a first
    step skipped on purpose (non-finite, or an fp16 overflow), so that one warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SCHEDULE_FIRST, category=UserWarning)
        scheduler.step()


#: torch's warning about a schedule advanced before the optimiser's first update
_SCHEDULE_FIRST = r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"


def batch_size(batch: Any) -> int:
    """Samples in a batch: ``len`` of a batch object, or the leading size of a dict's first tensor."""
    if isinstance(batch, dict):
        return next(int(v.shape[0]) for v in batch.values() if isinstance(v, Tensor))
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    return len(batch)


def backoff(scaler: torch.amp.GradScaler) -> None:
    """What ``GradScaler.update`` does after an overflow, applied whatever this rank's own gradients
    were: scale times the backoff factor, growth tracker reset, per-step state cleared."""
    state = scaler.state_dict()
    scaler.update(state["scale"] * state["backoff_factor"])
    scaler.load_state_dict({**scaler.state_dict(), "_growth_tracker": 0})


def objective_grad_norms(
    losses: dict[str, Tensor], params: Iterable[nn.Parameter], weights: dict[str, float] | None = None
) -> dict[str, Tensor]:
    """The gradient norm each objective alone would give, without touching ``.grad``.

    Args:
        losses: scalar losses by name, from one forward whose graph is still alive (``retain_graph``
            is used, so the step's own backward can follow).
        params: the parameters to measure over (those a loss does not reach count as zero).
        weights: the weight each loss enters the total with (default 1): the norm is of the weighted
            loss's gradient, the share the update actually receives.

    Returns:
        ``{name: 0-d tensor}`` on the loss's device, before clipping. Costs one backward per objective:
        call it on a few steps (the recipes' ``grad_norms_every``), not every one. Works on a plain or
        DDP-wrapped model (no gradient hook fires); not under FSDP2, whose hooks would run.
    """
    params = [p for p in params if p.requires_grad]
    out: dict[str, Tensor] = {}
    for name, loss in losses.items():
        weight = 1.0 if weights is None else float(weights.get(name, 1.0))
        if weight == 0 or not loss.requires_grad:
            continue
        grads = torch.autograd.grad(loss * weight, params, retain_graph=True, allow_unused=True)
        norms = [torch.linalg.vector_norm(g.detach().float()) for g in grads if g is not None]
        out[name] = torch.linalg.vector_norm(torch.stack(norms)) if norms else loss.new_zeros(())
    return out


class GradNormProbe:
    """Each objective's gradient norm (:func:`objective_grad_norms`) on the first batch of ``kind`` from
    every ``every``-th step, kept for the next log record.

    Args:
        every: steps between measurements (0: never).
        weights: the weight each loss enters the total with.
        kind: the batch kind measured (the one every objective sees: FLAVA's ``"pair"``).
        enabled: False where the extra backward cannot run (FSDP2 hooks, a compiled step).

    Use: :meth:`start` before each step, :meth:`measure` in the forward, :meth:`pop` when logging.
    """

    def __init__(self, every: int, weights: dict[str, float], kind: str = "pair", enabled: bool = True) -> None:
        self.every, self.weights, self.kind = (every if enabled else 0), weights, kind
        self._due = False
        self._norms: dict[str, Tensor] = {}

    def start(self, step: int) -> None:
        """A measuring step begins: the next batch of ``kind`` is measured."""
        if self.every and step % self.every == 0:
            self._due = True

    def measure(self, kind: str, losses: dict[str, Tensor], params: Iterable[nn.Parameter]) -> None:
        """Measure ``losses`` (whose graph is alive) when due and ``kind`` is the probe's."""
        if self._due and kind == self.kind:
            self._due = False
            self._norms = objective_grad_norms(losses, params, self.weights)

    def pop(self) -> dict[str, float]:
        """``{"grad_norm/<objective>": value}`` measured since the last call (one host sync), else empty."""
        norms, self._norms = self._norms, {}
        if not norms:
            return {}
        return dict(zip((f"grad_norm/{k}" for k in norms), torch.stack(list(norms.values())).tolist(), strict=True))
