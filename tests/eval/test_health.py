"""The stuck-run signs: mean pairwise cosine against brute force; one warning, only when a sign shows."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mmkit.eval import HealthConfig, HealthMonitor, mean_pairwise_cosine


def _brute_force(e: torch.Tensor) -> float:
    u = F.normalize(e.double(), dim=-1)
    pairs = [float(u[i] @ u[j]) for i, j in itertools.permutations(range(len(u)), 2)]
    return sum(pairs) / len(pairs)


def test_mean_pairwise_cosine_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(17, 5, generator=g) * torch.rand(17, 1, generator=g)  # any norms
    assert mean_pairwise_cosine(e) == pytest.approx(_brute_force(e), abs=1e-12)
    assert mean_pairwise_cosine(torch.ones(6, 3) * torch.arange(1, 7)[:, None]) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.eye(4)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"must be \(N >= 2, P\)"):
        mean_pairwise_cosine(torch.ones(1, 3))


def _collapsed(n=32, p=8):
    g = torch.Generator().manual_seed(1)
    return torch.ones(n, p) + 1e-3 * torch.randn(n, p, generator=g)


def _spread(n=32, p=8):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(2))


def test_warns_once_on_a_collapsed_tower_and_names_the_keys():
    lines = []
    monitor = HealthMonitor(HealthConfig(stuck_after=100), warn=lines.append)
    out = monitor(0, _spread(), _collapsed(), contrastive_loss=4.2, batch_size=64)  # step 0: never judged
    assert out["health/text_cosine"] > 0.99 and out["health/image_cosine"] < 0.5 and lines == []
    monitor(50, _spread(), _collapsed(), 4.2, 64)  # before stuck_after
    assert lines == []
    monitor(100, _spread(), _collapsed(), 1.0, 64)
    assert len(lines) == 1
    assert "held-out text embeddings are collapsed" in lines[0] and "image" not in lines[0].split(":")[2]
    assert "model.init_std" in lines[0] and "optim.lr" in lines[0]
    monitor(200, _collapsed(), _collapsed(), 4.2, 64)  # once per run
    assert len(lines) == 1


def test_a_contrastive_loss_at_chance_is_stuck_and_a_healthy_run_is_not():
    lines = []
    monitor = HealthMonitor(HealthConfig(stuck_after=10, chance_margin=0.05), warn=lines.append)
    chance = math.log(64)
    monitor(10, _spread(), _spread(), contrastive_loss=0.9 * chance, batch_size=64)  # 10% below chance: moving
    assert lines == []
    monitor(20, _spread(), _spread(), contrastive_loss=0.99 * chance, batch_size=64)
    assert len(lines) == 1 and "has not moved from chance (ln 64 = 4.159)" in lines[0]
    quiet = []
    healthy = HealthMonitor(HealthConfig(stuck_after=10), warn=quiet.append)
    healthy(20, _spread(), _spread(), contrastive_loss=None)  # a sigmoid loss: only collapse is judged
    disabled = HealthMonitor(HealthConfig(stuck_after=0, enabled=False), warn=quiet.append)
    assert disabled(5, _collapsed(), _collapsed(), 4.2, 64)["health/image_cosine"] > 0.99
    assert quiet == []
