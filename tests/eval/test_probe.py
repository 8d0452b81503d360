"""The torch linear probe: separable features are classified perfectly, the strength sweep picks the best
strength on a case built so that too little regularisation overfits and too much predicts the majority."""

import pytest
import torch

from mmkit.eval.probe import DEFAULT_L2, fit_linear_probe


def test_separable_features_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 10
    y = torch.arange(200) % 4
    x = centres[y] + torch.randn(200, 16, generator=g)
    test_y = torch.arange(100) % 4
    test_x = centres[test_y] + torch.randn(100, 16, generator=g)
    probe = fit_linear_probe(x, y)  # validation carved from the training features
    assert probe.accuracy(test_x, test_y) == 1.0 and probe.val_accuracy == 1.0
    assert set(probe.sweep) == set(DEFAULT_L2)
    assert probe.l2 == max(DEFAULT_L2)  # every strength is perfect: the tie goes to the strongest


def _noisy_copies(n, g):
    """65/35 classes; 100 features, each one latent (which tells the class) plus much noise."""
    y = (torch.rand(n, generator=g) < 0.35).long()
    z = (2 * y - 1).float()[:, None] * 0.5 + 0.5 * torch.randn(n, 1, generator=g)
    return z + 2.0 * torch.randn(n, 100, generator=g), y


def test_the_sweep_picks_the_strength_between_overfitting_and_predicting_the_majority():
    g = torch.Generator().manual_seed(0)
    x, y = _noisy_copies(40, g)  # fewer samples than features: no regularisation fits the noise
    vx, vy = _noisy_copies(2000, g)
    probe = fit_linear_probe(x, y, vx, vy, l2_grid=(1e-6, 1.0, 100.0))
    majority = (vy == 0).float().mean().item()
    assert probe.sweep[100.0] == pytest.approx(majority)  # all weight shrunk away: the prior alone decides
    assert probe.sweep[1e-6] < probe.sweep[1.0] and probe.l2 == 1.0 and probe.val_accuracy == probe.sweep[1.0]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"train_x must be \(N, D\) and train_y \(N,\)"):
        fit_linear_probe(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="too few to carve a validation split"):
        fit_linear_probe(torch.zeros(1, 2), torch.zeros(1))
