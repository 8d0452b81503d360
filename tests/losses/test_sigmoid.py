"""SigLIP's sigmoid loss: against a hand computation and transformers' formula, and its ring form on
two and three gloo processes against one process on the concatenated batch (loss and gradients); so is
the all-gather form a compiled step traces (``torch.compile(fullgraph=True)``: the ring's sends cannot be)."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmkit.losses import SigmoidContrastiveLoss
from tests.conftest import spawn_ranks


def _embeddings(n, p=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, p, generator=g), dim=-1), F.normalize(torch.randn(n, p, generator=g), dim=-1)


def test_matches_a_hand_computation():
    x, y = _embeddings(4)
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    total = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if i == j else -1.0
            logit = 10.0 * float(x[i] @ y[j]) - 10.0
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    loss = SigmoidContrastiveLoss()(x, y, scale, bias)
    assert float(loss) == pytest.approx(total / 4, rel=1e-6)
    # transformers' SiglipModel: -sum(logsigmoid(labels * logits_per_text)) / n with labels 2 I - 1
    logits_per_text = y @ x.T * scale.exp() + bias
    labels = 2 * torch.eye(4) - 1
    torch.testing.assert_close(loss, -F.logsigmoid(labels * logits_per_text).sum() / 4)
    with pytest.raises(ValueError, match=r"must both be \(n, P\)"):
        SigmoidContrastiveLoss()(x, y[:3], scale, bias)


def _worker(rank, world, init_file, out_dir, n, compiled=False):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = _embeddings(n * world)
        x = x[rank * n : (rank + 1) * n].clone().requires_grad_()
        y = y[rank * n : (rank + 1) * n].clone().requires_grad_()
        scale = torch.tensor(math.log(10.0), requires_grad=True)
        bias = torch.tensor(-10.0, requires_grad=True)
        loss_fn = SigmoidContrastiveLoss()
        if compiled:
            loss_fn = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
        loss = loss_fn(x, y, scale, bias)
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "x": x.grad, "y": y.grad, "scale": scale.grad, "bias": bias.grad},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("world", "compiled"), [(2, False), (3, False), (3, True)], ids=["2", "3", "3-compiled"])
def test_ring_form_equals_one_process_on_the_whole_batch(tmp_path, world, compiled):
    n = 3
    spawn_ranks(_worker, (world, str(tmp_path / "init"), str(tmp_path), n, compiled), world)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    x, y = (t.clone().requires_grad_() for t in _embeddings(n * world))
    scale = torch.tensor(math.log(10.0), requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    loss = SigmoidContrastiveLoss()(x, y, scale, bias)
    loss.backward()
    # the mean of the ranks' losses (and of their scale/bias gradients, as DDP averages them) is the
    # whole batch's; an embedding's gradient, gathered back through the ring to its owner, is world x
    torch.testing.assert_close(torch.stack([p["loss"] for p in parts]).mean(), loss.detach(), atol=1e-5, rtol=1e-5)
    for name, ref in (("scale", scale.grad), ("bias", bias.grad)):
        torch.testing.assert_close(torch.stack([p[name] for p in parts]).mean(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p["x"] for p in parts]) / world, x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]) / world, y.grad, atol=1e-5, rtol=1e-5)
    # without the ring, a rank sees only its own negatives: not the whole batch's loss
    local = SigmoidContrastiveLoss(cross_rank=False)(x[:n], y[:n], scale, bias)
    assert abs(float(local.detach()) - float(parts[0]["loss"])) > 1e-3
