"""Gradient accumulation whose contrastive loss sees the whole accumulated batch (``mmkit.train.whole_batch``).

One step of (batch B, accum K) in two passes equals one step of (batch K·B, accum 1): every loss and every
gradient (the towers', the temperature's, SigLIP's bias) within 1e-5, for CLIP, SigLIP and FLAVA's global
contrastive objective, on 1 and 2 ranks (gloo; DDP and FSDP2). With dropout and FLIP patch dropout on, the
big batch's draws depend on its shape, so the oracle is the big-batch loss over the same K forwards held
with their graphs (the masks the plain forwards draw one after another): the second pass must replay them.
FLAVA's per-sample objectives accumulate as before (their losses and gradients add to the whole-batch
contrastive one's).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from mmkit.models import (
    CLIPConfig,
    FLAVAConfig,
    SigLIPConfig,
    dual_encoder_for_pretraining,
    flava_model_for_pretraining,
)
from mmkit.pretrain import whole_batch, whole_batch_forward
from mmkit.train import (
    CheckpointConfig,
    Collectives,
    DistInfo,
    RunContext,
    StepOptions,
    TrainStep,
    make_grad_scaler,
    parallelize,
)
from mmkit.train.context import FaultPlan
from tests.conftest import randomize_, spawn_ranks
from tests.models.test_flava_compile import _batches as flava_batches
from tests.models.test_flava_compile import _model as flava_model

B, K, L = 3, 4, 7
DROPOUT = {"image": {"dropout": 0.1, "attention_dropout": 0.1, "patch_dropout": 0.5}, "text": {"dropout": 0.1}}
ONLY_CONTRASTIVE = {"weights": {k: 0.0 for k in ("itm", "mmm_image", "mmm_text", "mim", "mlm")}}


class _Batch(dict):
    """A dict batch with the recipes' ``model_inputs()``."""

    def model_inputs(self) -> dict:
        return self


