"""The run context every training recipe starts from.

:func:`start_run` joins the process group torchrun describes, picks the device, seeds, creates the
run directory, installs a SIGTERM handler and returns a :class:`RunContext` holding

* ``info`` (rank, world size, device) and ``comm`` (:class:`~mmkit.train.collectives.Collectives`
  on that device: the only way training code talks to other ranks);
* ``run_dir`` and the resolved ``config`` (written to ``<run_dir>/config.yaml`` by
  :meth:`RunContext.write_config` once the run knows whether it resumed; the same config is stored
  in every checkpoint and compared on resume, see :mod:`mmkit.train.resume`);
* ``lock``: the run directory's hold (:mod:`mmkit.utils.run_lock`: one writer per directory; a second
  run on a directory in use stops at once naming the holder), released by :meth:`RunContext.close`;
* what the run must close when it ends, registered with :meth:`RunContext.closing` (loader workers,
  TensorBoard/W&B sinks) and closed by :meth:`RunContext.close`, the last registered first;
* the stop request: SIGTERM sets a flag, and :meth:`TrainStep <mmkit.train.step.TrainStep>` turns it
  into a decision every rank agrees on (so all ranks save the same checkpoint and exit together);
* fault injection used by the resume tests (environment variables, read once):
  ``MMKIT_FAULT_KILL_AT_STEP=N`` SIGKILLs the process after step ``N`` (after any checkpoint of that
  step), ``MMKIT_FAULT_NONFINITE_AT_STEPS=3,4,5`` makes the loss of those steps NaN.
"""

from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml

from mmkit.train.collectives import Collectives
from mmkit.train.distributed import DistInfo, setup_distributed
from mmkit.utils import config_to_dict
from mmkit.utils.run_lock import RunDirInUseError, RunDirLock

_Closable = TypeVar("_Closable")


@dataclass
class FaultPlan:
    """Faults to inject, from ``MMKIT_FAULT_*`` environment variables (tests only)."""

    kill_at_step: int | None = None
    nonfinite_steps: frozenset[int] = frozenset()

    @classmethod
    def from_env(cls) -> FaultPlan:
        kill = os.environ.get("MMKIT_FAULT_KILL_AT_STEP")
        nan = os.environ.get("MMKIT_FAULT_NONFINITE_AT_STEPS", "")
        return cls(int(kill) if kill else None, frozenset(int(s) for s in nan.split(",") if s.strip()))


@dataclass
class RunContext:
    """Process group, device, run directory, resolved config, stop request and fault hooks."""

    info: DistInfo
    comm: Collectives
    run_dir: Path
    config: Any
    faults: FaultPlan = field(default_factory=FaultPlan)
    stop_requested: bool = False
    lock: RunDirLock | None = None
    closers: ExitStack = field(default_factory=ExitStack, repr=False)
    closed: bool = field(default=False, init=False)

    def closing(self, resource: _Closable) -> _Closable:
        """``resource`` (anything with a ``close()``), registered to be closed by :meth:`close`."""
        self.closers.callback(resource.close)
        return resource

    def close(self, wait_for_ranks: bool = False) -> None:
        """End the run, however it ended: close what :meth:`closing` registered, the last first, and release the
        run directory (rank 0's hold). A second call does nothing.

        ``wait_for_ranks`` (the run finished on every rank) first waits for every rank: ranks finish at different
        moments (rank 0 writes the exports), and a rank that leaves early could tear gloo/NCCL down under a peer
        still talking to it (seen as a SIGABRT at exit, "terminate called without an active exception"). The
        registered resources are closed even when that wait fails.
        """
        if self.closed:
            return
        self.closed = True
        with self.closers:
            if wait_for_ranks:
                self.comm.barrier()

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def write_config(self) -> None:
        """``<run_dir>/config.yaml``: the config this run trains with (rank 0)."""
        if self.is_main:
            text = yaml.safe_dump(config_to_dict(self.config), sort_keys=False)
            tmp = self.run_dir / "config.yaml.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.run_dir / "config.yaml")

    def print(self, *args: Any) -> None:
        """Print on rank 0 only."""
        if self.is_main:
            print(*args, flush=True)

    def inject_nonfinite(self, step: int) -> bool:
        """Whether the fault plan makes step ``step`` (1-based, the step being computed) non-finite."""
        return step in self.faults.nonfinite_steps

    def after_step(self, step: int) -> None:
        """The kill fault: SIGKILL this process after step ``step`` finished (checkpoint included)."""
        if self.faults.kill_at_step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True


def start_run(config: Any, run_dir: str | Path, seed: int = 0, device: str = "auto") -> RunContext:
    """Join the process group, seed every RNG with ``seed``, create and hold ``run_dir``, catch SIGTERM.

    Args:
        config: the recipe's resolved dataclass config (kept on the context and in checkpoints).
        run_dir: the run directory (created by rank 0).
        seed: seeds torch's CPU and CUDA generators (the same on every rank: equal initial weights).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.

    Raises:
        RunDirInUseError: another live run holds ``run_dir`` (on every rank, so all stop together).
    """
    info = setup_distributed(device)
    comm = Collectives(info.device, info.world_size)
    torch.manual_seed(seed)
    ctx = RunContext(info, comm, Path(run_dir), config, FaultPlan.from_env())
    refusal = None
    if ctx.is_main:
        try:
            ctx.lock = RunDirLock.acquire(ctx.run_dir)
            ctx.closers.callback(ctx.lock.release)  # released last, after all the run registers later
        except (RunDirInUseError, OSError) as e:  # in use, or not creatable: every rank stops, none waits
            refusal = e
    if comm.any(refusal is not None)[0]:
        raise refusal or RunDirInUseError(f"rank 0 could not hold run directory {ctx.run_dir} (its error says why)")
    signal.signal(signal.SIGTERM, ctx._on_sigterm)
    return ctx
