import pytest
import torch

from mmkit.tokenizers import (
    DalleEncoder,
    ImageTokenizer,
    dalle_encoder_from_checkpoint,
    dalle_from_hf,
    dalle_preprocess,
    dalle_to_hf,
)
from mmkit.utils import CheckpointMismatchError
from tests.conftest import hf_tiny_config, randomize_


@pytest.fixture
def hf_codebook():
    from transformers import FlavaImageCodebook, FlavaImageCodebookConfig

    torch.manual_seed(0)
    model = FlavaImageCodebook(FlavaImageCodebookConfig(hidden_size=16, vocab_size=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def _pixels(n=3, size=32, seed=0):
    return dalle_preprocess(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_transformers_codebook(hf_codebook, channels_last):
    enc = DalleEncoder(hidden_size=16, vocab_size=64)
    enc.load_state_dict(dalle_from_hf(hf_codebook.state_dict()))
    tok = ImageTokenizer(enc, channels_last=channels_last)
    x = _pixels()
    with torch.no_grad():
        ref_logits = hf_codebook(x)
        ref_ids = hf_codebook.get_codebook_indices(x)
    torch.testing.assert_close(tok.logits(x), ref_logits, atol=1e-4, rtol=0)
    assert torch.equal(tok(x), ref_ids.flatten(1))
    assert tok(x).shape == (3, 16)


def test_key_maps_round_trip(hf_codebook):
    sd = hf_codebook.state_dict()
    back = dalle_to_hf(dalle_from_hf(sd))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    # FlavaForPreTraining keeps the codebook under image_codebook.
    ours = dalle_from_hf(sd)
    prefixed = dalle_to_hf(ours, prefix="image_codebook.")
    assert all(k.startswith("image_codebook.blocks.") for k in prefixed)
    assert dalle_from_hf(prefixed).keys() == ours.keys()
    assert dalle_from_hf(ours).keys() == ours.keys()  # our names pass through
    with pytest.raises(CheckpointMismatchError, match="not_a_conv.weight"):
        dalle_to_hf({**ours, "not_a_conv.weight": torch.zeros(1)})


def test_frozen_and_stays_in_eval():
    tok = ImageTokenizer(DalleEncoder(hidden_size=8, vocab_size=32))
    parent = torch.nn.Sequential(tok)
    parent.train()
    assert not tok.training and not tok.encoder.training
    assert all(not p.requires_grad for p in tok.parameters())
    x = _pixels(size=16).requires_grad_()
    assert not tok.logits(x).requires_grad


def test_released_size():
    with torch.device("meta"):
        enc = DalleEncoder()
    assert round(sum(p.numel() for p in enc.parameters()) / 1e6, 1) == 53.8
    assert enc.downsample == 8


def test_preprocess_range():
    x = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(dalle_preprocess(x), torch.tensor([0.1, 0.5, 0.9]))


def test_loads_transformers_directories(tmp_path, hf_codebook):
    from transformers import FlavaForPreTraining

    hf_codebook.save_pretrained(tmp_path / "codebook")
    enc = dalle_encoder_from_checkpoint(tmp_path / "codebook")
    assert (enc.hidden_size, enc.vocab_size) == (16, 64)
    x = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), hf_codebook(x), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    pre = randomize_(FlavaForPreTraining(hf_tiny_config())).eval()
    pre.save_pretrained(tmp_path / "pretraining")
    enc = dalle_encoder_from_checkpoint(tmp_path / "pretraining")
    with torch.no_grad():
        torch.testing.assert_close(enc(x), pre.image_codebook(x), atol=1e-5, rtol=0)


def test_loads_original_dalle_names(tmp_path, hf_codebook):
    ours = dalle_from_hf(hf_codebook.state_dict())
    original = {}
    for k, v in ours.items():  # DALL-E's own layout: blocks.<name>.w / .b
        original[
            "blocks." + k.removesuffix(".weight").removesuffix(".bias") + (".w" if k.endswith("weight") else ".b")
        ] = v
    assert "blocks.group_2.block_1.res_path.conv_1.w" in original
    torch.save(original, tmp_path / "encoder.pt")
    enc = dalle_encoder_from_checkpoint(tmp_path / "encoder.pt")
    x = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(enc(x), hf_codebook(x), atol=1e-5, rtol=0)


def test_bad_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dalle_encoder_from_checkpoint(tmp_path / "missing.pt")
    torch.save({"foo.w": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(KeyError, match="not a DALL-E encoder state dict"):
        dalle_encoder_from_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"pixels must be \(B, 3, H, W\)"):
        DalleEncoder(hidden_size=8, vocab_size=16)(torch.zeros(1, 1, 16, 16))


def test_tokenizer_ignores_the_training_loops_autocast():
    """Ids are targets: under bf16 autocast they must equal the fp32 ids (what the cache CLI writes)."""
    from mmkit.tokenizers import DalleEncoder, ImageTokenizer

    torch.manual_seed(0)
    tok = ImageTokenizer(DalleEncoder(hidden_size=8, vocab_size=64, num_groups=3, blocks_per_group=1))
    x = torch.rand(4, 3, 16, 16) * 0.8 + 0.1
    ref = tok(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tok.logits(x).dtype == torch.float32
        assert torch.equal(tok(x), ref)
