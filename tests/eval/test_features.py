"""Features computed once: a cache hit runs no forward pass, a changed model, transform or dataset misses;
unreadable images are skipped and named; loader workers give the single-process result in file order."""

from __future__ import annotations

import pytest
import torch

from mmkit.data import ImageTransform, ImageTransformConfig
from mmkit.eval.benchmarks import open_benchmark
from mmkit.eval.features import FeatureCache, image_features, model_digest, text_embeddings
from mmkit.models import FLAVAConfig, flava_model
from tests.eval import benchmark_files as bf


class Counting:
    """Counts the model's encoder calls."""

    def __init__(self, model):
        self.calls = 0
        for name in ("encode_image", "encode_text"):
            original = getattr(model, name)

            def counted(*a, _f=original, **k):
                self.calls += 1
                return _f(*a, **k)

            setattr(model, name, counted)


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    model = flava_model(FLAVAConfig.tiny()).eval()
    transform = ImageTransform(ImageTransformConfig(32, 0))
    data = open_benchmark("folder", bf.class_folders(tmp_path / "set", per_class=4), "val")
    return model, transform, data, FeatureCache(tmp_path / "cache")


def _extract(model, transform, data, cache, transform_id="t", **kw):
    return image_features(
        model, data, transform, transform_id=transform_id, cache=cache, batch_size=5, progress=False, **kw
    )


def test_a_hit_runs_no_forward_pass_and_a_change_misses(setup, tmp_path):
    model, transform, data, cache = setup
    counter = Counting(model)
    first = _extract(model, transform, data, cache)
    assert (
        counter.calls == 3 and first.features.shape == (12, 32) and first.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    )
    assert torch.allclose(first.embeddings.norm(dim=-1), torch.ones(12))
    counter.calls = 0
    again = _extract(model, transform, data, cache)
    assert counter.calls == 0 and cache.hits == 1
    assert torch.equal(again.features, first.features) and again.keys == first.keys
    _extract(model, transform, data, cache, transform_id="another transform")
    assert counter.calls == 3
    with torch.no_grad():
        model.image_projection.weight.add_(0.01)  # a changed checkpoint
    counter.calls = 0
    changed = _extract(model, transform, data, cache)
    assert counter.calls == 3 and not torch.equal(changed.embeddings, first.embeddings)
    # texts: cached by model, tokenizer and texts
    from tests.conftest import make_mmkit_export

    tok_dir = make_mmkit_export(tmp_path / "export", ["a red circle", "two blue squares"]) / "tokenizer"
    from mmkit.tokenizers import TextTokenizer

    tok = TextTokenizer.from_pretrained(tok_dir, max_length=16)
    counter.calls = 0
    a = text_embeddings(model, tok, ["a red circle", "blue"], cache=cache)
    b = text_embeddings(model, tok, ["a red circle", "blue"], cache=cache)
    assert counter.calls == 1 and torch.equal(a, b) and a.shape == (2, 32)
    assert model_digest(model) != model_digest(flava_model(FLAVAConfig.tiny()))


def test_unreadable_images_are_skipped_named_and_bounded(setup, tmp_path):
    model, transform, _, _ = setup
    (tmp_path / "set" / "val" / "n002" / "n002_1.png").write_bytes(b"\x89PNG broken")
    data = open_benchmark("folder", tmp_path / "set", "val")
    out = _extract(model, transform, data, None, max_bad_fraction=0.1)
    assert len(out.keys) == 11 and out.skipped[0][0] == "n002/n002_1.png" and "cannot decode image" in out.skipped[0][1]
    assert "n002/n002_1.png" not in out.keys and out.labels.tolist().count(1) == 3
    with pytest.raises(
        ValueError, match=r"1 of 12 images of folder .* could not be read, more than max_bad_fraction=0.05"
    ):
        _extract(model, transform, data, None, max_bad_fraction=0.05)


def test_workers_give_the_single_process_features_in_file_order(setup):
    model, transform, data, _ = setup
    one = _extract(model, transform, data, None)
    two = _extract(model, transform, data, None, num_workers=2)
    assert two.keys == one.keys and torch.allclose(two.features, one.features, atol=1e-6)
