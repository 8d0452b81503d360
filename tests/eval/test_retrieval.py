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
