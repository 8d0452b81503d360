"""The evaluation recipe on the user's own data: zero-shot, retrieval and linear probe, checked against
the same numbers computed directly from the library functions."""

import io
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import load_recipe, make_mmkit_export

REPO = Path(__file__).resolve().parents[2]


def _recipe():
    return load_recipe("recipes/flava/evaluate.py")


def _png(rgb, seed):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(32, 32, 3, generator=g) * 40).to(torch.uint8)
    pixels = (torch.tensor(rgb, dtype=torch.uint8) * 0.8).to(torch.uint8) + noise
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buf, format="PNG")
    return buf.getvalue()


CLASSES = {"red_ball": (250, 10, 10), "blue_box": (10, 10, 250)}


@pytest.fixture
def data(tmp_path):
    rows = []
    for split, n in (("train", 12), ("val", 6)):
        for cls, rgb in CLASSES.items():
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                (tmp_path / split / cls / f"{i}.png").write_bytes(_png(rgb, hash((split, cls, i)) % 1000))
                if split == "val":
                    rows.append({"image": f"val/{cls}/{i}.png", "caption": f"a {cls.replace('_', ' ')} number {i}"})
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "templates.txt").write_text("a photo of a {}.\n{}\n")
    texts = [r["caption"] for r in rows] + ["a photo of a red ball.", "a photo of a blue box."]
    make_mmkit_export(tmp_path / "ckpt", texts)
    return tmp_path


def test_user_data_zero_shot_retrieval_and_linear_probe(data, capsys):
    from mmkit.data import FLAVAImageTransform, ImageFolder, ImageTransformConfig, Manifest, pad_sequences
    from mmkit.data.sources import decode_image
    from mmkit.eval import class_embeddings, retrieval_recall, zero_shot_logits
    from mmkit.models import flava_model_for_classification
    from mmkit.tokenizers import TextTokenizer

    out = data / "eval.json"
    _recipe().main(["--checkpoint", str(data / "ckpt"), "--tasks", "zero_shot,retrieval,linear_probe",
                    "--images", str(data / "val"), "--train-images", str(data / "train"),
                    "--pairs", str(data / "pairs.jsonl"), "--templates", str(data / "templates.txt"),
                    "--out", str(out)])  # fmt: skip
    got = json.loads(out.read_text())
    assert "retrieval/image_to_text_r10" in got and "retrieval/text_to_image_r1" in capsys.readouterr().out

    # the oracle: the same model, data and templates through the library functions directly
    flava = flava_model_for_classification(2, "image", checkpoint=data / "ckpt", hidden_dim=8).eval().model
    tok = TextTokenizer.from_pretrained(data / "ckpt" / "tokenizer")
    transform = FLAVAImageTransform(ImageTransformConfig(32, 0))

    def embed_texts(texts):
        ids, mask = pad_sequences([tok.encode(t).input_ids for t in texts], tok.pad_token_id)
        return flava.embed_text(flava.encode_text(ids, mask))

    def embed_images(source):
        px = torch.stack([transform(decode_image(source[i]))["image"] for i in range(len(source))])
        return torch.nn.functional.normalize(flava.image_projection(flava.encode_image(px).last_hidden_state[:, 0]))

    with torch.no_grad():
        pairs = Manifest(data / "pairs.jsonl")
        recall = retrieval_recall(embed_images(pairs), embed_texts([pairs[i].text for i in range(len(pairs))]))
        folder = ImageFolder(data / "val", labels=True)
        classes = class_embeddings(["red ball", "blue box"], embed_texts, ["a photo of a {}.", "{}"])
        labels = torch.tensor([folder[i].label for i in range(len(folder))])
        zero_shot = (zero_shot_logits(embed_images(folder), classes).argmax(1) == labels).float().mean().item()
    for k, v in recall.items():
        assert got[f"retrieval/{k}"] == pytest.approx(v, abs=1e-6), k
    assert got["zero_shot"] == pytest.approx(zero_shot, abs=1e-6) and got["zero_shot/chance"] == 0.5
    assert got["linear_probe"] >= 0.9  # red vs blue pictures are linearly separable even in random features


def test_clear_errors(data):
    recipe = _recipe()
    with pytest.raises(ValueError, match="needs --images"):
        recipe.main(["--checkpoint", str(data / "ckpt"), "--tasks", "zero_shot"])
    with pytest.raises(ValueError, match="unknown built-in task 'colour'"):
        recipe.main(["--checkpoint", str(data / "ckpt"), "--tasks", "zero_shot:colour"])
    with pytest.raises(ValueError, match="unknown task 'probe'"):
        recipe.main(["--checkpoint", str(data / "ckpt"), "--tasks", "probe"])
