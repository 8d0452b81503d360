import pytest
import torch

from mmkit.data import Batch, ImageCollator, PairCollator, TextCollator, pad_sequences
from mmkit.masking import BlockMaskGenerator, TokenMasker
from mmkit.models import FLAVAConfig, flava_model_for_pretraining

CLS, SEP, MASK = 101, 102, 103


def _samples(n=6, seed=0, tokens=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 4 + i % 3
        ids = torch.cat(
            [torch.tensor([CLS]), torch.randint(1000, 2000, (length - 2,), generator=g), torch.tensor([SEP])]
        )
        s = {"image": torch.randn(3, 32, 32, generator=g), "input_ids": ids}
        if tokens:
            s["image_tokens"] = torch.randint(0, 512, (16,), generator=g)
        else:
            s["codebook_image"] = torch.rand(3, 32, 32, generator=g) * 0.8 + 0.1
        out.append(s)
    return out


def _collators(seed=0):
    blocks = BlockMaskGenerator(grid_size=4, num_masking_patches=6, min_block=2)
    tokens = TokenMasker(30522, MASK, special_token_ids=[CLS, SEP], mask_prob=0.3)
    return (
        PairCollator(blocks, tokens, itm_negative_prob=0.5, seed=seed),
        ImageCollator(blocks, seed=seed),
        TextCollator(tokens, seed=seed),
    )


def test_pair_batch_holds_what_the_model_needs():
    pair, _, _ = _collators()
    samples = _samples()
    batch = pair(samples)
    assert batch.kind == "pair" and len(batch) == 6
    assert batch.pixel_values.shape == (6, 3, 32, 32) and batch.codebook_pixel_values.shape == (6, 3, 32, 32)
    assert batch.patch_mask.shape == (6, 16) and batch.patch_mask.dtype == torch.bool
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.mlm_labels.shape == (6, 6)
    # each row's caption is its own when matched and another sample's when not
    for i in range(6):
        text = batch.input_ids[i][batch.attention_mask[i].bool()]
        owners = [j for j, s in enumerate(samples) if torch.equal(s["input_ids"], text)]
        assert (i in owners) == bool(batch.itm_labels[i])
    chosen = batch.mlm_labels != -100
    assert torch.equal(batch.mlm_labels[chosen], batch.input_ids[chosen])
    assert not ((batch.input_ids == CLS) & chosen).any()


def test_batches_feed_the_pretraining_model():
    pair, image, text = _collators()
    model = flava_model_for_pretraining(FLAVAConfig.tiny()).eval()
    with torch.no_grad():
        for collate, kind in ((pair, "pair"), (image, "image"), (text, "text")):
            batch = collate(_samples())
            assert batch.kind == kind
            out = model(**batch.model_inputs())
            assert out.kind == kind and torch.isfinite(out.loss)
    batch = image(_samples(tokens=True))
    assert batch.image_token_ids.shape == (6, 16) and batch.codebook_pixel_values is None


def test_state_dict_resumes_the_random_stream():
    pair, _, _ = _collators(seed=3)
    pair(_samples())
    state = pair.state_dict()
    expected = pair(_samples(seed=1))
    fresh, _, _ = _collators(seed=3)
    fresh.load_state_dict(state)
    got = fresh(_samples(seed=1))
    for k, v in expected.model_inputs().items():
        assert torch.equal(v, getattr(got, k)), k
    other, _, _ = _collators(seed=4)
    with pytest.raises(ValueError, match="saved with seed 3"):
        other.load_state_dict(state)


def test_bad_samples_raise_clear_errors():
    _, image, text = _collators()
    samples = _samples()
    samples[2]["image"] = torch.randn(3, 16, 16)
    with pytest.raises(ValueError, match="'image' has different shapes in one batch"):
        image(samples)
    samples = _samples()
    del samples[1]["codebook_image"]
    with pytest.raises(KeyError, match="'codebook_image' .* or 'image_tokens'"):
        image(samples)
    with pytest.raises(ValueError, match="empty"):
        text([])
    with pytest.raises(ValueError, match="more than max_length=3"):
        pad_sequences([torch.arange(5)], 0, max_length=3)


def test_batch_moves_and_lists_its_inputs():
    batch = Batch(input_ids=torch.ones(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3))
    assert set(batch.model_inputs()) == {"input_ids", "attention_mask"}
    assert batch.to("cpu").input_ids.device.type == "cpu"


def test_a_fixed_text_length_pads_the_masks_an_unpadded_batch_draws():
    """``max_length`` (what a compiled step trains with) changes the padding only: the same samples get the
    same ITM negatives, patch masks and MLM masks, every text field padded on the right."""
    blocks = BlockMaskGenerator(grid_size=4, num_masking_patches=6, min_block=2)
    tokens = TokenMasker(30522, MASK, special_token_ids=[CLS, SEP], mask_prob=0.3)
    samples = _samples()
    for free, fixed in (
        (PairCollator(blocks, tokens, 0.5, seed=3), PairCollator(blocks, tokens, 0.5, 11, seed=3)),
        (TextCollator(tokens, seed=3), TextCollator(tokens, 11, seed=3)),
    ):
        a, b = free(samples), fixed(samples)
        length = a.masked_input_ids.shape[1]
        assert length < 11 and b.masked_input_ids.shape == b.mlm_labels.shape == b.attention_mask.shape == (6, 11)
        assert (a.mlm_labels != -100).any() and (a.input_ids is None) == (b.input_ids is None)
        for name, fill in (("input_ids", 0), ("attention_mask", 0), ("masked_input_ids", 0), ("mlm_labels", -100)):
            if getattr(a, name) is None:  # a text-only batch has no clean ids
                continue
            assert torch.equal(getattr(b, name)[:, :length], getattr(a, name)), name
            assert (getattr(b, name)[:, length:] == fill).all(), name
        for name in ("itm_labels", "patch_mask"):
            assert getattr(a, name) is None or torch.equal(getattr(b, name), getattr(a, name)), name
    with pytest.raises(ValueError, match=f"a caption has {length} tokens, more than max_length=3"):
        TextCollator(tokens, 3)(samples)
