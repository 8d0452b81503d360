"""Gradient accumulation whose contrastive loss sees the whole accumulated batch (GradCache, Gao et al. 2021;
open_clip's ``--accum-freq``).

Plain accumulation of ``K`` micro-batches shrinks a contrastive loss's batch by ``K``: each micro-batch's
loss sees its own rows only. :class:`~mmkit.train.TrainStep` given a :class:`WholeBatchForward` instead
runs a step in two passes:

1. every micro-batch is embedded without building the graph (:attr:`WholeBatchForward.embed`), from a
   remembered random-generator state;
2. the contrastive loss over the rows of all ``K`` micro-batches (gathered across ranks as in a one-pass
   step) and its gradient with respect to every row and to the loss's own parameters (temperature, bias)
   are computed once, in fp32 outside autocast (:func:`whole_batch_gradients`);
3. each micro-batch runs again with the graph, from the generator state its first pass started from (so
   dropout and patch-dropout masks replay), and back-propagates its other losses divided by ``K`` plus
   ``sum(row * cached gradient)`` (:attr:`WholeBatchForward.backprop`): the towers receive exactly the
   whole-batch loss's gradient.

Memory: one micro-batch's activations, plus the ``K`` micro-batches' inputs and ``(K * B, P)`` rows.
Cost: one extra forward of the towers per micro-batch. The micro-batches a step draws are all drawn
before its first pass, so the data stream, the random generators and therefore exact resume are those of
plain accumulation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

Rows = dict[str, Tensor]  # {name: (n, ...)}: what a micro-batch gives the whole-batch loss, row i = sample i
LossFn = Callable[[Rows, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]
BackpropFn = Callable[[nn.Module, Any, Rows, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor], Tensor]]


@dataclass
class WholeBatchForward:
    """A training forward whose contrastive loss is taken over the whole accumulated batch.

    Attributes:
        forward: the one-pass forward ``(model, batch) -> (loss, {name: loss})``: every loss on its own
            micro-batch (used with ``grad_accum=1`` and for micro-batches without rows).
        embed: first pass, run under ``no_grad`` and autocast: ``(model, batch) -> rows`` (``{name: (n, ...)}``,
            the floating ones differentiated), or None when the batch has no part in the loss.
        params: the loss's own parameters as whole tensors (``{"logit_scale": (1,), ...}``).
        loss: ``(rows of every micro-batch concatenated, params) -> (weighted loss, {name: loss to log})``.
        backprop: second pass ``(model, batch, row gradients, param gradients) -> (loss, {name: loss}, term)``:
            ``loss`` the batch's other losses (divided by ``K`` by the step), ``term`` a scalar whose
            gradient is the whole-batch loss's through this batch's rows (and, where ``param gradients``
            is not empty, through the loss's parameters: given on the step's last micro-batch only).
    """

    forward: Callable[[nn.Module, Any], tuple[Tensor, dict[str, Tensor]]]
    embed: Callable[[nn.Module, Any], Rows | None]
    params: Callable[[], dict[str, Tensor]]
    loss: LossFn
    backprop: BackpropFn


@dataclass
class WholeBatchGradients:
    """What the loss over the whole batch leaves for the second pass.

    Attributes:
        rows: per micro-batch, the gradient of each floating row tensor (``(n, ...)``), None where the
            micro-batch gave no rows. params: the gradient of each loss parameter (this rank's share).
        loss: the weighted loss (detached), already scaled by the share of micro-batches that gave rows.
        values: ``{name: loss}`` to log (detached, scaled likewise).
    """

    rows: list[Rows | None]
    params: dict[str, Tensor]
    loss: Tensor
    values: dict[str, Tensor]


def rng_fork(device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The generator states a forward on ``device`` draws from (torch's CPU one and, on CUDA, the device's)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def rng_restore(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    """Put back states taken by :func:`rng_fork`."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def embed_all(
    model: nn.Module, batches: list[Any], fwd: WholeBatchForward, amp: Callable[[], Any], device: torch.device
) -> tuple[list[Rows | None], list[tuple[Tensor, Tensor | None]]]:
    """First pass: each batch's rows without a graph, and the generator state each pass started from."""
    rows, states = [], []
    for batch in batches:
        states.append(rng_fork(device))
        with torch.no_grad(), amp():
            out = fwd.embed(model, batch)
        rows.append(None if out is None else {k: v.detach() for k, v in out.items()})
    return rows, states


def whole_batch_gradients(fwd: WholeBatchForward, rows: list[Rows | None], grad_accum: int) -> WholeBatchGradients:
    """The whole-batch loss over ``rows`` (concatenated in micro-batch order) and its gradients, in fp32.

    The loss enters the step with the weight ``m / grad_accum`` for ``m`` micro-batches with rows, as it
    would under plain accumulation (1 when every micro-batch has rows). Call it on every rank (the loss
    gathers across ranks, and its backward sends the other ranks' rows their gradients).
    """
    present = [r for r in rows if r is not None]
    if not present:
        zero = torch.zeros(())
        return WholeBatchGradients([None] * len(rows), {}, zero, {})
    share = len(present) / grad_accum
    leaves = {k: torch.cat([r[k] for r in present]) for k in present[0]}
    leaves = {k: v.float().requires_grad_() if v.is_floating_point() else v for k, v in leaves.items()}
    params = {k: p.detach().float().requires_grad_() for k, p in fwd.params().items()}
    loss, values = fwd.loss(leaves, params)
    loss = loss * share
    wrt = {**{k: v for k, v in leaves.items() if v.requires_grad}, **{f"param.{k}": p for k, p in params.items()}}
    found = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(wrt.items(), found, strict=True)}
    sizes = [next(iter(r.values())).shape[0] for r in present]
    chunks = {k: grads[k].split(sizes) for k in leaves if leaves[k].requires_grad}
    per_batch, i = [], 0
    for r in rows:
        per_batch.append(None if r is None else {k: c[i] for k, c in chunks.items()})
        i += r is not None
    param_grads = {k: grads[f"param.{k}"] for k in params}
    scaled = {k: v.detach().float() * share for k, v in values.items()}
    return WholeBatchGradients(per_batch, param_grads, loss.detach(), scaled)
