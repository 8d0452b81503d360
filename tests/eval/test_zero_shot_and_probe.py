import pytest
import torch

from mmkit.eval import class_embeddings, linear_probe, zero_shot_logits


def test_prompt_ensemble_is_the_normalised_mean():
    table = {"a photo of cat.": [1.0, 0.0], "cat": [0.0, 2.0], "a photo of dog.": [0.0, -1.0], "dog": [-3.0, 0.0]}

    def embed(texts):
        return torch.tensor([table[t] for t in texts])

    emb = class_embeddings(["cat", "dog"], embed, templates=("a photo of {}.", "{}"))
    s = 0.5**0.5
    torch.testing.assert_close(emb, torch.tensor([[s, s], [-s, -s]]))
    logits = zero_shot_logits(torch.tensor([[2.0, 2.1], [-1.0, -0.5]]), emb)
    assert logits.argmax(1).tolist() == [0, 1]
    with pytest.raises(ValueError, match="exactly one"):
        class_embeddings(["cat"], embed, templates=("no slot",))


def test_linear_probe_sweeps_and_separates():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 3
    y = torch.randint(0, 3, (300,), generator=g)
    x = centers[y] + torch.randn(300, 8, generator=g)
    out = linear_probe(x[:200], y[:200], x[200:], y[200:], weight_decays=(1e-4, 10.0))
    assert set(out["sweep"]) == {1e-4, 10.0}
    assert out["val_accuracy"] == max(out["sweep"].values()) > 0.9
    assert out["weight"].shape == (3, 8)
    chance = linear_probe(torch.randn(200, 8, generator=g), y[:200], torch.randn(100, 8, generator=g), y[200:])
    assert chance["val_accuracy"] < 0.6
