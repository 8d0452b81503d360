"""The finetuning recipe runs end to end and keeps its best checkpoint."""

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_recipe

REPO = Path(__file__).resolve().parents[2]


def _recipe():
    return load_recipe("recipes/flava/finetune.py")


def test_image_classification_on_a_folder(tmp_path, monkeypatch):
    from tests.data.conftest import png_bytes

    for split, n in (("train", 12), ("val", 6)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n // 2):
                (tmp_path / split / cls / f"{i}.png").write_bytes(png_bytes(i + (100 if cls == "b" else 0))[0])
    recipe = _recipe()
    run = tmp_path / "run"
    recipe.main(
        [
            "--config",
            str(REPO / "recipes/flava/configs/finetune_shapes_color.yaml"),
            f"run_dir={run}",
            "task=folder",
            f"train_path={tmp_path / 'train'}",
            f"val_path={tmp_path / 'val'}",
            "optim.total_steps=4",
            "eval_every=2",
            "batch_size=4",
            "head_hidden=8",
            "optim.warmup_steps=1",
        ]
    )
    results = json.loads((run / "results.json").read_text())
    assert results["metric"] == "accuracy" and [s for s, _ in results["history"]] == [2, 4]
    assert results["best"] == max(v for _, v in results["history"])
    assert (run / "best" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="metric: must be one of"):
        recipe.load_config(None, ["metric=bleu"])
    with pytest.raises(ValueError, match="needs train_path and val_path"):
        r = recipe.FinetuneRecipe(recipe.load_config(None, ["task=folder"]))
        r._sources()


def test_metric_dispatch_against_hand_computations():
    """Each task kind's metric on a fixed prediction set, computed by hand (see the comments)."""
    recipe = _recipe()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])  # predictions 0, 1, 0, 1
    labels = torch.tensor([0, 1, 1, 1])
    assert recipe.compute_metric("accuracy", logits, labels) == pytest.approx(3 / 4)
    # TP 2, FP 0, FN 1, TN 1: precision 1, recall 2/3 -> F1 0.8; MCC (2*1 - 0*1) / sqrt(2*3*1*2)
    assert recipe.compute_metric("f1", logits, labels) == pytest.approx(0.8)
    assert recipe.compute_metric("mcc", logits, labels) == pytest.approx(2 / 12**0.5)
    assert recipe.compute_metric("auroc", logits, labels) == pytest.approx(1.0)  # every positive above the negative
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.0, 4.0, 5.0, 4.0])
    assert recipe.compute_metric("pearson", x, y) == pytest.approx(3.5 / 23.75**0.5)
    assert recipe.compute_metric("spearman", x, y) == pytest.approx(3.0 / 22.5**0.5)  # y ranks 1, 2.5, 4, 2.5
    soft = torch.tensor([[0.0, 0.6, 1.0], [0.3, 0.0, 0.9]])
    vqa_logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 0.0, 1.0]])  # predicted answers 1 and 0
    assert recipe.compute_metric("vqa_accuracy", vqa_logits, soft) == pytest.approx((0.6 + 0.3) / 2)


# -- every task kind end to end, on data the tests make -----------------------------------------------
COLORS = ("red", "blue", "green", "yellow")


def _train_and_check_best(recipe, run, overrides):
    """Train, then reload the exported best classifier and check it reproduces the best metric."""
    from mmkit.models import load_classifier
    from mmkit.train import teardown_distributed

    small = [
        f"run_dir={run}",
        "optim.total_steps=4",
        "eval_every=2",
        "batch_size=4",
        "head_hidden=8",
        "optim.warmup_steps=1",
    ]
    r = recipe.FinetuneRecipe(recipe.load_config(None, [*small, *overrides]))
    try:
        r.setup()
        results = r.train()
        r.model = r.raw_model = load_classifier(Path(r.cfg.run_dir) / "best")
        assert r.evaluate() == pytest.approx(results["best"], abs=1e-6)
    finally:
        r.close()  # the loaders, the logger and the run directory's hold
        teardown_distributed()
    assert results["best"] == max(v for _, v in results["history"])
    return r, results