def _model(kind: str, dropout: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    over = DROPOUT if dropout else {}
    if kind == "flava":
        model = flava_model_for_pretraining(FLAVAConfig.tiny(pretraining=ONLY_CONTRASTIVE, **over))
    else:
        model = dual_encoder_for_pretraining((CLIPConfig if kind == "clip" else SigLIPConfig).tiny(**over))
    return randomize_(model).train()  # no zero tokens (LayerNorm of a zero CLS), no bias at -10 (SigLIP's)


def _data(kind: str, n: int, seed: int) -> list[_Batch]:
    """``n`` micro-batches of ``B`` pairs (FLAVA's with one swapped caption each: rows left out of the loss)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        batch = _Batch(
            pixel_values=torch.randn(B, 3, 32, 32, generator=g),
            input_ids=torch.randint(5, 100, (B, L), generator=g),
            attention_mask=torch.ones(B, L, dtype=torch.long),
        )
        if kind == "flava":
            batch["itm_labels"] = torch.tensor([1, 0, 1])
        out.append(batch)
    return out


def _cat(batches: list[dict]) -> _Batch:
    return _Batch({k: torch.cat([b[k] for b in batches]) for k in batches[0]})


def _plain(model, batch):
    out = model(**batch.model_inputs())
    return out.loss, out.losses


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def _ctx(rank: int = 0, world: int = 1, nonfinite=()) -> RunContext:
    return RunContext(
        DistInfo(rank, world),
        Collectives(torch.device("cpu"), world),
        "/tmp",
        CheckpointConfig(),
        FaultPlan(None, frozenset(nonfinite)),
    )


def _train(model, wrapped, batches, accum, two_passes, steps=1, ctx=None, precision="fp32"):
    """``steps`` SGD steps (momentum 0.9; AdamW's normalisation would blow up the rounding of gradients that
    are 0 in exact arithmetic, e.g. the key biases') of ``accum`` micro-batches: per step its losses and the
    gradients it applied; the parameters at the end."""
    grads = []
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([p for _, p in params], lr=0.1, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    def keep() -> None:  # after the update, before the gradients are zeroed
        grads.append({n: _full(p.grad) for n, p in params if p.grad is not None})

    step = TrainStep(
        ctx or _ctx(),
        wrapped,
        optimizer,
        schedule,
        StepOptions(precision, grad_accum=accum),
        scaler=make_grad_scaler(precision, torch.device("cpu")),
        after_update=keep,
    )
    forward = whole_batch_forward(model, _plain) if two_passes else _plain
    queue = iter(batches)
    outs = [step(lambda: next(queue), forward, i + 1) for i in range(steps)]
    return [{k: v.detach().clone() for k, v in o.losses.items()} for o in outs], grads, {n: _full(p) for n, p in params}


def _oracle(model, batches, world: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The whole-batch loss over ``batches`` forwarded one after another with their graphs, and its gradients
    (averaged over ranks, as DDP does)."""
    model.zero_grad(set_to_none=True)
    rows = [model(**b, embed_only=True).contrastive_rows for b in batches]
    loss, _ = model.whole_batch_loss({k: torch.cat([r[k] for r in rows]) for k in rows[0]}, model.loss_parameters())
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    for g in grads.values():
        if world > 1:
            dist.all_reduce(g)
            g /= world
    return loss.detach(), grads


def _close(got: dict, want: dict, what: str, tol: float = 1e-5) -> None:
    assert got.keys() == want.keys(), what
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=tol, rtol=tol, msg=f"{what}: {name}")


def _check_big_batch(kind: str, wrap, rank: int = 0, world: int = 1, steps: int = 4) -> None:
    """Two passes of K micro-batches == one step on their concatenation: every loss, gradient, parameter."""
    data = _data(kind, steps * K, seed=10 + rank)
    big = [_cat(data[i : i + K]) for i in range(0, steps * K, K)]
    runs = []
    for accum, batches in ((1, big), (K, data)):
        model = _model(kind)
        runs.append(_train(model, wrap(model), batches, accum, two_passes=True, steps=steps, ctx=_ctx(rank, world)))
    (ref_losses, ref_grads, ref_params), (losses, grads, params) = runs
    for i in range(steps):
        _close(losses[i], ref_losses[i], f"{kind} step {i + 1} losses")
        _close(grads[i], ref_grads[i], f"{kind} step {i + 1} gradients")
    assert "model.logit_scale" in grads[0] and (kind != "siglip" or "model.logit_bias" in grads[0])
    _close(params, ref_params, f"{kind} parameters after {steps} steps")


def _check_dropout(kind: str, wrap, rank: int = 0, world: int = 1) -> None:
    """With dropout and patch dropout: the two passes' gradients are the oracle's over the same draws."""
    data = _data(kind, K, seed=20 + rank)
    model = _model(kind, dropout=True)
    torch.manual_seed(5 + rank)
    losses, grads, _ = _train(model, wrap(model), data, K, two_passes=True, ctx=_ctx(rank, world))
    oracle = _model(kind, dropout=True)
    torch.manual_seed(5 + rank)
    loss, ref = _oracle(oracle, data, world)
    name = "global_contrastive" if kind == "flava" else "contrastive"
    torch.testing.assert_close(losses[0][name], loss, atol=1e-5, rtol=1e-5)
    _close({k: v for k, v in grads[0].items() if k in ref}, ref, f"{kind} with dropout")
    torch.manual_seed(6 + rank)  # other draws give other gradients: the test sees the masks
    other = _oracle(oracle, data, world)[1]
    assert not torch.allclose(other["model.text_projection.weight"], ref["model.text_projection.weight"])


@pytest.mark.parametrize("kind", ["clip", "siglip", "flava"])
def test_accumulated_step_equals_the_big_batch_step_on_one_process(kind):
    _check_big_batch(kind, lambda m: m)
    _check_dropout(kind, lambda m: m)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two processes on a few cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        for strategy in ("ddp", "fsdp"):
            for kind in ("clip", "siglip", "flava"):

                def wrap(model, kind=kind, strategy=strategy):
                    if kind == "clip":
                        model.contrastive.rows_per_rank = B * K  # the recipes' padded gather, no host sync
                    unused = kind == "flava"  # its heads take no part
                    return parallelize(model, DistInfo(rank, 2), strategy, find_unused_parameters=unused)

                _check_big_batch(kind, wrap, rank, 2, steps=2)
                if strategy == "ddp":
                    _check_dropout(kind, wrap, rank, 2)
        torch.save("ok", os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_accumulated_step_equals_the_big_batch_step_on_two_ranks(tmp_path):
    """DDP and FSDP2 on 2 gloo ranks, every rank its own data, gathered with gradient."""
    spawn_ranks(_worker, (str(tmp_path / "init"), str(tmp_path)), 2)
    assert all((tmp_path / f"rank{r}.pt").exists() for r in range(2))


def test_flava_per_sample_objectives_accumulate_as_before():
    """Every objective on: ITM, MMM keep their per-micro-batch losses and gradients (plain accumulation with
    the contrastive weight 0), and the contrastive one adds the whole-batch gradient (two passes, alone)."""
    data = [_Batch(flava_batches(seed)["pair"]) for seed in range(K)]
    both, alone, rest = (
        flava_model(False, weights=w) for w in ({}, ONLY_CONTRASTIVE["weights"], {"global_contrastive": 0.0})
    )
    [losses], [grads], _ = _train(both, both, data, K, two_passes=True)
    [c_losses], [c_grads], _ = _train(alone, alone, data, K, two_passes=True)
    [r_losses], [r_grads], _ = _train(rest, rest, data, K, two_passes=False)
    assert set(losses) == {"global_contrastive", "itm", "mmm_image", "mmm_text", "total"}
    for name in ("itm", "mmm_image", "mmm_text"):
        torch.testing.assert_close(losses[name], r_losses[name], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(losses["global_contrastive"], c_losses["global_contrastive"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(losses["total"], r_losses["total"] + c_losses["total"], atol=1e-5, rtol=1e-5)
    assert "model.logit_scale" not in r_grads and "itm_head.classifier.weight" not in c_grads
    _close(grads, {n: r_grads.get(n, 0) + c_grads.get(n, 0) for n in grads}, "FLAVA gradients")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "checkpointing", "compile_layers"])
def test_precisions_activation_checkpointing_and_compiled_layers(precision):
    """bf16, fp16 (GradScaler); activation checkpointing (which recomputes the layers, dropout included) and
    compiled layers (a graph without autograd in the first pass, one with it in the second: the same draws)."""
    data = _data("clip", K, seed=3)
    model = _model("clip", dropout=precision in ("checkpointing", "compile_layers"))
    torch.manual_seed(1)
    if precision in ("checkpointing", "compile_layers"):
        compiled = {"compile": "layers", "compile_options": {"backend": "aot_eager"}}
        options = compiled if precision == "compile_layers" else {"activation_checkpointing": True}
        parallelize(model, DistInfo(), "none", **options)
        (losses,), (grads,), _ = _train(model, model, data, K, two_passes=True)
        oracle = _model("clip", dropout=True)
        parallelize(oracle, DistInfo(), "none", **options)
        torch.manual_seed(1)
        loss, ref = _oracle(oracle, data)
        torch.testing.assert_close(losses["contrastive"], loss, atol=1e-5, rtol=1e-5)
        return _close(grads, ref, precision)
    (losses,), (grads,), _ = _train(model, model, data, K, two_passes=True, precision=precision)
    (ref_losses,), (ref_grads,), _ = _train(_model("clip"), _model("clip"), [_cat(data)], 1, two_passes=False)
    torch.testing.assert_close(losses["contrastive"], ref_losses["contrastive"], atol=0.05, rtol=0.02)
    for name, g in ref_grads.items():  # fp32 leaves the towers' low-precision rounding only
        assert torch.linalg.vector_norm(grads[name] - g) <= 0.05 * torch.linalg.vector_norm(g) + 1e-4, name


def test_a_nonfinite_step_is_skipped():
    model = _model("clip")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    queue = iter(_data("clip", K, seed=4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = TrainStep(
        _ctx(nonfinite=(1,)),
        model,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1),
        StepOptions(grad_accum=K),
    )
    out = step(lambda: next(queue), whole_batch_forward(model, _plain), 1)
    assert out.finite is False
    _close(dict(model.named_parameters()), before, "skipped step")


def test_compile_step_is_refused_and_the_switch_is_frozen_on_resume():
    from mmkit.pretrain import RunConfig, frozen_fields
    from mmkit.train import check_resume_config
    from mmkit.utils import config_to_dict

    cfg = RunConfig(compile="step")
    cfg.optim.grad_accum = 4
    with pytest.raises(ValueError, match=r"compile=step with optim.grad_accum=4: .*contrastive_per_micro_batch=true"):
        whole_batch(cfg)
    cfg.optim.contrastive_per_micro_batch = True
    assert not whole_batch(cfg)  # plain accumulation compiles as before
    saved = config_to_dict(cfg)
    cfg.optim.contrastive_per_micro_batch = False
    with pytest.raises(ValueError, match="optim.contrastive_per_micro_batch: checkpoint True, config False"):
        check_resume_config(saved, config_to_dict(cfg), frozen_fields(cfg))
