import pytest
import torch

from mmkit.eval import class_embeddings, zero_shot_logits


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