def test_sentence_pair_classification_glue_style(tmp_path):
    import csv
    import random

    rng = random.Random(0)
    for split, n in (("train", 16), ("val", 8)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["premise", "hypothesis", "gold"])
            for _ in range(n):
                a, b = rng.choice(COLORS), rng.choice(COLORS)
                w.writerow([f"the ball is {a}", f"a {b} ball", "entailment" if a == b else "contradiction"])
    recipe = _recipe()
    r, _ = _train_and_check_best(
        recipe,
        tmp_path / "run",
        [
            "task=text",
            "modality=text",
            f"train_path={tmp_path / 'train.csv'}",
            f"val_path={tmp_path / 'val.csv'}",
            "text_column=premise",
            "text_pair_column=hypothesis",
            "label_column=gold",
            "metric=mcc",
        ],
    )
    assert r.classifier_info["classes"] == ["contradiction", "entailment"]  # string labels: sorted classes
    sample = r.train_ds[0]
    assert set(sample["token_type_ids"].tolist()) == {0, 1}  # [CLS] a [SEP] = 0, b [SEP] = 1
    assert (tmp_path / "run" / "best" / "tokenizer").is_dir()


def test_regression_sts_style(tmp_path):
    import random

    rng = random.Random(1)
    for split, n in (("train", 16), ("val", 8)):
        rows = []
        for _ in range(n):
            k = rng.randint(1, 5)
            rows.append({"sentence": " ".join(["big"] * k) + " box", "score": f"{k / 2:.1f}"})
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(x) for x in rows))
    recipe = _recipe()
    r, results = _train_and_check_best(
        recipe,
        tmp_path / "run",
        [
            "task=text",
            "modality=text",
            "problem_type=regression",
            "metric=spearman",
            "text_column=sentence",
            "label_column=score",
            f"train_path={tmp_path / 'train.jsonl'}",
            f"val_path={tmp_path / 'val.jsonl'}",
        ],
    )
    assert r.raw_model.head.fc2.out_features == 1 and results["metric"] == "spearman"
    with pytest.raises(ValueError, match="does not fit problem_type"):
        recipe.load_config(None, ["problem_type=regression", "metric=accuracy"])


def _pair_manifest(tmp_path, n_train=12, n_val=6):
    """Pictures of coloured shapes with a question, 10 human answers and a yes/no label per row."""
    from tests.data.conftest import png_bytes

    (tmp_path / "img").mkdir()
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 500)):
        rows = []
        for i in range(n):
            data, caption = png_bytes(offset + i)
            (tmp_path / "img" / f"{split}{i}.png").write_bytes(data)
            color = caption.split()[2]
            answers = [color] * 7 + ["purple"] * 3 if i % 2 else [color] * 2 + ["blue"] * 8
            rows.append(
                {
                    "img": f"img/{split}{i}.png",
                    "question": "what colour is the first shape?",
                    "answers": answers,
                    "label": "match" if i % 3 else "nomatch",
                }
            )
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(x) for x in rows))


def test_vqa_soft_scores_from_a_checkpoint_at_a_higher_resolution(tmp_path):
    from tests.conftest import make_mmkit_export

    _pair_manifest(tmp_path)
    ckpt = make_mmkit_export(tmp_path / "ckpt", ["what colour is the first shape?"] * 3)
    vocab = tmp_path / "answers.txt"
    vocab.write_text("red\nblue\ngreen\nyellow\npurple\n")
    recipe = _recipe()
    r, _ = _train_and_check_best(
        recipe,
        tmp_path / "run",
        [
            "task=pairs",
            "modality=multimodal",
            "problem_type=multi_label",
            "metric=vqa_accuracy",
            f"init_from={ckpt}",
            "image_size=48",
            "image_column=img",
            "text_column=question",
            "answers_column=answers",
            f"answer_vocab={vocab}",
            f"train_path={tmp_path / 'train.jsonl'}",
            f"val_path={tmp_path / 'val.jsonl'}",
        ],
    )
    assert r.classifier_info["classes"] == ["red", "blue", "green", "yellow", "purple"]
    assert r.raw_model.model.image_encoder.embeddings.grid_size == (6, 6)
    assert "resampled from 4x4 to 6x6" in (tmp_path / "run" / "load_report.txt").read_text()
    label = r.train_ds[1]["label"]  # 7 x its colour, 3 x purple -> 1.0 and 0.9
    assert label.dtype == torch.float32 and sorted(label.tolist())[-2:] == pytest.approx([0.9, 1.0])
    assert r.train_ds[0]["image"].shape == (3, 48, 48)
    with pytest.raises(ValueError, match="VQA needs answers_column"):
        recipe.load_config(None, ["metric=vqa_accuracy"])


