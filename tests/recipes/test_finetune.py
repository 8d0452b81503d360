"""The finetuning recipe runs end to end and keeps its best checkpoint."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _recipe():
    spec = importlib.util.spec_from_file_location("flava_finetune_recipe", REPO / "recipes/flava/finetune.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_image_classification_on_a_folder(tmp_path, monkeypatch):
    from tests.data.conftest import png_bytes

    for split, n in (("train", 12), ("val", 6)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n // 2):
                (tmp_path / split / cls / f"{i}.png").write_bytes(png_bytes(i + (100 if cls == "b" else 0))[0])
    recipe = _recipe()
    run = tmp_path / "run"
    recipe.main(["--config", str(REPO / "recipes/flava/configs/finetune_shapes_color.yaml"), f"run_dir={run}",
                 "task=folder", f"train_path={tmp_path / 'train'}", f"val_path={tmp_path / 'val'}", "steps=4",
                 "eval_every=2", "batch_size=4", "head_hidden=8", "warmup_steps=1"])  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    assert results["metric"] == "accuracy" and [s for s, _ in results["history"]] == [2, 4]
    assert results["best"] == max(v for _, v in results["history"])
    assert (run / "best" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="metric must be one of"):
        recipe.load_config(None, ["metric=bleu"])
    with pytest.raises(ValueError, match="needs train_path and val_path"):
        r = recipe.FinetuneRecipe(recipe.load_config(None, ["task=folder"]))
        r._sources()


def test_metric_dispatch():
    import torch

    recipe = _recipe()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert recipe.compute_metric("accuracy", logits, labels) == pytest.approx(2 / 3)
    assert recipe.compute_metric("auroc", logits, labels) == pytest.approx(1.0)
