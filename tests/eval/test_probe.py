"""The torch linear probe: separable features are classified perfectly, the strength sweep picks the best
strength on a case built so that too little regularisation overfits and too much predicts the majority,
CLIP's search visits the C it should, and a given validation split is used, then folded into the fit."""

import pytest
import torch

from mmkit.eval.probe import clip_c_search, fit_linear_probe, l2_of


def test_separable_features_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 10
    y = torch.arange(200) % 4
    x = centres[y] + torch.randn(200, 16, generator=g)
    test_y = torch.arange(100) % 4
    test_x = centres[test_y] + torch.randn(100, 16, generator=g)
    probe = fit_linear_probe(x, y)  # validation carved from the training features
    assert probe.accuracy(test_x, test_y) == 1.0 and probe.val_accuracy == 1.0
    assert probe.selected_on == "train_holdout" and probe.train_samples == 200  # carved 40, folded back in
    # every C from 1e-2 up is perfect: the tie goes to the strongest regularisation among them
    assert probe.c == min(c for c, acc in probe.sweep.items() if acc == 1.0)
    assert probe.l2 == pytest.approx(l2_of(probe.c, 200))


def _noisy_copies(n, g):
    """65/35 classes; 100 features, each one latent (which tells the class) plus much noise."""
    y = (torch.rand(n, generator=g) < 0.35).long()
    z = (2 * y - 1).float()[:, None] * 0.5 + 0.5 * torch.randn(n, 1, generator=g)
    return z + 2.0 * torch.randn(n, 100, generator=g), y


def test_the_sweep_picks_the_strength_between_overfitting_and_predicting_the_majority():
    g = torch.Generator().manual_seed(0)
    x, y = _noisy_copies(40, g)  # fewer samples than features: no regularisation fits the noise
    vx, vy = _noisy_copies(2000, g)
    weak, mid, strong = (1 / (2 * l2 * 40) for l2 in (1e-6, 1.0, 100.0))  # C of these strengths on 40 samples
    probe = fit_linear_probe(x, y, vx, vy, c_grid=(weak, mid, strong), refit=False)
    majority = (vy == 0).float().mean().item()
    assert probe.sweep[strong] == pytest.approx(majority)  # all weight shrunk away: the prior alone decides
    assert probe.sweep[weak] < probe.sweep[mid] and probe.c == mid and probe.val_accuracy == probe.sweep[mid]
    assert probe.selected_on == "val" and probe.train_samples == 40 and probe.l2 == pytest.approx(1.0)


def test_a_given_validation_split_is_folded_into_the_final_fit():
    """With refit the final probe is the fit at the chosen C on train + val: the same as fitting it directly."""
    from mmkit.eval.probe import fit_logistic

    g = torch.Generator().manual_seed(1)
    x, y = _noisy_copies(60, g)
    vx, vy = _noisy_copies(30, g)
    probe = fit_linear_probe(x, y, vx, vy, c_grid=(1e-3, 1e-2, 1e-1))
    assert probe.selected_on == "val" and probe.train_samples == 90
    both_x, both_y = torch.cat([x, vx]), torch.cat([y, vy])
    mean, std = both_x.mean(0), both_x.std(0)
    w, b = fit_logistic((both_x - mean) / std, both_y, 2, l2_of(probe.c, 90))
    assert torch.allclose(probe.weight, w, atol=1e-4) and torch.allclose(probe.bias, b, atol=1e-4)


def test_clip_search_visits_every_other_decade_then_refines_around_the_peak():
    """A score peaked at C = 10**0.3 (between grid points): the coarse grid is every other decade from 1e-6
    to 1e6, each refinement halves the step around the best so far, and the search ends at 1/8 decade."""
    import math

    def score(c):
        return -abs(math.log10(c) - 0.3)

    best, sweep = clip_c_search(score)
    exps = sorted(round(math.log10(c), 4) for c in sweep)
    # coarse: 0 best; +-1: 0 stays; +-1/2: 0.5; +-1/4: 0.25; +-1/8: 0.25 stays
    assert exps == [-6, -4, -2, -1, -0.5, 0, 0.125, 0.25, 0.375, 0.5, 0.75, 1, 2, 4, 6]
    assert best == pytest.approx(10**0.25)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"train_x must be \(N, D\) and train_y \(N,\)"):
        fit_linear_probe(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="too few to carve a validation split"):
        fit_linear_probe(torch.zeros(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="c_grid is empty"):
        fit_linear_probe(torch.zeros(4, 2), torch.zeros(4), c_grid=())


@pytest.mark.parametrize("l2", [1.0, 1e-3, 1e-7])
def test_newton_and_lbfgs_reach_the_same_minimum(l2):
    """Both solvers minimise the same objective: their losses agree, Newton's within 25 iterations (only
    an exact Hessian converges that fast), and at Newton's answer autograd's gradient vanishes (at 1e-7
    the data are nearly separable: the weights are large and the minimum flat, so only the losses are
    compared)."""
    import torch.nn.functional as F

    from mmkit.eval.probe import fit_logistic

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=g)
    y = (x[:, :3] @ torch.randn(3, 5, generator=g) + 0.5 * torch.randn(300, 5, generator=g)).argmax(1)

    def loss(w, b):
        return F.cross_entropy(x @ w.T + b, y) + l2 * w.square().sum()

    # Newton's quadratic convergence needs few iterations when its Hessian is exact; L-BFGS gets many
    fits = {s: fit_logistic(x, y, 5, l2, max_iter=iters, solver=s) for s, iters in (("newton", 25), ("lbfgs", 500))}
    losses = {s: loss(*wb).item() for s, wb in fits.items()}
    assert abs(losses["newton"] - losses["lbfgs"]) < 1e-4, losses
    w, b = (t.clone().requires_grad_(True) for t in fits["newton"])
    loss(w, b).backward()
    if l2 >= 1e-3:  # strongly convex enough for the minimiser itself to be pinned down
        assert w.grad.abs().max() < 1e-5 and b.grad.abs().max() < 1e-5
        assert torch.allclose(fits["newton"][0], fits["lbfgs"][0], atol=1e-3)
    with pytest.raises(ValueError, match="solver must be"):
        fit_logistic(x, y, 5, l2, solver="sgd")
