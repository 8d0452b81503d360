import json

import pytest
import torch

from mmkit.models import FLAVAConfig, flava_model_for_pretraining
from mmkit.train import (
    MetricsLogger,
    OptimConfig,
    adamw_param_groups,
    build_optimizer,
    plot_run,
    summarize_run,
    warmup_cosine,
)


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)  # half-way through the cosine
    assert warmup_cosine(110, 10, 110) == pytest.approx(0.0)
    assert warmup_cosine(500, 10, 110, min_ratio=0.1) == pytest.approx(0.1)


def test_param_groups_exclude_frozen_and_no_decay():
    model = flava_model_for_pretraining(FLAVAConfig.tiny())
    decay, rest = adamw_param_groups(model, 0.1)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    named = dict(model.named_parameters())
    assert id(named["model.logit_scale"]) in ids(rest["params"])
    assert id(named["model.text_encoder.embeddings.word_embeddings.weight"]) in ids(rest["params"])
    assert id(named["model.image_encoder.encoder.layers.0.attn.qkv.weight"]) in ids(decay["params"])
    frozen = {id(p) for n, p in named.items() if n.startswith("image_tokenizer.")}
    assert not (frozen & (ids(decay["params"]) | ids(rest["params"])))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in decay["params"] + rest["params"]) == trainable
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0


def test_metrics_jsonl_plot_and_summary(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(1, 6):
        log.log(step, {"loss/total": 5 - step, "loss/mlm": 3 - step / 2, "lr": 0.1})
    log.log(5, {"loss/mlm": 0.4, "retrieval/image_to_text_r1": 0.3}, split="eval")
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0] == {"step": 1, "split": "train", "loss/total": 4.0, "loss/mlm": 2.5, "lr": 0.1}
    assert plot_run(tmp_path).stat().st_size > 1000
    summary = summarize_run(tmp_path)
    assert "loss/mlm" in summary and "2.5000 ->     0.5000" in summary
    MetricsLogger(tmp_path / "other", enabled=False).log(1, {"x": 1.0})
    assert not (tmp_path / "other").exists()
    with pytest.raises(FileNotFoundError, match="is .* a run directory"):
        plot_run(tmp_path / "missing")


def test_fused_adamw_makes_the_default_update():
    """``optim.fused`` swaps the kernel, not the update: three steps of both agree to rounding."""
    params, initial = {}, None
    for fused in (False, True):
        torch.manual_seed(0)
        model = flava_model_for_pretraining(FLAVAConfig.tiny())
        initial = initial or {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer, _ = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1, fused=fused))
        assert optimizer.defaults["fused"] is (True if fused else None)
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            for p in (p for group in optimizer.param_groups for p in group["params"]):
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()
        params[fused] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, p in params[False].items():
        torch.testing.assert_close(params[True][name], p, atol=1e-6, rtol=1e-5, msg=name)
    assert sum(not torch.equal(p, initial[n]) for n, p in params[True].items()) > 100  # the steps moved them
