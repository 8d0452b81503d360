"""``compile="step"`` and activation checkpointing on two processes (gloo): DDP and FSDP2 steps of the compiled
FLAVA, and of FLAVA with its shard units checkpointed, equal the eager ones.

Each rank runs the same :class:`~mmkit.train.TrainStep` (three micro-batches: a pair, an image and a text
batch, so gradient sync is skipped on two of them) eagerly and compiled, then a second step on other
draws with recompilation forbidden, and saves the per-objective losses, the gradient norm and the
parameters after plain SGD at lr 1 (the update IS the gradient). The compiled model runs Dynamo's
whole-graph capture (``fullgraph=True``) with AOTAutograd's joint graph (``aot_eager``: Inductor's C++
build would take minutes per rank here; its numerics are checked in one process by
``tests/models/test_flava_compile.py``), the contrastive all-gather traced into the graph.
"""

import os

import pytest
import torch
import torch.distributed as dist

from mmkit.train import CheckpointConfig, Collectives, DistInfo, RunContext, StepOptions, TrainStep, parallelize
from tests.conftest import spawn_ranks
from tests.models.test_flava_compile import B, _batches, _model

WORLD = 2


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def _run(rank: int, strategy: str, mode: str, tmp: str) -> dict:
    """``mode``: ``none`` (eager), ``step`` (compiled) or ``checkpointed`` (eager, activation checkpointing)."""
    model = _model(False)
    model.contrastive.rows_per_rank = B
    options, compile = {"backend": "aot_eager"}, "step" if mode == "step" else "none"
    wrapped = parallelize(
        model,
        DistInfo(rank, WORLD),
        strategy,
        activation_checkpointing=mode == "checkpointed",
        compile=compile,
        compile_options=options,
    )
    model.set_static_shapes(True)  # the eager run predicts the same budgets of positions
    params = [p for _, p in model.trainable_parameters()]
    opt = torch.optim.SGD(params, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    ctx = RunContext(DistInfo(rank, WORLD), Collectives(torch.device("cpu"), WORLD), tmp, CheckpointConfig())
    step = TrainStep(ctx, wrapped, opt, sched, StepOptions(grad_accum=3))
    steps = []
    for seed in (rank, rank + 10):  # every rank its own data; the second step on other masks and negatives
        queue = iter(_batches(seed).values())
        with torch._dynamo.config.patch(error_on_recompile=seed != rank):
            out = step(lambda q=queue: next(q), lambda m, b: (lambda o: (o.loss, o.losses))(m(**b)), len(steps) + 1)
        assert out.finite and not out.stop
        steps.append(
            {
                "losses": {k: v.detach().clone() for k, v in out.losses.items()},
                "grad_norm": out.grad_norm,
                "params": {n: _full(p) for n, p in model.trainable_parameters()},
            }
        )
    units = sum(type(m).__name__.startswith("FSDP") for m in model.modules())
    return {"steps": steps, "fsdp_units": units, "compiled_forward": "forward" in vars(model)}


def _worker(rank: int, init_file: str, out_dir: str, strategy: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        runs = {mode: _run(rank, strategy, mode, out_dir) for mode in ("none", "step", "checkpointed")}
        torch.save(runs, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _assert_same_steps(reference: list[dict], steps: list[dict], where: str) -> None:
    """Equal per-objective losses, gradient norms and updated parameters, step by step."""
    for i, (ref, out) in enumerate(zip(reference, steps, strict=True)):
        at = f"{where} step {i + 1}"
        assert out["losses"].keys() == ref["losses"].keys() and "global_contrastive" in ref["losses"], at
        for name, loss in ref["losses"].items():
            torch.testing.assert_close(out["losses"][name], loss, atol=1e-5, rtol=1e-5, msg=f"{at} {name}")
        torch.testing.assert_close(out["grad_norm"], ref["grad_norm"], atol=1e-5, rtol=1e-5, msg=at)
        for name, p in ref["params"].items():  # SGD at lr 1: equal parameters are equal gradients
            torch.testing.assert_close(out["params"][name], p, atol=1e-5, rtol=1e-5, msg=f"{at} {name}")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_compiled_step_equals_eager_on_two_processes(tmp_path, strategy):
    spawn_ranks(_worker, (str(tmp_path / "init"), str(tmp_path), strategy), WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for rank, runs in enumerate(ranks):
        eager, compiled = runs["none"], runs["step"]
        for mode in ("step", "checkpointed"):  # compiled, and with activation checkpointing: the eager step
            _assert_same_steps(eager["steps"], runs[mode]["steps"], f"rank {rank} {mode}")
        if strategy == "fsdp":  # per-layer units eagerly; one unit, hooks outside the compiled forward
            assert eager["fsdp_units"] > 1 and compiled["fsdp_units"] == 1 and compiled["compiled_forward"]
    # the ranks saw different data, yet hold the same parameters: the gradients were averaged
    for name, p in ranks[0]["step"]["steps"][-1]["params"].items():
        torch.testing.assert_close(ranks[1]["step"]["steps"][-1]["params"][name], p, msg=name)
    assert ranks[0]["step"]["steps"][0]["losses"]["total"] != ranks[1]["step"]["steps"][0]["losses"]["total"]
