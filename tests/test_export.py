"""``python -m mmkit.export onnx``: the ONNX encoders give mmkit's embeddings in onnxruntime, at any batch
size and text length, for FLAVA, CLIP and SigLIP checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmkit import export
from mmkit.data import pad_sequences
from mmkit.eval import eval_transform, load_encoders
from mmkit.models import CLIPConfig, SigLIPConfig, clip_model, save_dual_encoder_hf, siglip_model
from mmkit.tokenizers import train_wordpiece
from tests.conftest import make_mmkit_export, randomize_

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TEXTS = ["a red square", "a small blue circle on the left of a green triangle", "two things"]


def dual_encoder_dir(directory, kind: str):
    """A transformers CLIP or SigLIP directory (random weights) with a WordPiece ``tokenizer.json``; SigLIP's
    with its 0.5/0.5 ``preprocessor_config.json``."""
    corpus = directory.parent / f"{kind}-corpus.txt"
    corpus.write_text("\n".join(TEXTS))
    tok = train_wordpiece([corpus], 200, min_frequency=1)
    config = (
        (CLIPConfig if kind == "clip" else SigLIPConfig).tiny().for_tokenizer(tok.vocab_size, tok.token_id("[SEP]"), 16)
    )
    model = randomize_((clip_model if kind == "clip" else siglip_model)(config), seed=3)
    save_dual_encoder_hf(model, directory)
    tok.save(directory)
    if kind == "siglip":
        pre = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}
        (directory / "preprocessor_config.json").write_text(json.dumps(pre))
    return directory


@pytest.mark.parametrize("kind", ["flava", "clip", "siglip"])
def test_onnx_encoders_match_mmkit(tmp_path, kind, capsys):
    ckpt = tmp_path / kind
    make_mmkit_export(ckpt, TEXTS) if kind == "flava" else dual_encoder_dir(ckpt, kind)
    assert export.main(["onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "onnx")]) == 0
    model, tok = load_encoders(str(ckpt), log=lambda _: None)  # default (sdpa) attention: the reference
    out = tmp_path / "onnx"

    meta = json.loads((out / "preprocessing.json").read_text())
    transform = eval_transform(model, str(ckpt))[0].config
    assert (meta["image"]["image_size"], meta["image"]["mean"], meta["image"]["std"]) == (
        transform.image_size,
        list(transform.mean),
        list(transform.std),
    )
    if kind == "siglip":
        assert meta["image"]["mean"] == meta["image"]["std"] == [0.5] * 3  # its preprocessor_config.json
    assert (out / "tokenizer" / "tokenizer.json").is_file() and not (out / "tokenizer" / "model.safetensors").exists()

    # batch 3 and length 9 > the traced 2 x 5; rows 1 and 2 padded (mask 0)
    pixels = torch.randn(3, 3, meta["image"]["image_size"], meta["image"]["image_size"])
    ids, mask = pad_sequences([tok.encode(t).input_ids for t in TEXTS], tok.pad_token_id)
    assert ids.shape[1] > 5 and (mask == 0).any()
    image = ort.InferenceSession(str(out / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(out / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    got_image = torch.from_numpy(image.run(None, {"pixel_values": pixels.numpy()})[0])
    got_text = torch.from_numpy(text.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0])

    pad_to = model.config.text.max_positions if kind == "siglip" else None  # SigLIP: padded in the graph
    assert meta["text"]["pad_to"] == pad_to and meta["text"]["pad_token_id"] == tok.pad_token_id
    ref_ids, ref_mask = pad_sequences([tok.encode(t).input_ids for t in TEXTS], tok.pad_token_id, pad_to)
    with torch.no_grad():
        want_image = F.normalize(model.embed_image(model.encode_image(pixels)), dim=-1)
        want_text = F.normalize(model.embed_text(model.encode_text(ref_ids, ref_mask)), dim=-1)
    assert got_image.shape == want_image.shape and got_text.shape == want_text.shape
    torch.testing.assert_close(got_image, want_image, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_text, want_text, atol=1e-4, rtol=0)
    # one caption alone, unpadded, gives the same row as in the padded batch
    alone = tok.encode(TEXTS[2]).input_ids[None]
    row = text.run(None, {"input_ids": alone.numpy(), "attention_mask": torch.ones_like(alone).numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(row)[0], want_text[2], atol=1e-4, rtol=0)


def test_missing_onnx_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    real = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == "onnxscript" else real(name))
    ckpt = make_mmkit_export(tmp_path / "ckpt", TEXTS)
    assert export.main(["onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "mmkit[onnx]" in err and "onnxscript" in err and "\n" not in err
    assert not (tmp_path / "onnx").exists()
