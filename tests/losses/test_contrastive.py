"""Contrastive loss: hand computation, and 2-process (gloo) runs equal to one process on the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mmkit.encoders import flava_text_encoder, vit_encoder
from mmkit.losses import ContrastiveLoss, gather_batches, gather_padded
from tests.conftest import spawn_ranks


def test_matches_hand_computation_and_row_mask():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(2.0)
    out = ContrastiveLoss()(img, txt, scale)
    logits = img @ txt.T * scale.exp()
    labels = torch.arange(5)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(out.loss, expected)
    keep = torch.tensor([True, False, True, True, False])
    out = ContrastiveLoss()(img, txt, scale, row_mask=keep)  # rows left out by their label, not by indexing
    assert out.logits_per_image.shape == (5, 5) and out.labels.tolist() == [0, -100, 2, 3, -100]
    expected = (F.cross_entropy(logits[keep], labels[keep]) + F.cross_entropy(logits.T[keep], labels[keep])) / 2
    torch.testing.assert_close(out.loss, expected)
    out = ContrastiveLoss()(img, txt, scale, row_mask=keep, column_mask=keep)  # the kept pairs alone
    sub = img[keep] @ txt[keep].T * scale.exp()
    expected = (F.cross_entropy(sub, torch.arange(3)) + F.cross_entropy(sub.T, torch.arange(3))) / 2
    torch.testing.assert_close(out.loss, expected)
    assert torch.isinf(out.logits_per_text[:, ~keep]).all()
    nothing = ContrastiveLoss()(img, txt, scale, row_mask=torch.zeros(5, dtype=torch.bool))
    assert nothing.loss.item() == 0.0  # no row counts: 0, not NaN
    with pytest.raises(ValueError, match=r"must both be \(n, P\)"):
        ContrastiveLoss()(img, txt[:3], scale)


class _DualEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        size = dict(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, with_pooler=False)
        self.image = vit_encoder(**size, image_size=16, patch_size=8, use_mask_token=False)
        self.text = flava_text_encoder(**size, vocab_size=40, max_positions=8)
        self.proj_i, self.proj_t = nn.Linear(16, 8), nn.Linear(16, 8)
        self.logit_scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, pixels, ids):
        i = F.normalize(self.proj_i(self.image(pixels).last_hidden_state[:, 0]), dim=-1)
        t = F.normalize(self.proj_t(self.text(ids).last_hidden_state[:, 0]), dim=-1)
        return i, t


def _data(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(1, 40, (n, 6), generator=g)


#: pairs left out of rows and columns (contrastive_matched_only) in the "masked" runs: one per rank of (4, 4)
_DROPPED = (1, 6)


def _keep(n):
    keep = torch.ones(n, dtype=torch.bool)
    keep[list(_DROPPED)] = False
    return keep


#: every two-process run of this file, ``{name: (sizes, gather_with_grad, matched only, rows_per_rank)}``: one
#: process group runs them all (a spawn costs seconds; the cases do not share state: each builds its model)
CASES = {
    "equal": ((4, 4), True, False, None),
    "unequal": ((3, 5), True, False, None),
    "matched-only": ((4, 4), True, True, None),
    "unequal-padded": ((3, 5), True, False, 6),
    "matched-only-padded": ((4, 4), True, True, 5),
    "local-host": ((4, 4), False, False, None),
    "local-padded": ((4, 4), False, False, 4),
}


def _case(rank, world, sizes, with_grad, masked, rows):
    """One step of one case on this rank; the whole batch's mean loss and rank 0's gradients."""
    pixels, ids = _data(sum(sizes))
    start = sum(sizes[:rank])
    sl = slice(start, start + sizes[rank])
    model = _DualEncoder()
    ddp = nn.parallel.DistributedDataParallel(model)
    i, t = ddp(pixels[sl], ids[sl])
    keep = _keep(sum(sizes))[sl] if masked else None  # the column mask is gathered like the embeddings
    loss_fn = ContrastiveLoss(gather_with_grad=with_grad, rows_per_rank=rows)
    out = loss_fn(i, t, model.logit_scale, row_mask=keep, column_mask=keep)
    if rows is not None:  # padded to rows per rank: the padding columns are -inf
        assert out.logits_per_image.shape == (sizes[rank], world * rows)
        padding = torch.tensor([j % rows >= sizes[j // rows] for j in range(world * rows)])
        assert torch.isinf(out.logits_per_text[:, padding]).all() and padding.sum() == world * rows - sum(sizes)
    # sum over this rank's rows, so that summing ranks gives the whole batch's sum for any split
    (out.loss * sizes[rank] * world / sum(sizes)).backward()  # DDP averages: x world / N -> mean
    loss = out.loss.detach() * sizes[rank]
    dist.all_reduce(loss)
    return {"loss": loss / sum(sizes), "grads": {n: p.grad for n, p in model.named_parameters()}}


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name, case in CASES.items():
            result = _case(rank, world, *case)
            if rank == 0:
                torch.save(result, os.path.join(out_dir, f"{name}.pt"))
            dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """``{case name: {"loss", "grads"}}`` of every case of :data:`CASES`, from one spawn of two processes."""
    out = tmp_path_factory.mktemp("contrastive_dist")
    spawn_ranks(_worker, (2, str(out / "init"), str(out)), 2)
    return {name: torch.load(out / f"{name}.pt") for name in CASES}


def _single_process(n, masked=False):
    pixels, ids = _data(n)
    model = _DualEncoder()
    i, t = model(pixels, ids)
    keep = _keep(n) if masked else None
    out = ContrastiveLoss()(i, t, model.logit_scale, row_mask=keep, column_mask=keep)
    out.loss.backward()
    return out.loss.detach(), {n_: p.grad for n_, p in model.named_parameters()}


@pytest.mark.parametrize("case", ["equal", "unequal", "matched-only", "unequal-padded", "matched-only-padded"])
def test_two_processes_equal_one_process(two_process_runs, case):
    """Sizes exchanged on the host (``rows_per_rank=None``) or each rank padded to ``rows`` (no host sync)."""
    sizes, _, masked, _ = CASES[case]
    result = two_process_runs[case]
    loss, grads = _single_process(sum(sizes), masked)
    torch.testing.assert_close(result["loss"], loss, atol=1e-5, rtol=1e-5)
    assert {n for n in grads if n.startswith("image.")} and {n for n in grads if n.startswith("text.")}
    for name, g in grads.items():
        torch.testing.assert_close(result["grads"][name], g, atol=1e-5, rtol=1e-5, msg=name)


def test_local_only_gradients_differ(two_process_runs):
    """Without gradient through the gather, the encoders' gradients are not the whole batch's (either gather)."""
    host, padded = two_process_runs["local-host"], two_process_runs["local-padded"]
    _, grads = _single_process(8)
    name = "image.embeddings.proj.weight"
    assert not torch.allclose(host["grads"][name], grads[name], atol=1e-5)
    for n, g in host["grads"].items():
        torch.testing.assert_close(padded["grads"][n], g, atol=1e-6, rtol=1e-6, msg=n)


def test_gather_outside_a_process_group_is_identity():
    x = torch.randn(3, 4)
    gathered, offset = gather_batches(x)
    assert gathered is x and offset == 0
    gathered, valid, offset = gather_padded(x, 5)
    assert gathered is x and valid.tolist() == [True] * 3 and offset == 0
    with pytest.raises(ValueError, match="a rank passed 3 rows to a gather padded to 2 rows per rank; raise rows_per"):
        gather_padded(x, 2)
