"""The linear probe of CLIP and FLAVA: L2-regularised multinomial logistic regression on frozen features.

Protocol (Radford et al. 2021, §3.2 and appendix A.3; FLAVA follows it for its 22 vision tasks,
Singh et al. 2022, Table 4): standardise the features; choose the inverse strength ``C`` by CLIP's
parametric search (1e-6 to 1e6, every other decade, then the interval around the best halved until 8
steps a decade) on the dataset's validation split — or, where it has none, on a split carved from the
training split —; refit with that ``C`` on training + validation; report on the test split. Solved
in torch on the features' device (a GPU when there is one) instead of scikit-learn on one CPU core,
each fit warm-started from the nearest ``C`` already fitted: by Newton's method with the exact
Hessian while that Hessian is small (a handful of iterations, none of L-BFGS's per-iteration
overhead), else by full-batch L-BFGS;
``benchmarks/RESULTS.md`` compares both with scikit-learn.

The strength ``l2`` multiplies ``||W||^2`` added to the *mean* cross-entropy (the bias is not
regularised): scikit-learn's ``LogisticRegression(C=c)`` on ``n`` samples is ``l2 = 1 / (2 c n)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit.utils.errors import InputError

#: the gradient tolerance of the sweep's fits: they only rank the C values by validation accuracy (a fit
#: 100x looser picks the same C at a tenth of the time, ``benchmarks/RESULTS.md``); the final fit uses 1e-6
SWEEP_TOL = 1e-4
#: the decades of scikit-learn's ``C`` (inverse strength) CLIP's search covers: 1e-6 to 1e6
C_DECADES = (-6, 6)


@dataclass
class ProbeResult:
    """A fitted probe.

    Attributes:
        c: the chosen inverse strength (scikit-learn's ``C``). l2: the final fit's strength on the mean
            loss, ``1 / (2 C n)`` for its ``n`` samples. val_accuracy: the validation accuracy at ``c``.
        weight, bias: ``(K, D)`` and ``(K,)`` on standardised features (``K`` classes). mean, std: ``(D,)``
            the statistics of the features of the final fit, which the standardisation uses.
        sweep: ``{C: validation accuracy}`` of every ``C`` tried.
        selected_on: ``"val"`` (the dataset's validation split) or ``"train_holdout"`` (carved from train).
        train_samples: the samples of the final fit (train + validation after a refit).
    """

    c: float
    l2: float
    val_accuracy: float
    weight: Tensor
    bias: Tensor
    mean: Tensor
    std: Tensor
    sweep: dict[float, float] = field(default_factory=dict)
    selected_on: str = "train_holdout"
    train_samples: int = 0

    def logits(self, x: Tensor) -> Tensor:
        """``(N, C)`` class scores of raw features ``x (N, D)``."""
        return ((x.to(self.mean) - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, x: Tensor) -> Tensor:
        """``(N,)`` class ids of raw features ``x (N, D)``."""
        return self.logits(x).argmax(1)

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        """Top-1 accuracy on features ``x (N, D)`` with labels ``y (N,)``."""
        return (self.predict(x) == y.to(self.weight.device)).float().mean().item()


#: the Newton solver is used while one iteration's Hessian costs at most this many multiply-adds
#: (``N * P**2`` for ``P = C * (D + 1)`` parameters): milliseconds on a CPU
NEWTON_MAX_COST = 2e9
#: ... and while its ``P x P`` float64 Hessian stays small (4,096 parameters: 128 MiB)
NEWTON_MAX_PARAMS = 4096


def fit_logistic(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    l2: float,
    max_iter: int = 300,
    init: tuple[Tensor, Tensor] | None = None,
    solver: str = "auto",
    tol: float = 1e-6,
) -> tuple[Tensor, Tensor]:
    """Minimise ``mean CE(x W^T + b, y) + l2 ||W||^2``.

    Args:
        x: ``(N, D)`` features (standardised). y: ``(N,)`` labels in ``[0, num_classes)``.
        l2: the strength. max_iter: iterations. init: a starting ``(W, b)`` (warm start).
        solver: ``"newton"`` (exact Hessian, float64: a few iterations, for small problems),
            ``"lbfgs"`` (full-batch L-BFGS with a strong-Wolfe line search, for large ones), or
            ``"auto"``: Newton while one Hessian costs at most :data:`NEWTON_MAX_COST` and has at most
            :data:`NEWTON_MAX_PARAMS` rows.
        tol: stop when the largest gradient entry is below it (Newton: below ``tol / 10``).

    Returns:
        ``W (C, D)``, ``b (C,)`` in ``x``'s dtype.
    """
    if solver not in ("auto", "newton", "lbfgs"):
        raise InputError(f"solver must be 'auto', 'newton' or 'lbfgs', got {solver!r}")
    params = num_classes * (x.shape[1] + 1)
    small = len(x) * params**2 <= NEWTON_MAX_COST and params <= NEWTON_MAX_PARAMS
    if solver == "newton" or (solver == "auto" and small):
        return _fit_newton(x, y, num_classes, l2, max_iter, init, tol / 10)
    return _fit_lbfgs(x, y, num_classes, l2, max_iter, init, tol)


def _fit_lbfgs(
    x: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int, init: tuple[Tensor, Tensor] | None, tol: float
) -> tuple[Tensor, Tensor]:
    w0, b0 = init if init is not None else (x.new_zeros(num_classes, x.shape[1]), x.new_zeros(num_classes))
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=tol,
        tolerance_change=1e-10,
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _fit_newton(
    x: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int, init: tuple[Tensor, Tensor] | None, tol: float
) -> tuple[Tensor, Tensor]:
    """Damped Newton on the augmented features ``[x, 1]`` (the bias is the last column of ``theta``).

    The Hessian of the mean softmax cross-entropy is ``(1/N) sum_i (diag(p_i) - p_i p_i^T) kron
    (x_i x_i^T)`` plus ``2 l2`` on the weights' diagonal; it is singular along "the same bias shift in
    every class", which the gradient never has a component in, so a tiny ridge makes it solvable.
    Backtracking (Armijo) keeps every step a descent; stops when the largest gradient entry is below
    ``tol`` or the loss no longer moves.
    """
    n, d = x.shape
    c = num_classes
    xa = torch.cat([x.double(), x.new_ones(n, 1, dtype=torch.float64)], 1)  # (N, D+1)
    onehot = F.one_hot(y, c).double()  # (N, C)
    reg = torch.full((c, d + 1), 2 * l2, dtype=torch.float64, device=x.device)
    reg[:, d] = 0  # no penalty on the bias
    if init is None:
        theta = xa.new_zeros(c, d + 1)
    else:
        theta = torch.cat([init[0].double(), init[1].double()[:, None]], 1)

    def objective(t: Tensor) -> tuple[Tensor, Tensor]:
        logits = xa @ t.T
        return F.cross_entropy(logits, y) + 0.5 * (reg * t.square()).sum(), logits

    loss, logits = objective(theta)
    for _ in range(max_iter):
        p = logits.softmax(1)
        grad = (p - onehot).T @ xa / n + reg * theta  # (C, D+1)
        if grad.abs().max() < tol:
            break
        a = (p[:, :, None] * xa[:, None, :]).reshape(n, -1)  # (N, C(D+1))
        hess = -(a.T @ a) / n
        blocks = torch.einsum("nc,nd,ne->cde", p, xa, xa) / n  # the diag(p_i) part, one block a class
        hess.view(c, d + 1, c, d + 1).diagonal(dim1=0, dim2=2).add_(blocks.permute(1, 2, 0))
        hess.diagonal().add_(reg.flatten() + 1e-10)
        chol, info = torch.linalg.cholesky_ex(hess)
        if info.item() != 0:  # not positive definite to working precision: add a ridge
            hess.diagonal().add_(1e-6 * hess.diagonal().mean())
            chol = torch.linalg.cholesky(hess)
        step = torch.cholesky_solve(grad.reshape(-1, 1), chol).view(c, d + 1)
        slope = (grad * step).sum()
        rate = 1.0
        while True:
            new_loss, new_logits = objective(theta - rate * step)
            if new_loss <= loss - 1e-4 * rate * slope or rate < 1e-8:
                break
            rate *= 0.5
        theta = theta - rate * step
        moved = loss - new_loss
        loss, logits = new_loss, new_logits
        if moved.abs() <= 1e-12 * max(1.0, loss.abs().item()):
            break
    return theta[:, :d].to(x.dtype).contiguous(), theta[:, d].to(x.dtype).contiguous()


def fit_linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor | None = None,
    val_y: Tensor | None = None,
    *,
    c_grid: Sequence[float] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    refit: bool = True,
    max_iter: int = 300,
    num_classes: int | None = None,
) -> ProbeResult:
    """Fit the probe (see the module docstring).

    Args:
        train_x: ``(N, D)`` training features; train_y: ``(N,)`` labels.
        val_x, val_y: the dataset's own validation split (``selected_on="val"``); None carves
            ``val_fraction`` of the training split (seeded; ``selected_on="train_holdout"``).
        c_grid: the inverse strengths ``C`` to try; None: CLIP's search (:func:`clip_c_search`).
        refit: after the sweep, fit again with the chosen ``C`` on training + validation features (else
            on the training features alone); the sweep's fits stop at a looser tolerance (:data:`SWEEP_TOL`).
        max_iter: iterations per fit. num_classes: default ``max label + 1``.

    Returns:
        :class:`ProbeResult` (ties in validation accuracy go to the stronger regularisation).
    """
    if train_x.ndim != 2 or train_y.shape != (train_x.shape[0],):
        raise InputError(
            f"train_x must be (N, D) and train_y (N,), got {tuple(train_x.shape)} and {tuple(train_y.shape)}"
        )
    if c_grid is not None and not c_grid:
        raise InputError("c_grid is empty")
    x, y = train_x.float(), train_y.long().to(train_x.device)
    carved = val_x is None
    if carved:
        (x, y), (val_x, val_y) = _carve(x, y, val_fraction, seed)
    val_x, val_y = val_x.float().to(x.device), val_y.long().to(x.device)
    classes = num_classes or int(max(y.max(), val_y.max())) + 1
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs, vs = (x - mean) / std, (val_x - mean) / std
    fits: dict[float, tuple[Tensor, Tensor]] = {}

    def score(c: float) -> float:  # fit at C (warm-started from the nearest C fitted so far), validation accuracy
        near = min(fits, key=lambda k: abs(math.log10(k) - math.log10(c)), default=None)
        fits[c] = fit_logistic(xs, y, classes, l2_of(c, len(xs)), max_iter, fits.get(near), tol=SWEEP_TOL)
        with torch.no_grad():
            return ((vs @ fits[c][0].T + fits[c][1]).argmax(1) == val_y).float().mean().item()

    c, sweep = clip_c_search(score) if c_grid is None else _grid_search(score, c_grid)
    if refit:  # the final fit, to full precision: train + validation at the chosen C
        x, y = torch.cat([x, val_x]), torch.cat([y, val_y])
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    n = len(x)
    w, b = fit_logistic((x - mean) / std, y, classes, l2_of(c, n), max_iter, fits[c])
    return ProbeResult(
        c, l2_of(c, n), sweep[c], w, b, mean, std, dict(sorted(sweep.items())), "train_holdout" if carved else "val", n
    )


def l2_of(c: float, n: int) -> float:
    """The strength on the mean loss that scikit-learn's ``C`` on ``n`` samples is: ``1 / (2 C n)``."""
    return 1.0 / (2.0 * c * n)


def _carve(x: Tensor, y: Tensor, fraction: float, seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(train, validation)``: a seeded ``fraction`` of the rows held out."""
    if not 0 < fraction < 1:
        raise InputError(f"val_fraction must be in (0, 1), got {fraction}")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    cut = max(1, round(len(x) * fraction))
    if cut >= len(x):
        raise InputError(f"{len(x)} training samples are too few to carve a validation split")
    return (x[order[cut:]], y[order[cut:]]), (x[order[:cut]], y[order[:cut]])


def _best(sweep: dict[float, float]) -> float:
    """The C of the best score; a tie goes to the smallest C (the strongest regularisation)."""
    return max(sorted(sweep), key=lambda c: sweep[c])


def _grid_search(score: Callable[[float], float], grid: Sequence[float]) -> tuple[float, dict[float, float]]:
    sweep = {c: score(c) for c in sorted(grid)}  # weakest C (strongest regularisation) first
    return _best(sweep), sweep


def clip_c_search(
    score: Callable[[float], float], lo: int = C_DECADES[0], hi: int = C_DECADES[1], steps_per_decade: int = 8
) -> tuple[float, dict[float, float]]:
    """CLIP's parametric search for ``C`` (Radford et al. 2021, appendix A.3): score every other decade
    from ``1e{lo}`` to ``1e{hi}``, then halve the interval around the best until ``steps_per_decade``.

    Args:
        score: ``C -> validation accuracy``, called once per ``C``, strongest regularisation first.

    Returns:
        ``(best C, {C: accuracy} of every C tried)``; 15 fits for the default range.
    """
    sweep: dict[float, float] = {}

    def at(e: float) -> None:
        c = 10.0 ** round(e, 6)
        if lo <= e <= hi and c not in sweep:
            sweep[c] = score(c)

    for e in range(lo, hi + 1, 2):
        at(e)
    step = 2.0
    while step > 1 / steps_per_decade:
        step /= 2
        best = math.log10(_best(sweep))
        at(best - step)
        at(best + step)
    return _best(sweep), sweep
