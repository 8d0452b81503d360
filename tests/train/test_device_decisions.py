"""With a fused optimiser the step decides the non-finite skip on the device and reads nothing on the host;
the loop reads the flags later, at its decision points, and trains exactly as with the per-step decision.

"Reads nothing on the host" is checked on the CPU with a ``TorchFunctionMode`` that records every call which
would synchronise with a CUDA device (``item``, ``tolist``, ``bool``, ``float``, ``int``, ``nonzero``, ...):
what ``torch.cuda.set_sync_debug_mode("error")`` refuses on a GPU (``benchmarks/flava_step.py --sync-check``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from mmkit.train import (
    CheckpointConfig,
    CheckpointManager,
    Collectives,
    DistInfo,
    LoopOptions,
    NonFiniteError,
    OptimConfig,
    RunContext,
    StepOptions,
    TrainStep,
    prepare_training,
    train_loop,
)
from mmkit.train.context import FaultPlan
from tests.conftest import spawn_ranks
from tests.models.test_flava_compile import _batches as flava_batches
from tests.models.test_flava_compile import _model as flava_model


class HostReads(TorchFunctionMode):
    """Records the tensor calls that hand a value to the host (each a device sync on CUDA)."""

    NAMES = frozenset(
        {
            "item",
            "tolist",
            "__bool__",
            "__float__",
            "__int__",
            "__index__",
            "nonzero",
            "numpy",
            "cpu",
            "_local_scalar_dense",
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.NAMES:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _ctx(tmp_path, nonfinite_steps=()) -> RunContext:
    faults = FaultPlan(None, frozenset(nonfinite_steps))
    return RunContext(DistInfo(), Collectives(torch.device("cpu"), 1), tmp_path, CheckpointConfig(), faults)


def test_a_whole_flava_step_decided_on_the_device_reads_nothing_on_the_host(tmp_path):
    """Three micro-batches (pair, image, text) of the static-shape FLAVA with clipping and fused AdamW: no host
    read at all; the per-step decision reads once (its flags)."""
    reads = {}
    for on_device in (False, True):
        model = flava_model(True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        options = StepOptions(grad_accum=3, max_grad_norm=1.0, on_device=on_device)
        step = TrainStep(_ctx(tmp_path), model, optimizer, scheduler, options)
        forward = lambda m, b: (lambda o: (o.loss, o.losses))(m(**b))  # noqa: E731
        for seed in (0, 1):  # the first step sets up the optimiser state; the second is measured
            batches = iter(flava_batches(seed).values())
            with HostReads() as seen:
                out = step(lambda b=batches: next(b), forward, seed + 1)
        reads[on_device] = seen.seen
        assert (out.finite is None and out.nonfinite is not None) == on_device
    assert reads == {False: ["tolist"], True: []}


def _train(tmp_path, on_device, nonfinite_steps=(), stop_at=None, total=12, max_nonfinite=3):
    """``total`` steps of a small model through ``train_loop`` (log every 5, checkpoint every 4, decide every
    4); returns the model, state, per-step host reads inside the step, what was logged and where it saved."""
    ctx = _ctx(tmp_path / str(on_device), nonfinite_steps)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 4))
    optim = OptimConfig(lr=1e-2, warmup_steps=0, total_steps=total, fused=True)
    checkpoint = CheckpointConfig(every=4, keep=100)
    step, state = prepare_training(
        ctx, model, model, optim=optim, precision="fp32", checkpoint=checkpoint, components={}, frozen=()
    )
    assert step.on_device  # fused AdamW and no scaler: decided on the device unless told otherwise
    step.on_device = on_device
    g = torch.Generator().manual_seed(1)
    reads, logs = [], []

    def step_fn(i):
        ctx.stop_requested = ctx.stop_requested or i == stop_at  # SIGTERM arrives during step i
        with HostReads() as seen:
            out = step(lambda: torch.randn(8, 4, generator=g), lambda m, x: (m(x).sum(), {}), i)
        reads.append(len(seen.seen))
        return out

    def on_log(i, record, outcome):
        logs.append((i, state.counters.nonfinite_total, state.counters.nonfinite_streak, f"{record['loss/total']:.6g}"))

    error = None
    try:
        options = LoopOptions(
            total_steps=total,
            checkpoint_every=4,
            max_nonfinite=max_nonfinite,
            log_every=5,
            progress=False,
            decide_every=4,
        )
        train_loop(ctx, state, step_fn, options, on_log=on_log)
    except NonFiniteError as exc:
        error = str(exc)
    saved = [CheckpointManager.step_of(p) for p in sorted((ctx.run_dir / "checkpoints").glob("step_*"))]
    return model, state, reads, logs, saved, error


def test_device_decisions_train_save_and_log_as_the_per_step_decision(tmp_path):
    """Non-finite steps 4 and 5 (the checkpoint due at 4 waits for the finite step 6), then all finite."""
    host = _train(tmp_path, False, nonfinite_steps=(4, 5))
    device = _train(tmp_path, True, nonfinite_steps=(4, 5))
    assert host[2] == [1] * 12 and device[2] == [0] * 12  # the step's own host reads
    for (name, p), q in zip(host[0].named_parameters(), device[0].parameters(), strict=True):
        assert torch.equal(p, q), name  # the fused kernel skipped exactly the updates the host skipped
    assert host[1].counters == device[1].counters and device[1].counters.nonfinite_total == 2
    assert host[3] == device[3] and host[3][0][:3] == (5, 2, 2) and host[3][0][3] == "nan"  # logged at 5: both bad
    assert host[4] == device[4] == [6, 8, 12]


def test_the_streak_bound_and_a_stop_are_decided_at_the_next_decision_point(tmp_path):
    host = _train(tmp_path, False, nonfinite_steps=(5, 6, 7))
    device = _train(tmp_path, True, nonfinite_steps=(5, 6, 7))
    assert host[5].replace("False", "True") == device[5] and "3 non-finite steps in a row (last at step 7)" in host[5]
    assert host[1].step == 7 and device[1].step == 8  # read at step 8 (a multiple of decide_every)
    assert host[4] == device[4] == [4]  # nothing saved inside the streak
    host = _train(tmp_path / "stop", False, stop_at=6)
    device = _train(tmp_path / "stop", True, stop_at=6)
    assert (host[1].step, host[4]) == (6, [4, 6]) and (device[1].step, device[4]) == (8, [4, 8])


def test_device_decisions_need_a_fused_optimiser_and_no_scaler(tmp_path):
    model = nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    assert not TrainStep(_ctx(tmp_path), model, optimizer, scheduler).on_device
    with pytest.raises(ValueError, match=r"only with a fused optimiser \(optim.fused=true\) and no GradScaler"):
        TrainStep(_ctx(tmp_path), model, optimizer, scheduler, StepOptions(on_device=True))


class _Units(nn.Sequential):
    """A small model the runtime can parallelise (:class:`~mmkit.train.Parallelizable`): its linear layers are
    the shard units, no loss gathers."""

    def shard_units(self) -> list[nn.Module]:
        return [m for m in self if isinstance(m, nn.Linear)]

    def gathering_losses(self) -> list[nn.Module]:
        return []


def _ranks_worker(rank: int, init_file: str, out_dir: str, strategy: str) -> None:
    import os

    import torch.distributed as dist

    from mmkit.train import parallelize

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results = {}
        for on_device in (False, True):
            torch.manual_seed(0)
            model = _Units(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 4))
            wrapped = parallelize(model, DistInfo(rank, 2), strategy)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
            ctx = RunContext(DistInfo(rank, 2), Collectives(torch.device("cpu"), 2), out_dir, None)
            step = TrainStep(ctx, wrapped, optimizer, scheduler, StepOptions(max_grad_norm=1.0, on_device=on_device))
            g = torch.Generator().manual_seed(rank)
            flags = []
            for i in range(1, 5):  # step 2 is non-finite on rank 1 only: both ranks must skip it
                poison = float("nan") if (rank, i) == (1, 2) else 1.0
                out = step(lambda g=g: torch.randn(8, 4, generator=g), lambda m, x, p=poison: (m(x).sum() * p, {}), i)
                flags.append(out.finite if out.finite is not None else not bool(out.nonfinite))
            params = {
                n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                for n, p in model.named_parameters()
            }
            results[on_device] = {"finite": flags, "params": params}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ranks_agree_on_the_device_and_skip_the_same_updates(tmp_path, strategy):
    """A step non-finite on one rank only is skipped on both, through the device all-reduce under DDP and
    FSDP2 (the fused kernel's ``found_inf`` on sharded parameters too), as with the host decision."""

    spawn_ranks(_ranks_worker, (str(tmp_path / "init"), str(tmp_path), strategy), 2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for results in ranks:
        assert results[False]["finite"] == results[True]["finite"] == [True, False, True, True]
        for name, p in results[False]["params"].items():
            assert torch.equal(results[True]["params"][name], p), name
    for name, p in ranks[0][True]["params"].items():
        assert torch.equal(ranks[1][True]["params"][name], p), name
