import pytest
import torch
import torch.nn.functional as F

from mmkit.heads import ITMHead, MaskedPredictionHead, masked_labels, select_masked
from mmkit.losses import FLAVALossWeights, FLAVAPretrainingLoss, masked_cross_entropy


def test_select_masked_keeps_labelled_positions_in_order():
    h = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)
    labels = torch.tensor([[-100, 7, -100], [5, -100, 9]])
    hs, ys = select_masked(h, labels)
    assert ys.tolist() == [7, 5, 9]
    assert torch.equal(hs, torch.stack([h[0, 1], h[1, 0], h[1, 2]]))
    with pytest.raises(ValueError, match="must match the first two dims"):
        select_masked(h, labels[:, :2])


def test_masked_labels_does_not_touch_its_input():
    ids = torch.tensor([[4, 5, 6]])
    out = masked_labels(ids, torch.tensor([[True, False, True]]))
    assert out.tolist() == [[4, -100, 6]] and ids.tolist() == [[4, 5, 6]]


def test_heads_compute_what_they_say():
    torch.manual_seed(0)
    head = MaskedPredictionHead(8, 11)
    x = torch.randn(5, 8)
    t = head.transform
    expected = F.linear(
        F.layer_norm(F.gelu(t.dense(x)), (8,), t.norm.weight, t.norm.bias, 1e-12),
        head.decoder.weight,
        head.decoder.bias,
    )
    torch.testing.assert_close(head(x), expected)
    itm = ITMHead(8)
    seq = torch.randn(3, 4, 8)
    torch.testing.assert_close(itm(seq), itm.classifier(torch.tanh(itm.pooler.dense(seq[:, 0]))))


def test_masked_cross_entropy_with_nothing_masked_is_zero_not_nan():
    logits = torch.randn(0, 7, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    logits = torch.randn(4, 7)
    labels = torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(masked_cross_entropy(logits, labels), F.cross_entropy(logits, labels))


def test_pretraining_loss_weights_and_errors():
    fn = FLAVAPretrainingLoss(FLAVALossWeights(mim=2.0, itm=0.5))
    total = fn({"mim": torch.tensor(1.0), "itm": torch.tensor(4.0), "mlm": torch.tensor(3.0)})
    assert total.item() == pytest.approx(2.0 + 2.0 + 3.0)
    with pytest.raises(ValueError, match="unknown objectives"):
        fn({"mim2": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="must be non-negative"):
        FLAVALossWeights(mlm=-1)