def test_multimodal_binary_classification_hateful_memes_style(tmp_path):
    _pair_manifest(tmp_path)
    recipe = _recipe()
    r, results = _train_and_check_best(
        recipe,
        tmp_path / "run",
        [
            "task=pairs",
            "modality=multimodal",
            "metric=auroc",
            "image_column=img",
            "text_column=question",
            "precision=bf16",
            f"train_path={tmp_path / 'train.jsonl'}",
            f"val_path={tmp_path / 'val.jsonl'}",
        ],
    )
    assert r.classifier_info["classes"] == ["match", "nomatch"] and results["metric"] == "auroc"
    from mmkit.train import autocast

    with autocast(r.cfg.precision, r.ctx.device):  # precision=bf16: the forward passes ran in bf16
        assert r.raw_model.head.fc1(torch.zeros(1, 32)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision: must be one of 'fp32', 'bf16', 'fp16', got 'fp64'"):
        recipe.load_config(None, ["precision=fp64"])


# -- resume and DDP -------------------------------------------------------------------------------------
RECIPE = REPO / "recipes" / "flava" / "finetune.py"


def _image_folder(root):
    from tests.data.conftest import png_bytes

    for split, n in (("train", 16), ("val", 6)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n // 2):
                (root / split / cls / f"{i}.png").write_bytes(png_bytes(i + (100 if cls == "b" else 0))[0])


def _launch(root, run, nproc, batch, steps, env=None, check=True, *extra):
    import os
    import subprocess

    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [
        *launcher,
        str(RECIPE),
        f"run_dir={run}",
        "task=folder",
        f"train_path={root / 'train'}",
        f"val_path={root / 'val'}",
        f"optim.total_steps={steps}",
        f"batch_size={batch}",
        "head_hidden=8",
        "optim.warmup_steps=1",
        "optim.lr=1e-3",
        *extra,
    ]
    out = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300, check=False
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _weights(run):
    from safetensors.torch import load_file

    return load_file(run / "best" / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize(("nproc", "strategy"), [(1, "none"), (2, "ddp"), (2, "fsdp")])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, nproc, strategy):
    """Killed at step 5, resumed from step 3: the same evaluations and the same best export as the run
    that was never killed (one process, and two under DDP and FSDP2)."""
    _image_folder(tmp_path)
    args = ("eval_every=2", "checkpoint.every=3", f"distributed={strategy}")
    _launch(tmp_path, tmp_path / "ref", nproc, 4, 7, None, True, *args)
    crashed = _launch(tmp_path, tmp_path / "res", nproc, 4, 7, {"MMKIT_FAULT_KILL_AT_STEP": "5"}, False, *args)
    assert crashed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "res" / "checkpoints").iterdir()) == ["step_00000003"]
    resumed = _launch(tmp_path, tmp_path / "res", nproc, 4, 7, None, True, *args)
    assert "resumed from" in resumed.stdout
    ref, res = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("ref", "res"))
    assert [s for s, _ in res["history"]] == [2, 4, 6, 7]
    for (_, a), (_, b) in zip(ref["history"], res["history"], strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    wa, wb = _weights(tmp_path / "ref"), _weights(tmp_path / "res")
    assert wa.keys() == wb.keys() and "head.fc2.weight" in wa  # a gathered, unprefixed export
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)


@pytest.mark.slow
def test_two_ranks_equal_one_rank_on_the_same_global_batch(tmp_path):
    """DistributedSampler gives rank r the samples perm[r::2]; two ranks of 4 see the same 8 samples per
    step as one rank of 8, and DDP averages their gradients: the weights must agree."""
    _image_folder(tmp_path)
    _launch(tmp_path, tmp_path / "one", 1, 8, 4, None, True, "eval_every=4")
    _launch(tmp_path, tmp_path / "two", 2, 4, 4, None, True, "eval_every=4")
    _launch(tmp_path, tmp_path / "half", 1, 4, 4, None, True, "eval_every=4")  # another global batch
    wa, wb, wc = (_weights(tmp_path / d) for d in ("one", "two", "half"))
    for k in wa:
        a, b = wa[k], wb[k]
        if k.endswith("attn.qkv.bias"):
            # The key bias adds q.b_k to every logit of a query's row, which softmax cancels: its gradient
            # is zero but for rounding, and Adam scales that noise (which differs with the reduction order
            # of one rank vs two) to lr-sized steps. Compared: the query and value biases.
            third = a.shape[0] // 3
            a, b = torch.cat([a[:third], a[2 * third :]]), torch.cat([b[:third], b[2 * third :]])
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=k)
    assert not torch.allclose(wa["head.fc2.weight"], wc["head.fc2.weight"], atol=1e-4)  # the test can fail


def test_every_shipped_finetune_config_loads():
    recipe = _recipe()
    configs = sorted((REPO / "recipes/flava/configs").glob("finetune_*.yaml"))
    assert len(configs) >= 4
    kinds = {(c.modality, c.problem_type) for c in (recipe.load_config(str(p), []) for p in configs)}
    assert {
        ("image", "single_label"),
        ("text", "single_label"),
        ("multimodal", "single_label"),
        ("image", "regression"),
    } <= kinds
