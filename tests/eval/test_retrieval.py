import pytest
import torch

from mmkit.eval import retrieval_recall


def test_recall_matches_hand_computation():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    txt = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.9, 1.0]])
    # cosine sims: image 0 best matches text 1 (1.0) before its own text 0 (0.995): rank 1
    r = retrieval_recall(img, txt, ks=(1, 2))
    sim = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T
    ranks_i2t = [(sim[i] > sim[i, i]).sum().item() for i in range(3)]
    ranks_t2i = [(sim[:, i] > sim[i, i]).sum().item() for i in range(3)]
    assert r["image_to_text_r1"] == pytest.approx(sum(k < 1 for k in ranks_i2t) / 3)
    assert r["text_to_image_r2"] == pytest.approx(sum(k < 2 for k in ranks_t2i) / 3)
    assert ranks_i2t[0] == 1
    perfect = retrieval_recall(torch.eye(4), torch.eye(4) * 3, ks=(1,))
    assert perfect == {"image_to_text_r1": 1.0, "text_to_image_r1": 1.0}
    with pytest.raises(ValueError, match="image vs"):
        retrieval_recall(torch.eye(3), torch.eye(4))


def _brute_force(img, txt, owner, ks):
    """The protocol written out: top-k lists with ties in the query's favour, loops only."""
    img = torch.nn.functional.normalize(img.float(), dim=-1)
    txt = torch.nn.functional.normalize(txt.float(), dim=-1)
    sim = (img @ txt.T).tolist()
    n, m = len(sim), len(sim[0])
    out = {}
    for k in ks:
        hits = 0
        for i in range(n):
            # caption c is in image i's top k when fewer than k texts score strictly higher than it
            hits += any(sum(sim[i][t] > sim[i][c] for t in range(m)) < k for c in range(m) if owner[c] == i)
        out[f"image_to_text_r{k}"] = hits / n
        hits = 0
        for c in range(m):
            hits += sum(sim[j][c] > sim[owner[c]][c] for j in range(n)) < k
        out[f"text_to_image_r{k}"] = hits / m
    return out


def test_multi_caption_retrieval_equals_the_brute_force_protocol_with_ties():
    from mmkit.eval import multi_caption_retrieval

    g = torch.Generator().manual_seed(0)
    n, per = 12, 5
    owner = torch.arange(n).repeat_interleave(per)
    owner = owner[torch.randperm(len(owner), generator=g)]  # captions in any order
    owner = torch.cat([owner, torch.tensor([3, 3])])  # some images have more captions
    # coarse embeddings: many exact ties between scores
    img = torch.randint(-1, 2, (n, 3), generator=g).float() + 0.01
    txt = img[owner] + torch.randint(-1, 2, (len(owner), 3), generator=g).float()
    ks = (1, 2, 5, 10)
    got = multi_caption_retrieval(img, txt, owner, ks=ks, chunk=5)
    want = _brute_force(img, txt, owner.tolist(), ks)
    assert got == pytest.approx(want, abs=1e-6)
    assert 0 < got["image_to_text_r1"] < 1 and 0 < got["text_to_image_r1"] < 1
    # one caption per image in order: the same as retrieval_recall
    a, b = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    assert multi_caption_retrieval(a, b, torch.arange(20)) == pytest.approx(retrieval_recall(a, b))


def test_multi_caption_retrieval_names_bad_input():
    from mmkit.eval import multi_caption_retrieval

    with pytest.raises(ValueError, match=r"1 image\(s\) have no caption \(e.g. indices \[2\]\)"):
        multi_caption_retrieval(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"image indices in \[0, 3\)"):
        multi_caption_retrieval(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="2 entries for 3 texts"):
        multi_caption_retrieval(torch.eye(3), torch.eye(3), torch.tensor([0, 1]))
