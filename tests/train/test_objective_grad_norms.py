"""Per-objective gradient norms: each equals the norm of that loss's own gradient (computed apart), the
``.grad`` the step accumulates is untouched, and under DDP the step's gradients are those of a step
without the measurement."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from mmkit.train import objective_grad_norms


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))


def _losses(model, x):
    out = model(x)
    return {"a": out[:, 0].pow(2).mean(), "b": out[:, 1:].abs().sum(), "frozen": out.detach().sum()}


def test_each_norm_is_its_own_losss_gradient_norm_and_grad_is_untouched():
    model, x = _model(), torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    expected = {}
    for name in ("a", "b"):
        model.zero_grad()
        (3.0 * _losses(model, x)[name] if name == "b" else _losses(model, x)[name]).backward()
        expected[name] = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    losses = _losses(model, x)
    norms = objective_grad_norms(losses, model.parameters(), {"b": 3.0})
    assert set(norms) == {"a", "b"}  # a loss without a graph is left out
    for name in ("a", "b"):
        torch.testing.assert_close(norms[name], expected[name], rtol=1e-6, atol=0)
    assert all(p.grad is None for p in model.parameters())
    (losses["a"] + 3.0 * losses["b"]).backward()  # the graph is still alive for the step's own backward
    assert all(p.grad is not None for p in model.parameters())
    assert objective_grad_norms(_losses(model, x), model.parameters(), {"a": 0.0}).keys() == {"b"}


def test_under_ddp_the_step_gradients_do_not_change():
    """DDP (gloo, one rank, find_unused_parameters as FLAVA uses it): measuring between the forward and the
    backward leaves the synchronised gradients exactly as without it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(29400 + os.getpid() % 1000)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
        grads = []
        for measure in (False, True):
            ddp = DistributedDataParallel(_model(), find_unused_parameters=True)
            for _ in range(2):  # twice: the reducer must be ready for the next iteration too
                ddp.zero_grad(set_to_none=True)
                losses = _losses(ddp, x)
                if measure:
                    objective_grad_norms(losses, ddp.module.parameters())
                (losses["a"] + losses["b"]).backward()
            grads.append([p.grad.clone() for p in ddp.module.parameters()])
        for a, b in zip(*grads, strict=True):
            assert torch.equal(a, b)
    finally:
        dist.destroy_process_group()
