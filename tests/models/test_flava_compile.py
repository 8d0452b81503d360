"""A whole FLAVA step compiles (``fullgraph=True``) for every batch kind once the model has static shapes, and
the static-shape objectives equal the default ones (losses, logits at the masked positions, gradients)."""

import pytest
import torch

from mmkit.masking import BlockMaskGenerator, TokenMasker
from mmkit.models import FLAVAConfig, flava_model_for_pretraining
from tests.conftest import randomize_

B, L, VOCAB = 4, 9, 120
KINDS = ("pair", "image", "text")


def _config(**pretraining):
    return FLAVAConfig.tiny(text={"vocab_size": VOCAB}, codebook={"vocab_size": 64}, pretraining=pretraining)


def _batches(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A paired batch (one ITM negative), an image-only and a text-only batch, as the collators make them."""
    g = torch.Generator().manual_seed(seed)
    masker = TokenMasker(VOCAB, mask_token_id=3, special_token_ids=[1, 2])

    def text():
        ids = torch.randint(5, VOCAB, (B, L), generator=g)
        mask = torch.ones(B, L, dtype=torch.long)
        mask[1, 6:], mask[3, 4:] = 0, 0
        ids[mask == 0] = 0
        masked, labels = masker(ids, mask, generator=g)
        return dict(input_ids=ids, attention_mask=mask, masked_input_ids=masked, mlm_labels=labels)

    def image():
        return dict(
            pixel_values=torch.randn(B, 3, 32, 32, generator=g),
            codebook_pixel_values=torch.rand(B, 3, 32, 32, generator=g) * 0.8 + 0.1,
            patch_mask=BlockMaskGenerator.flava(4).batch(B, generator=g),
        )

    text_only = text()
    del text_only["input_ids"]
    return {
        "pair": {**image(), **text(), "itm_labels": torch.tensor([1, 0, 1, 1])},
        "image": image(),
        "text": text_only,
    }


def _model(static: bool = False, **pretraining):
    torch.manual_seed(0)
    model = randomize_(flava_model_for_pretraining(_config(**pretraining))).train()
    return model.set_static_shapes(static)


def _step(model, batch):
    """Loss, per-objective losses and every trainable parameter's gradient of one forward and backward."""
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.trainable_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize(
    "options",
    [{}, {"unimodal_losses_on_pairs": True, "contrastive_matched_only": True}, {"mim_target": "pixels"}],
    ids=["default", "unimodal-on-pairs+matched-only", "pixel-mim"],
)
def test_static_shapes_equal_the_default_path(options):
    dynamic, static = _model(False, **options), _model(True, **options)
    for kind, batch in _batches().items():
        if options.get("mim_target") == "pixels":
            batch = {k: v for k, v in batch.items() if k != "codebook_pixel_values"}
        ref, ref_grads = _step(dynamic, batch)
        out, grads = _step(static, batch)
        assert set(out.losses) == set(ref.losses) and set(out.overflow) <= set(out.losses), kind
        for name, loss in ref.losses.items():
            torch.testing.assert_close(out.losses[name], loss, atol=1e-6, rtol=1e-6, msg=f"{kind} {name}")
            if name in out.overflow:  # a budget of K rows: the masked ones first, in the default order
                assert out.overflow[name].item() == 0
                labelled = out.labels[name] != -100 if out.labels[name].ndim == 1 else slice(len(ref.labels[name]))
                torch.testing.assert_close(out.logits[name][labelled], ref.logits[name], atol=1e-6, rtol=1e-6)
                torch.testing.assert_close(out.labels[name][labelled], ref.labels[name])
        torch.testing.assert_close(out.loss, ref.loss, atol=1e-6, rtol=1e-6)
        assert grads.keys() == ref_grads.keys()
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-5, msg=f"{kind} grad {name}")


def test_a_budget_too_small_drops_the_excess_and_counts_it():
    batch = _batches()["text"]
    labels = batch["mlm_labels"]
    masked = int((labels != -100).sum())
    model = _model(True).set_static_shapes(text_budget=(masked - 2) / labels.numel())
    out = model(**batch)
    assert out.overflow["mlm"].item() == 2 and out.logits["mlm"].shape == (masked - 2, VOCAB)
    kept = labels.flatten()[labels.flatten() != -100][: masked - 2]  # the first ones, row-major
    torch.testing.assert_close(out.labels["mlm"], kept)
    expected = torch.nn.functional.cross_entropy(out.logits["mlm"], kept)
    torch.testing.assert_close(out.losses["mlm"], expected)
    with pytest.raises(ValueError, match=r"fraction of the positions in \(0, 1\]"):
        model.set_static_shapes(image_budget=0.0)


@pytest.fixture(scope="module")
def compiled():
    """One static-shape model and its compiled forward (aot_eager: Dynamo's whole-graph capture and
    AOTAutograd's joint forward/backward, without Inductor's slow C++ build on CPU)."""
    model = _model(True)
    return model, torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager")


def test_every_batch_kind_compiles_whole_and_agrees_with_eager(compiled):
    model, step = compiled
    for kind, batch in _batches().items():
        ref, ref_grads = _step(model, batch)
        out, grads = _step(step, batch)  # fullgraph=True: a graph break would raise here
        assert out.kind == kind and set(out.losses) == set(ref.losses)
        for name, loss in ref.losses.items():
            torch.testing.assert_close(out.losses[name], loss, atol=1e-5, rtol=1e-5, msg=f"{kind} {name}")
        assert grads.keys() == ref_grads.keys() and grads
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-5, msg=f"{kind} grad {name}")
    # another draw of masks and negatives reuses the three graphs (static shapes: no recompilation)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch in _batches(seed=1).values():
            step(**batch).loss.backward()


def test_inductor_compiles_a_text_step_that_agrees_with_eager():
    """Inductor's own code for the smallest kind (the C++ build takes ~10 s here; the others take longer)."""
    model = _model(True)
    batch = _batches()["text"]
    ref, ref_grads = _step(model, batch)
    out, grads = _step(torch.compile(model, fullgraph=True, dynamic=False), batch)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-5, rtol=1e-5, msg=name)


def test_parallelize_compile_modes():
    from mmkit.train import DistInfo, parallelize

    model = _model(False)
    names = [n for n, _ in model.named_parameters()]
    assert parallelize(model, DistInfo(), compile="step") is model  # compiled in place: the same names
    assert model.static_shapes and model._compiled_call_impl is not None
    assert [n for n, _ in model.named_parameters()] == names
    layered = parallelize(_model(False), DistInfo(), compile=True)  # the old bool: layers
    assert not layered.static_shapes and layered._compiled_call_impl is None
    assert all(m._compiled_call_impl is not None for m in layered.modules() if type(m).__name__ == "TransformerLayer")
    with pytest.raises(ValueError, match="compile must be one of none, layers, step, got 'all'"):
        parallelize(_model(False), DistInfo(), compile="all")
    with pytest.raises(ValueError, match="compile='step' on 2 processes: set rows_per_rank .* on contrastive, so"):
        parallelize(_model(False), DistInfo(world_size=2), "ddp", compile="step")  # refused before any wrapping
