"""FLAVA built on the meta device and materialised: the released size costs no memory until
materialised, and a materialised model follows the builders' initialisation rules tensor by tensor
(constants exactly, random tensors with the builder's std), with the frozen codebook loaded."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mmkit.models import FLAVAConfig, flava_model_for_pretraining, initialize_flava, materialize_flava
from mmkit.tokenizers import DalleEncoder
from tests.conftest import spawn_ranks

ALLOW_RANDOM = {"codebook.allow_random": True}


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _assert_same_rules(built: dict[str, torch.Tensor], materialised: dict[str, torch.Tensor]) -> int:
    """Every tensor: constants equal exactly, random ones with the same std (within sampling error).
    Returns how many tensors were compared as random draws."""
    assert built.keys() == materialised.keys()
    drawn = 0
    for name, a in built.items():
        b = materialised[name]
        assert b.shape == a.shape and b.dtype == a.dtype and b.device.type == "cpu", name
        if a.numel() == 1 or torch.all(a == a.flatten()[0]) or not a.is_floating_point():
            assert torch.equal(a, b), name
        elif a.numel() >= 256:
            drawn += 1
            ratio = (b.float().std() / a.float().std()).item()
            assert 0.8 < ratio < 1.25, (name, ratio)
    return drawn


def test_released_size_on_meta_costs_nothing_and_materialises():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = flava_model_for_pretraining(FLAVAConfig(), **ALLOW_RANDOM)
        oracle = transformers.FlavaForPreTraining(transformers.FlavaConfig())
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    assert sum(p.numel() for p in params) == sum(p.numel() for p in oracle.parameters())  # transformers' count
    torch.manual_seed(0)
    materialize_flava(model, "cpu")
    tensors = _tensors(model)
    assert not any(t.is_meta for t in tensors.values())
    layer = model.model.image_encoder.encoder.layers[0]
    assert layer.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.01)  # the released std at width 768
    assert torch.all(layer.norm1.weight == 1) and torch.all(layer.attn.qkv.bias == 0)
    assert torch.all(model.model.image_encoder.embeddings.cls_token == 0)
    assert model.model.logit_scale.item() == pytest.approx(FLAVAConfig().logit_scale_init)
    ids = model.model.text_encoder.embeddings.position_ids
    assert torch.equal(ids, torch.arange(ids.shape[1]).unsqueeze(0))
    assert not any(t.isnan().any() for t in tensors.values())


def test_materialised_tiny_model_follows_the_builders_rules(tmp_path):
    cfg = FLAVAConfig.tiny()
    cb = cfg.codebook
    torch.manual_seed(1)
    codebook = DalleEncoder(cb.hidden_size, cb.vocab_size, cb.num_groups, cb.blocks_per_group)
    save_file(codebook.state_dict(), str(tmp_path / "codebook.safetensors"))
    cfg = cfg.replace(**{"codebook.checkpoint": str(tmp_path / "codebook.safetensors")})
    torch.manual_seed(0)
    built = flava_model_for_pretraining(cfg)
    with torch.device("meta"):
        model = flava_model_for_pretraining(cfg)
    torch.manual_seed(0)
    materialize_flava(model)
    assert _assert_same_rules(_tensors(built), _tensors(model)) > 20
    for name, value in codebook.state_dict().items():  # the frozen codebook is the checkpoint's
        assert torch.equal(model.image_tokenizer.encoder.state_dict()[name], value), name
    assert not any(p.requires_grad for p in model.image_tokenizer.parameters())


def test_initialize_refuses_another_model():
    with pytest.raises(ValueError, match="takes a FLAVAModel or FLAVAForPreTraining"):
        initialize_flava(torch.nn.Linear(2, 2))


def _shard_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    with torch.device("meta"):
        model = flava_model_for_pretraining(FLAVAConfig.tiny(), **ALLOW_RANDOM)
    frozen = {p for p in model.parameters() if not p.requires_grad}
    for layer in [m for m in model.modules() if type(m).__name__ == "TransformerLayer"]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh, ignored_params=frozen)
    torch.manual_seed(0)
    materialize_flava(model, "cpu")
    trained = [p for p in model.parameters() if p.requires_grad]
    local = sum(p.to_local().numel() for p in trained if isinstance(p, DTensor))
    full = {n: p.full_tensor() if isinstance(p, DTensor) else p for n, p in model.named_parameters()}
    if rank == 0:
        torch.save({"local": local, "full": full}, f"{out_dir}/rank0.pt")
    else:
        torch.save({"local": local}, f"{out_dir}/rank1.pt")
    dist.destroy_process_group()


def test_fsdp2_shards_are_materialised_alone_by_the_same_rules(tmp_path):
    """Sharded on meta, each of two ranks gives storage to its shard only; gathered, the model follows
    the builders' rules (the padding row of the sharded word table zeroed too)."""

    spawn_ranks(_shard_worker, (2, str(tmp_path / "init"), str(tmp_path)), 2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.manual_seed(0)
    built = flava_model_for_pretraining(FLAVAConfig.tiny(), **ALLOW_RANDOM)
    trained = sum(p.numel() for p in built.parameters() if p.requires_grad)
    assert r0["local"] + r1["local"] == trained and max(r0["local"], r1["local"]) < 0.51 * trained
    gathered = {n: p.detach() for n, p in built.named_parameters()}
    mine = r0["full"]
    assert _assert_same_rules(gathered, {n: mine[n] for n in gathered}) > 20
    assert torch.all(mine["model.text_encoder.embeddings.word_embeddings.weight"][0] == 0)
