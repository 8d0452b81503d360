"""The runtime asks the model (:class:`~mmkit.train.Parallelizable`) instead of guessing from names."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmkit.losses import ContrastiveLoss
from mmkit.models import CLIPConfig, SigLIPConfig, dual_encoder_for_pretraining
from mmkit.train import DistInfo, Parallelizable, checkpoint_units, parallelize
from mmkit.utils import InputError


class _Stack(nn.Module):
    """Two blocks and a gathering loss, declared through the protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)) for _ in range(2))
        self.loss = ContrastiveLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def shard_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def gathering_losses(self) -> list[nn.Module]:
        return [self.loss]


def test_a_model_without_the_protocol_is_refused_naming_the_methods_to_add():
    with pytest.raises(InputError, match=r"Sequential does not implement mmkit.train.Parallelizable") as info:
        parallelize(nn.Sequential(nn.Linear(2, 2)), DistInfo(), "none")
    assert "def shard_units(self) -> list[nn.Module]" in str(info.value)
    assert "def gathering_losses(self) -> list[nn.Module]" in str(info.value)
    assert isinstance(_Stack(), Parallelizable) and not isinstance(nn.Linear(2, 2), Parallelizable)


def test_compile_step_on_several_processes_asks_the_gathering_losses_for_rows_per_rank():
    with pytest.raises(InputError, match=r"set rows_per_rank .* on loss, so"):
        parallelize(_Stack(), DistInfo(world_size=2), "ddp", compile="step")


def test_checkpointed_units_keep_names_values_and_gradients_and_rebind_when_copied():
    torch.manual_seed(0)
    plain, x = _Stack().train(), torch.randn(3, 4)
    checkpointed = copy.deepcopy(plain)
    assert parallelize(checkpointed, DistInfo(), "none", activation_checkpointing=True) is checkpointed
    checkpoint_units(checkpointed.shard_units())  # a second call leaves the units as they are
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in checkpointed.named_parameters()]
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout draws; the recomputation replays them
        model(x).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    clone = copy.deepcopy(checkpointed).eval()
    assert clone.blocks[0].forward.__self__ is clone.blocks[0]  # the copy runs its own weights
    with torch.no_grad():
        clone.blocks[0][0].weight.zero_()
    assert not torch.equal(clone(x), checkpointed.eval()(x))


def test_dual_encoders_declare_their_layers_and_only_clips_loss_gathers():
    clip = dual_encoder_for_pretraining(CLIPConfig.tiny())
    siglip = dual_encoder_for_pretraining(SigLIPConfig.tiny())
    layers = [*clip.model.image_encoder.encoder.layers, *clip.model.text_encoder.encoder.layers]
    assert clip.shard_units() == layers and clip.model.gathering_losses() == []
    assert clip.gathering_losses() == [clip.contrastive] and siglip.gathering_losses() == []
