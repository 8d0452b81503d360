"""FLAVA's objectives are a table: an added objective is one function, one head and one weight."""

import pytest
import torch
from torch import nn

from mmkit.losses import OBJECTIVES
from mmkit.models import FLAVA_OBJECTIVES, FLAVAConfig, Objective, flava_hf_unsupported, flava_model_for_pretraining
from mmkit.models.flava_objectives import PretrainingInputs, head_build_order, reporting_order, trains_on

B, L = 4, 7


def _batch(g):
    ids = torch.randint(5, 100, (B, L), generator=g)
    chosen = torch.rand(B, L, generator=g) < 0.3
    chosen[:, 1] = True
    return dict(
        pixel_values=torch.randn(B, 3, 32, 32, generator=g),
        patch_mask=torch.rand(B, 16, generator=g) < 0.4,
        input_ids=ids,
        masked_input_ids=torch.where(chosen, torch.full_like(ids, 3), ids),
        mlm_labels=torch.where(chosen, ids, torch.full_like(ids, -100)),
        attention_mask=torch.ones(B, L, dtype=torch.long),
        itm_labels=torch.tensor([1, 0, 1, 1]),
    )


def _toy(model, views):
    """Push the fusion encoder's [CLS_M] towards a scalar target of 3 through a one-unit head."""
    views.out.losses["toy"] = (model.toy_head(views.fused[:, 0]).float() - 3.0).pow(2).mean()


TOY = Objective("toy", _toy, needs={"fused"}, head=lambda cfg: nn.Linear(cfg.multimodal.hidden_size, 1))


def _config(**weights):
    return FLAVAConfig.tiny().replace(**{"pretraining.mim_target": "pixels", "pretraining.weights.extra": weights})


def test_a_toy_objective_is_one_function_one_head_one_weight_and_trains():
    torch.manual_seed(0)
    model = flava_model_for_pretraining(_config(toy=2.0), objectives=(*FLAVA_OBJECTIVES, TOY)).train()
    assert isinstance(model.toy_head, nn.Linear) and "toy_head.weight" in model.state_dict()
    g = torch.Generator().manual_seed(1)
    batch = _batch(g)
    out = model(**batch)
    assert set(out.losses) == {"global_contrastive", "itm", "mmm_image", "mmm_text", "toy"}
    weights = model.weights.as_dict()
    torch.testing.assert_close(out.loss, sum(weights[k] * v for k, v in out.losses.items()))
    # only the toy objective trains: its loss falls and its head (and the fusion encoder below it) move
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = model(**batch).losses["toy"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses
    # an image-only batch does not run it (it trains on pairs), nor does a weight of 0
    image = model(pixel_values=batch["pixel_values"], patch_mask=batch["patch_mask"])
    assert set(image.losses) == {"mim"}
    off = flava_model_for_pretraining(_config(toy=0.0), objectives=(*FLAVA_OBJECTIVES, TOY))
    assert "toy" not in off(**batch).losses


def test_the_same_six_give_the_same_losses_and_heads_as_before_adding_one():
    """Adding an objective changes nothing of the others: same initial heads, same losses."""
    torch.manual_seed(0)
    plain = flava_model_for_pretraining(_config()).eval()
    torch.manual_seed(0)
    toyed = flava_model_for_pretraining(_config(toy=1.0), objectives=(*FLAVA_OBJECTIVES, TOY)).eval()
    toy_state = toyed.state_dict()
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(toy_state[k], v, msg=k)
    g = torch.Generator().manual_seed(1)
    batch = _batch(g)
    a, b = plain(**batch), toyed(**batch)
    for k, v in a.losses.items():
        torch.testing.assert_close(b.losses[k], v, msg=k)


def test_mistakes_are_named():
    with pytest.raises(ValueError, match=r"objective 'toy' has no weight: set pretraining.weights.extra.toy"):
        flava_model_for_pretraining(_config(), objectives=(*FLAVA_OBJECTIVES, TOY))
    with pytest.raises(ValueError, match="unknown views, kinds, masks or side"):
        Objective("bad", _toy, needs={"fusion"})
    with pytest.raises(ValueError, match="names FLAVA's own objectives"):
        _config(mim=1.0)
    g = torch.Generator().manual_seed(1)
    batch = _batch(g)
    only_fusion = flava_model_for_pretraining(
        FLAVAConfig.tiny().replace(**{"pretraining.mim_target": "pixels", "pretraining.weights.mim": 0.0})
    )
    with pytest.raises(ValueError, match=r"no objective with a weight above 0 trains on image batches"):
        only_fusion(pixel_values=batch["pixel_values"], patch_mask=batch["patch_mask"])
    # transformers' FLAVA has no head for an added objective: the exporter says so from the config alone
    assert any("toy" in item for item in flava_hf_unsupported(_config(toy=1.0)))
    assert flava_hf_unsupported(_config()) == []


def test_the_table_names_orders_and_sides_the_objectives():
    """The table is where FLAVA's objectives are named: the weights' fields are its names, the losses come in
    its reporting order, the heads are built in its head order, and the masked ones predict their side."""
    assert {o.name for o in FLAVA_OBJECTIVES} == set(OBJECTIVES)
    assert reporting_order(FLAVA_OBJECTIVES) == list(OBJECTIVES)  # the weights' order, the logs' order
    assert [o.name for o in head_build_order((*FLAVA_OBJECTIVES, TOY))] == [
        "mim",
        "mlm",
        "mmm_image",
        "mmm_text",
        "itm",
        "toy",
    ]
    assert {o.name: o.side for o in FLAVA_OBJECTIVES if o.side} == {
        "mim": "image",
        "mmm_image": "image",
        "mlm": "text",
        "mmm_text": "text",
    }
    weights = FLAVAConfig.tiny(**{"pretraining.weights.mlm": 0.0}).pretraining.weights
    assert trains_on("image", weights) and not trains_on("text", weights)
    torch.manual_seed(0)
    model = flava_model_for_pretraining(_config(toy=1.0), objectives=(*FLAVA_OBJECTIVES, TOY)).eval()
    model.config.pretraining.unimodal_losses_on_pairs = True
    out = model(**_batch(torch.Generator().manual_seed(1)))
    assert list(out.losses) == [*OBJECTIVES, "toy"]


def test_a_batch_is_one_value_or_its_keywords():
    torch.manual_seed(0)
    model = flava_model_for_pretraining(_config()).eval()
    batch = _batch(torch.Generator().manual_seed(1))
    a, b = model(**batch), model(PretrainingInputs(**batch))
    assert a.kind == b.kind == "pair" and a.losses.keys() == b.losses.keys()
    for k, v in a.losses.items():
        torch.testing.assert_close(b.losses[k], v, msg=k)
    with pytest.raises(ValueError, match=r"unknown pretraining inputs \['pixels'\]"):
        model(pixels=batch["pixel_values"])
    with pytest.raises(ValueError, match="not both"):
        model(PretrainingInputs(**batch), input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="nor a Tensor"):
        model(batch["pixel_values"])
    with pytest.raises(ValueError, match="needs pixel_values, input_ids or both"):
        model(PretrainingInputs())


def test_the_runtime_sees_the_layers_and_the_gathering_loss():
    model = flava_model_for_pretraining(_config())
    units = model.shard_units()
    assert units == model.model.shard_units() and len(units) == 2 + 2 + 1  # the tiny encoders' layers
    assert model.gathering_losses() == [model.contrastive]
