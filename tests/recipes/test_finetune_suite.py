"""FLAVA's finetuned tasks as one suite: the miniature released layouts of GLUE, VQA v2, SNLI-VE and
Hateful Memes (written from the built-in shapes data), finetuned from one checkpoint by the shipped
recipes at test size; results.json under mmkit.eval's metric names, the table with the paper's numbers
and averages, finished tasks not rerun, every run directory kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmkit.eval import finetune_task
from mmkit.eval.benchmarks import shapes_finetune as ff
from tests.conftest import load_recipe, make_mmkit_export, run_recipe
from tests.eval.vqa_reference import results_file_accuracy

REPO = Path(__file__).resolve().parents[2]
SMALL = "{steps: 2, eval_every: 2, batch_size: 4, max_length: 32, head_hidden: 8, warmup_steps: 1, image_size: null}"
TASKS = {
    "mnli": "glue:mnli",
    "cola": "glue:cola",
    "mrpc": "glue:mrpc",
    "qqp": "glue:qqp",
    "sst2": "glue:sst2",
    "qnli": "glue:qnli",
    "rte": "glue:rte",
    "stsb": "glue:stsb",
    "vqav2": "vqav2",
    "snli_ve": "snli_ve",
    "hateful_memes": "hateful_memes",
}
PATHS = {"vqav2": "vqav2", "snli_ve": "snli-ve", "hateful_memes": "hateful_memes"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-suite")
    ff.glue_data(root / "glue_data", n_train=16, n_dev=8)
    ff.vqav2(root / "vqav2", n_train=8, n_val=4)
    ff.snli_ve(root / "snli-ve", n=9)
    ff.hateful_memes(root / "hateful_memes", n=8)
    texts = [caption for _, caption, _ in ff.shapes(200)]
    return root, make_mmkit_export(root / "ckpt", texts)


def _suite(path: Path, names) -> Path:
    lines = ["small: &small " + SMALL, "tasks:"]
    lines += [
        f"  - {{<<: *small, name: {n}, kind: finetune, task: '{TASKS[n]}', path: {PATHS.get(n, 'glue_data')}}}"
        for n in names
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _evaluate(*keys):
    return run_recipe("recipes/flava/evaluate.py", *keys)


def test_the_eleven_tasks_on_an_mmkit_export(data, tmp_path, capsys):
    root, export = data
    out = tmp_path / "eval"
    args = [
        f"suite={_suite(tmp_path / 's.yaml', TASKS)}",
        f"data_root={root}",
        f"checkpoint={export}",
        f"out={out}",
        "progress=false",
    ]
    assert _evaluate(*args) == 0
    results = json.loads((out / "results.json").read_text())
    recall = {"mean_per_class_recall"}  # every single-label task reports it beside its metrics
    names = {
        "mnli": {
            "accuracy_matched",
            "accuracy_mismatched",
            "mean_per_class_recall_matched",
            "mean_per_class_recall_mismatched",
        },
        "cola": {"matthews", *recall},
        "mrpc": {"accuracy", "f1", *recall},
        "qqp": {"accuracy", "f1", *recall},
        "sst2": {"accuracy", *recall},
        "qnli": {"accuracy", *recall},
        "rte": {"accuracy", *recall},
        "stsb": {"pearson", "spearman"},
        "vqav2": {"vqa_accuracy"},
        "snli_ve": {"accuracy", *recall},
        "hateful_memes": {"auroc", "accuracy", *recall},
    }
    for name, metrics in names.items():
        r = results[name]
        other = {
            "kind",
            "split",
            "metric",
            "samples",
            "train_samples",
            "best_step",
            "steps",
            "skipped",
            "skipped_examples",
            "run_dir",
            "seconds",
        }
        assert set(r) - other - ({"predictions"} if name == "vqav2" else set()) == metrics
        assert all(-1 <= r[m] <= 1 for m in metrics) and r["steps"] == 2, name
        assert r["metric"] == next(iter(finetune_task(TASKS[name]).paper))  # the headline: the paper's metric
        run = json.loads((Path(r["run_dir"]) / "results.json").read_text())  # the run directory is kept
        assert run["metrics"] == {m: r[m] for m in metrics} and run["init_from"] == str(export)
        assert (Path(r["run_dir"]) / "best" / "model.safetensors").is_file()
    assert results["mnli"]["samples"] == 16 and results["snli_ve"]["samples"] == 9  # both MNLI dev sets; test
    assert results["vqav2"]["train_samples"] == 16 and results["cola"]["train_samples"] == 16
    table = (out / "results.md").read_text()
    assert "| mnli | finetune | dev_matched | accuracy_matched |" in table and "| 80.33 |" in table
    assert "| mnli | finetune | dev_mismatched | accuracy_mismatched |" in table
    assert "| hateful_memes | finetune | test_seen | auroc |" in table
    assert "| 76.09 |" in table and "| 72.49 |" in table and "| 85.67 |" in table
    assert "the paper's on the same 8" not in table  # all 8 run: the paper's own average says it
    assert "NLP average (GLUE, 8 task(s)): **" in table and "the paper's over its 8 tasks: 78.19" in table
    assert "Multimodal average (finetuned, 3 task(s)): **" in table and "the paper's on the same 3: 75.82" in table
    capsys.readouterr()
    assert _evaluate(*args) == 0  # finished tasks are not rerun
    assert capsys.readouterr().out.count("done already") == 11


def test_a_transformers_directory_and_bad_input(data, tmp_path, capsys, monkeypatch):
    from transformers import FlavaConfig, FlavaModel

    from mmkit.tokenizers import TextTokenizer

    root, export = data
    tok = TextTokenizer.from_pretrained(export / "tokenizer")
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config = FlavaConfig(
        image_config=dict(small, image_size=32, patch_size=8),
        text_config=dict(small, vocab_size=tok.vocab_size, max_position_embeddings=40),
        multimodal_config=dict(small),
        projection_dim=24,
        hidden_size=32,
    )
    FlavaModel(config).save_pretrained(tmp_path / "hf")
    out = tmp_path / "eval"
    assert (
        _evaluate(
            f"suite={_suite(tmp_path / 's.yaml', ['rte', 'snli_ve'])}",
            f"data_root={root}",
            f"checkpoint={tmp_path / 'hf'}",
            f"tokenizer={export / 'tokenizer'}",
            f"out={out}",
            "progress=false",
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["rte"]["accuracy"] <= 1 and 0 <= results["snli_ve"]["accuracy"] <= 1
    assert "| rte | finetune | dev | accuracy |" in (out / "results.md").read_text()
    load = (Path(results["rte"]["run_dir"]) / "load_report.txt").read_text()
    assert "(transformers): 68 tensors loaded" in load and "new: head.fc1.weight" in load  # encoders loaded
    # the shipped suite file is valid as it stands
    from mmkit.eval import load_suite

    evaluate = load_recipe("recipes/flava/evaluate.py")
    shipped = load_suite(REPO / "suites/flava_finetune.yaml", str(root), evaluate.finetune_keys())
    assert [t.task for t in shipped] == list(TASKS.values())
    # bad input: an unknown task or key, a file of another task — one error: line each
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - {name: w, kind: finetune, task: 'glue:wnli', path: glue_data, stepz: 3}\n")
    capsys.readouterr()
    assert _evaluate(f"suite={bad}", f"out={tmp_path / 'o'}", f"data_root={root}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "task 'glue:wnli' is not one of glue:cola" in err and "key(s) stepz" in err
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun: one line saying how to use several GPUs
    assert _evaluate(f"suite={tmp_path / 's.yaml'}", f"out={tmp_path / 'o'}", f"data_root={root}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not under torchrun" in err and "torchrun recipes/flava/finetune.py" in err
    monkeypatch.delenv("WORLD_SIZE")
    finetune = load_recipe("recipes/flava/finetune.py")
    assert finetune.main([f"run_dir={tmp_path / 'r'}", "task=glue:cola", f"path={root / 'glue_data' / 'SST-2'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is SST-2's (header sentence | label), not CoLA's" in err


def test_an_entrys_step_counts_replace_the_recipes_shares(tmp_path):
    """``steps`` and ``warmup_steps`` in a suite entry win over the shipped recipe's ``epochs`` and
    ``warmup_fraction`` (which would otherwise recompute them from the training split)."""
    from mmkit.eval.suite import SuiteTask

    evaluate, finetune = load_recipe("recipes/flava/evaluate.py"), load_recipe("recipes/flava/finetune.py")
    runner = evaluate.FinetuneRunner(
        evaluate.load_config(None, [f"suite={_suite(tmp_path / 's.yaml', ['rte'])}", f"out={tmp_path / 'o'}"])
    )
    shipped = REPO / "recipes/flava/configs/paper/glue_rte.yaml"
    task = SuiteTask(
        "rte", "finetune", "", str(tmp_path), keys={"steps": 7, "warmup_steps": 3, "lr": 0.5}, task="glue:rte"
    )
    cfg = finetune.load_config(str(shipped), runner.overrides(task))
    assert (cfg.epochs, cfg.warmup_fraction) == (None, None)
    assert (cfg.optim.total_steps, cfg.optim.warmup_steps, cfg.optim.lr) == (7, 3, 0.5)
    untouched = finetune.load_config(
        str(shipped), runner.overrides(SuiteTask("rte", "finetune", "", str(tmp_path), task="glue:rte"))
    )
    assert (untouched.epochs, untouched.warmup_fraction, untouched.optim.betas) == (10, 0.06, (0.9, 0.98))


def test_a_named_task_sets_its_encoder_and_metrics_and_refuses_keys_it_decides():
    finetune = load_recipe("recipes/flava/finetune.py")
    cfg = finetune.load_config(None, ["task=glue:mrpc", "path=x", "metric=f1"])  # select on its other metric
    assert (cfg.modality, cfg.problem_type, cfg.metric) == ("text", "single_label", "f1")
    cfg = finetune.load_config(None, ["task=glue:stsb", "path=x"])
    assert (cfg.modality, cfg.problem_type, cfg.metric) == ("text", "regression", "pearson")
    assert finetune.load_config(None, ["task=hateful_memes", "path=x"]).metric == "auroc"
    expected = (
        r"task glue:cola reads its own files and sets its encoder and metrics: remove text_column, "
        r"modality=multimodal \(it is text\), metric=auroc \(it reports matthews\)"
    )
    with pytest.raises(ValueError, match=expected):
        finetune.load_config(None, ["task=glue:cola", "path=x", "text_column=s", "modality=multimodal", "metric=auroc"])
    with pytest.raises(ValueError, match="task vqav2 reads its released files: set path="):
        finetune.load_config(None, ["task=vqav2"])


def test_a_missing_image_is_a_named_skip_within_the_bound(data, tmp_path, capsys):
    import shutil

    root, export = data
    memes = shutil.copytree(root / "hateful_memes", tmp_path / "memes")
    gone = json.loads((memes / "dev_seen.jsonl").read_text().splitlines()[2])["img"]
    (memes / gone).unlink()
    keys = [
        "task=hateful_memes",
        f"path={memes}",
        f"init_from={export}",
        "optim.total_steps=2",
        "eval_every=2",
        "batch_size=4",
        "head_hidden=8",
        "optim.warmup_steps=1",
        "progress=false",
    ]
    capsys.readouterr()
    assert run_recipe("recipes/flava/finetune.py", f"run_dir={tmp_path / 'a'}", "max_bad_fraction=0.2", *keys) == 0
    out = capsys.readouterr().out
    assert "dev_seen: 1 of 8 records skipped, scored without them:" in out and gone.split("/")[1] in out
    assert run_recipe("recipes/flava/finetune.py", f"run_dir={tmp_path / 'b'}", "max_bad_fraction=0.05", *keys) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 of the 8 dev_seen records could not be read (max_bad_fraction 5.0%)" in err


def test_vqa_val_accuracy_is_the_official_evaluations_not_the_normalised_score(data, tmp_path):
    """With one answer in the vocabulary every val question gets it. Half the val questions are rewritten to
    ten identical unnormalised spellings of it ("Yellow" x 10: compared raw, it scores 0), half to mixed
    spellings (normalised: 9 of 10 match, 1.0). The reported vqa_accuracy is the reference's on the val
    file, 0.5; the always-normalised soft score would be 1.0."""
    import shutil

    from mmkit.eval.benchmarks.vl_tasks import vqa_answer_vocab

    root, export = data
    vqa = shutil.copytree(root / "vqav2", tmp_path / "vqav2")
    (top,) = vqa_answer_vocab(vqa, 1)
    afile = vqa / "v2_mscoco_val2014_annotations.json"
    released = json.loads(afile.read_text())
    for i, a in enumerate(released["annotations"]):
        given = [top.capitalize()] * 10 if i % 2 else [top, top.upper(), "maybe", *[top] * 7]
        a["answers"] = [{"answer": x, "answer_confidence": "yes", "answer_id": j + 1} for j, x in enumerate(given)]
    afile.write_text(json.dumps(released))
    run = tmp_path / "run"
    assert (
        run_recipe(
            "recipes/flava/finetune.py",
            "task=vqav2",
            f"path={vqa}",
            f"init_from={export}",
            f"run_dir={run}",
            "answer_vocab_size=1",
            "optim.total_steps=2",
            "eval_every=2",
            "batch_size=4",
            "head_hidden=8",
            "optim.warmup_steps=1",
            "progress=false",
        )
        == 0
    )
    results = json.loads((run / "results.json").read_text())
    val = json.loads((run / "predictions" / "vqav2_val.json").read_text())
    assert results["predictions"] == {"val": str(run / "predictions" / "vqav2_val.json")}
    assert {a["answer"] for a in val} == {top} and len(val) == len(released["annotations"]) == 8
    reference = results_file_accuracy(val, released["annotations"])
    assert reference == pytest.approx(0.5) and results["metrics"]["vqa_accuracy"] == pytest.approx(reference, abs=1e-6)
    assert results["start"] == results["best"] == pytest.approx(0.5)  # selection reads the same number


def test_vqa_test_dev_answers_are_the_best_steps_in_the_servers_format(data, tmp_path, capsys):
    """predict=[test-dev] writes [{question_id, answer}] for every test-dev question: the exported best
    model's answers (recomputed here from <run_dir>/best), class 0 for a question whose image is gone.
    val's answers are written the same way, and the reported vqa_accuracy is the official evaluation's
    (tests/eval/vqa_reference.py) of that file against the val annotations."""
    import shutil

    from mmkit.data import ClassificationDataset, ImageTransform, ImageTransformConfig
    from mmkit.eval import finetune_task, open_task_split
    from mmkit.models import load_classifier
    from mmkit.tokenizers import TextTokenizer

    root, export = data
    vqa = shutil.copytree(root / "vqav2", tmp_path / "vqav2")
    questions = json.loads((vqa / "v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text())["questions"]
    (vqa / "test2015" / f"COCO_test2015_{questions[-1]['image_id']:012d}.jpg").unlink()  # its two questions
    run = tmp_path / "run"
    assert (
        run_recipe(
            "recipes/flava/finetune.py",
            "task=vqav2",
            f"path={vqa}",
            f"init_from={export}",
            f"run_dir={run}",
            "predict=[test-dev]",
            "optim.total_steps=4",
            "eval_every=2",
            "batch_size=4",
            "head_hidden=8",
            "optim.warmup_steps=1",
            "max_bad_fraction=0.3",
            "progress=false",
        )
        == 0
    )
    assert "test-dev: 2 of 8 records skipped, answered with class 0" in capsys.readouterr().out
    answers = json.loads((run / "predictions" / "vqav2_test-dev.json").read_text())
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    model = load_classifier(run / "best")
    rows = open_task_split(finetune_task("vqav2"), vqa, "test-dev", classes=model.classes)
    transform = ImageTransform(
        ImageTransformConfig(image_size=model.model.config.image.image_size, codebook_image_size=0)
    )
    ds = ClassificationDataset(rows, "multimodal", transform, TextTokenizer.from_pretrained(run / "best" / "tokenizer"))
    with torch.no_grad():
        for i, a in enumerate(answers[:-2]):
            s = ds[i]
            logits = model(pixel_values=s["image"][None], input_ids=s["input_ids"][None]).logits
            assert a["answer"] == model.classes[logits.argmax(-1).item()], i
    assert [a["answer"] for a in answers[-2:]] == [model.classes[0]] * 2
    results = json.loads((run / "results.json").read_text())
    assert results["predictions"] == {
        "val": str(run / "predictions" / "vqav2_val.json"),
        "test-dev": str(run / "predictions" / "vqav2_test-dev.json"),
    }
    val = json.loads((run / "predictions" / "vqav2_val.json").read_text())
    annotations = json.loads((vqa / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    assert sorted(a["question_id"] for a in val) == sorted(a["question_id"] for a in annotations) and len(val) == 8
    assert {a["answer"] for a in val} <= set(model.classes)
    assert results["metrics"]["vqa_accuracy"] == pytest.approx(results_file_accuracy(val, annotations), abs=1e-6)
    assert results["best"] == results["metrics"]["vqa_accuracy"]  # the step is selected on the same number
    # the miniature val set holds unanimous unnormalised answers ("Red" x 10), which the official rules
    # compare raw: the vocabulary's "red" scores 0 there
    assert any(
        len({x["answer"] for x in a["answers"]}) == 1 and a["answers"][0]["answer"][0].isupper() for a in annotations
    )
    finetune = load_recipe("recipes/flava/finetune.py")
    with pytest.raises(ValueError, match=r"remove predict=val \(it writes results for test-dev, test\)"):
        finetune.load_config(None, ["task=vqav2", "path=x", "predict=[val]"])
    with pytest.raises(ValueError, match="predict= is for a named task's unlabelled splits"):
        finetune.load_config(None, ["predict=[test]"])
