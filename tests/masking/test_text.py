import pytest
import torch

from mmkit.masking import TokenMasker, itm_negatives

CLS, SEP, PAD, MASK = 101, 102, 0, 103


def _batch(b=400, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    lengths = torch.randint(5, length + 1, (b,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, n - 1] = CLS, SEP
        ids[i, n:], mask[i, n:] = PAD, 0
    return ids, mask


def _masker(**kw):
    return TokenMasker(vocab_size=5000, mask_token_id=MASK, special_token_ids=[CLS, SEP], pad_token_id=PAD, **kw)


def test_rates_and_the_80_10_10_split():
    ids, mask = _batch()
    original = ids.clone()
    masked, labels = _masker()(ids, mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ids, original)  # input untouched
    eligible = (mask == 1) & (ids != CLS) & (ids != SEP)
    chosen = labels != -100
    assert not (chosen & ~eligible).any()  # specials and padding never chosen
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen])
    became_mask = (masked == MASK) & chosen
    changed = (masked != ids) & chosen & ~became_mask
    assert abs(became_mask.sum() / chosen.sum() - 0.8) < 0.02
    assert abs(changed.sum() / chosen.sum() - 0.1) < 0.02  # random (a random id may equal the original: ~0)
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert not torch.isin(masked[changed], torch.tensor([CLS, SEP, PAD, MASK])).any()


def test_whole_word_masking_takes_whole_words():
    ids, mask = _batch(b=200, length=30)
    word_ids = torch.arange(30).div(3, rounding_mode="floor").expand(200, 30)  # 3 pieces per word
    _, labels = _masker()(ids, mask, word_ids=word_ids, generator=torch.Generator().manual_seed(1))
    chosen = labels != -100
    eligible = (mask == 1) & (ids != CLS) & (ids != SEP)
    for b in range(200):
        for w in range(10):
            span = slice(3 * w, 3 * w + 3)
            picked = chosen[b, span][eligible[b, span]]
            assert picked.all() or not picked.any()
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.02


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="mask_prob"):
        _masker(mask_prob=1.5)
    with pytest.raises(ValueError, match="sum to at most 1"):
        _masker(mask_replace_prob=0.8, random_replace_prob=0.3)
    with pytest.raises(ValueError, match=r"input_ids must be \(B, L\)"):
        _masker()(torch.zeros(5, dtype=torch.long))


def test_itm_negatives_never_pair_a_sample_with_itself():
    g = torch.Generator().manual_seed(0)
    swaps = total = 0
    for _ in range(300):
        index, labels = itm_negatives(8, prob=0.3, generator=g)
        arange = torch.arange(8)
        assert torch.equal(labels == 1, index == arange)
        swaps += int((labels == 0).sum())
        total += 8
    assert abs(swaps / total - 0.3) < 0.03
    index, labels = itm_negatives(1, prob=1.0)
    assert index.tolist() == [0] and labels.tolist() == [1]
    assert itm_negatives(4, prob=1.0)[1].sum() == 0
