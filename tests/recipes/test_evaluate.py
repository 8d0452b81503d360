"""The evaluation recipe on the user's own data: zero-shot, retrieval and linear probe, checked against
the same numbers computed directly from the library functions."""

import io
import json
import re
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
    from mmkit.data import ImageFolder, ImageTransform, ImageTransformConfig, Manifest, pad_sequences
    from mmkit.data.sources import decode_image
    from mmkit.eval import class_embeddings, retrieval_recall, zero_shot_logits
    from mmkit.models import flava_model_for_classification
    from mmkit.tokenizers import TextTokenizer

    out = data / "eval.json"
    (data / "eval.yaml").write_text(
        f"checkpoint: {data / 'ckpt'}\ntasks: zero_shot,retrieval,linear_probe\n"
        f"images: {data / 'val'}\ntrain_images: {data / 'train'}\n"
    )
    assert (
        _recipe().main(
            [
                "--config",
                str(data / "eval.yaml"),
                f"pairs={data / 'pairs.jsonl'}",
                f"templates={data / 'templates.txt'}",
                f"out={out}",
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())
    assert "retrieval/image_to_text_r10" in got and "retrieval/text_to_image_r1" in capsys.readouterr().out

    # the oracle: the same model, data and templates through the library functions directly
    flava = flava_model_for_classification(2, "image", checkpoint=data / "ckpt", hidden_dim=8).eval().model
    tok = TextTokenizer.from_pretrained(data / "ckpt" / "tokenizer")
    transform = ImageTransform(ImageTransformConfig(32, 0))

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


def test_clear_errors(data, capsys):
    recipe, ckpt = _recipe(), f"checkpoint={data / 'ckpt'}"
    cases = [
        ([ckpt, "tasks=zero_shot"], "this task needs images="),
        ([ckpt, "tasks=zero_shot:colour"], "unknown built-in task 'colour'"),
        ([ckpt, "tasks=probe"], "unknown task 'probe'"),
        ([ckpt, "samples=0"], "samples: must be >= 1, got 0"),
        ([ckpt, "model_config=x.json"], "model_config is for a randomly initialised model"),
        ([f"checkpoint={data / 'nowhere'}"], "does not exist"),
        ([ckpt, f"tokenizer={data / 'no-tokenizer'}"], "tokenizer .*no-tokenizer does not exist"),
        (["tasks=retrieval"], "text tasks need a tokenizer"),  # a random model has none
    ]
    for argv, message in cases:
        assert recipe.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert re.search(message, err[0]), (argv, err[0])


def test_a_transformers_directory_with_its_vocabulary_is_evaluated_like_its_conversion(tmp_path):
    """A transformers FlavaForPreTraining directory (weights, config.json and vocab.txt side by side)
    gives the same retrieval numbers as its converted mmkit export evaluated with the same vocabulary."""
    from transformers import FlavaForPreTraining

    from mmkit.models import load_flava
    from mmkit.tokenizers import train_wordpiece
    from tests.conftest import hf_tiny_config, randomize_

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a red circle\ntwo blue squares\nthree green triangles\n")
    tok = train_wordpiece([corpus], 200, min_frequency=1)
    config = hf_tiny_config()
    config.text_config.vocab_size = tok.vocab_size
    hf = randomize_(FlavaForPreTraining(config)).eval()
    hf.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf")  # vocab.txt beside the weights, as on the hub
    converted = load_flava(tmp_path / "hf", pretraining=True)
    export = make_mmkit_export(tmp_path / "mm", ["unused"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in converted.state_dict().items()}, str(export / "model.safetensors"))
    (export / "config.json").write_text(json.dumps(converted.config.to_dict()))
    tok.save(export / "tokenizer")
    results = {}
    for name, path in (("hf", tmp_path / "hf"), ("mm", export)):
        out = tmp_path / f"{name}.json"
        assert _recipe().main([f"checkpoint={path}", "tasks=retrieval", "samples=40", f"out={out}"]) == 0
        results[name] = json.loads(out.read_text())
    for k in results["hf"]:
        if k.startswith("retrieval/"):
            assert results["hf"][k] == pytest.approx(results["mm"][k], abs=1e-6), k
