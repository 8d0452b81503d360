"""FLAVA's finetuned tasks read from miniature copies of their released files: what each layout gives,
the official VQA answer normalisation and accuracy, the reported metrics against scikit-learn and scipy,
and the skips and one-line errors of bad input."""

from __future__ import annotations

import json
import random

import pytest
import torch

from mmkit.data import ClassificationDataset, DataQualityError, Skipped, normalize_answer, vqa_answer_score
from mmkit.data.vqa_answers import vqa_official_accuracy, vqa_official_score, vqa_soft_scores
from mmkit.eval import FINETUNE_TASKS, finetune_task, open_task_split
from mmkit.eval.benchmarks import BenchmarkFormatError
from mmkit.eval.benchmarks import shapes_finetune as ff
from mmkit.eval.benchmarks.vl_tasks import vqa_answer_vocab, vqa_results
from mmkit.utils.errors import InputError
from tests.conftest import load_recipe
from tests.eval import vqa_reference


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-files")
    return {
        "glue_data": ff.glue_data(root / "glue_data"),
        "hub": ff.glue_parquet(root / "glue"),
        "vqa": ff.vqav2(root / "vqa"),
        "snli": ff.snli_ve(root / "snli-ve"),
        "memes": ff.hateful_memes(root / "hateful_memes"),
    }


def _rows(source):
    return [(source[i].text, source[i].meta["text_pair"], source[i].label) for i in range(len(source))]


@pytest.mark.parametrize("name", [n for n in FINETUNE_TASKS if n.startswith("glue:")])
def test_glue_tsv_and_hub_parquet_give_the_same_labelled_rows(files, name):
    task = finetune_task(name)
    short = name.split(":")[1]
    for split in {task.train, task.select, *task.report.values()}:
        tsv = open_task_split(task, files["glue_data"], split)
        hub = open_task_split(task, files["hub"] / short, split)  # the config folder itself
        assert _rows(tsv) == _rows(hub) and tsv.classes == hub.classes and not tsv.skipped
        expected = ff.glue_rows(short, split, 24 if split == "train" else 12)
        assert [(t, p) for t, p, _ in _rows(tsv)] == [(t, p) for t, p, _ in expected]
        if tsv.classes is None:  # STS-B: the score as a float
            assert [y for *_, y in _rows(tsv)] == [float(y) for *_, y in expected]
        else:  # each TSV label value maps to the hub's class of the same meaning
            names = {"0": tsv.classes[0], "1": tsv.classes[1]}
            assert [tsv.classes[y] for *_, y in _rows(tsv)] == [names.get(y, y) for *_, y in expected]
    assert (task.reported_names() == ["accuracy_matched", "accuracy_mismatched"]) == (name == "glue:mnli")
    assert open_task_split(task, files["hub"], task.select).classes == tsv.classes  # the repository root too


def test_glue_quoting_and_a_malformed_row(files, tmp_path):
    """GLUE's TSVs are unquoted: a '"' is text; a row with the wrong number of fields is a named skip,
    bounded by max_bad_fraction."""
    root = ff.glue_data(tmp_path / "glue_data", tasks=("qqp",))
    train = root / "QQP" / "train.tsv"
    lines = train.read_text().splitlines()
    fields = lines[3].split("\t")
    fields[3], fields[4] = f'"{fields[3]}', f'{fields[4]} "so to speak"'  # quotes inside fields
    lines[3] = "\t".join(fields)
    lines.insert(5, "7\t14\t15\tonly one question\t1")  # 5 fields, not 6
    train.write_text("\n".join(lines) + "\n")
    task = finetune_task("glue:qqp")
    rows = open_task_split(task, root, "train", max_bad_fraction=0.1)
    assert len(rows) == 24 and rows.skipped == ["train.tsv:6: 5 tab-separated fields, expected 6"]
    assert (rows[2].text, rows[2].meta["text_pair"]) == (fields[3], fields[4])
    with pytest.raises(DataQualityError, match=r"1 of 25 records skipped .* train.tsv:6: 5 tab-separated fields"):
        open_task_split(task, root, "train", max_bad_fraction=0.01)


def test_a_file_of_another_glue_task_or_split_is_one_error(files):
    with pytest.raises(BenchmarkFormatError, match=r"is SST-2's \(header sentence \| label\), not CoLA's"):
        open_task_split(finetune_task("glue:cola"), files["glue_data"] / "SST-2", "train")
    with pytest.raises(BenchmarkFormatError, match="is not RTE's: its header has no sentence1, sentence2.*QNLI's"):
        open_task_split(finetune_task("glue:rte"), files["glue_data"] / "QNLI", "train")
    with pytest.raises(BenchmarkFormatError, match="is not GLUE RTE's: no column sentence1, sentence2"):
        open_task_split(finetune_task("glue:rte"), files["hub"] / "qnli", "train")
    with pytest.raises(ValueError, match="has no labelled split 'dev': choose train, dev_matched, dev_mismatched"):
        open_task_split(finetune_task("glue:mnli"), files["glue_data"], "dev")
    with pytest.raises(FileNotFoundError, match="expected .*/CoLA/train.tsv .* or .*/cola/train-\\*.parquet"):
        open_task_split(finetune_task("glue:cola"), files["vqa"], "train")
    with pytest.raises(ValueError, match="unknown task 'glue:wnli': choose one of glue:cola"):
        finetune_task("glue:wnli")


@pytest.mark.parametrize(
    "answer, normal",
    [
        ("Two dogs.", "2 dogs"),
        ("the cat", "cat"),
        ("An apple", "apple"),
        ("a", ""),
        ("yes!", "yes"),
        ("Yes?", "yes"),
        ("dont", "don't"),
        ("isnt it", "isn't it"),
        ("it's", "it's"),
        ("whats up", "what's up"),
        ("1,000", "1000"),
        ("red, white", "red white"),
        ("t-shirt", "t shirt"),
        ("2.5", "2.5"),
        ("mr. smith", "mr smith"),
        ("None", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        (" left\n side\t", "left side"),
        ("(red)", "red"),
        ("yes/no", "yes no"),
        ("somebody'd", "somebodyd"),
        ("Im", "im"),
    ],
)
def test_vqa_answer_normalisation_follows_the_official_rules(answer, normal):
    """Cases from the VQA evaluation's documented rules (punctuation, periods not before a digit, number
    words, articles, contractions; the script's table quirks kept: capitalised keys never match)."""
    assert normalize_answer(answer) == normal


def test_vqa_soft_scores_equal_the_official_leave_one_out_accuracy():
    rng = random.Random(0)
    pool = ["2", "two", "Two.", "3", "yes", "no"]
    for n in (1, 3, 10, 10, 10, 7):
        answers = [rng.choice(pool) for _ in range(n)]
        vocab = ["2", "3", "yes", "no"]
        scores = vqa_soft_scores(answers, vocab)
        normal = [normalize_answer(a) for a in answers]
        for a, s in zip(vocab, scores, strict=True):  # the evaluation script's loop, written out
            subsets = [normal[:i] + normal[i + 1 :] for i in range(n)]
            assert s == pytest.approx(sum(min(1, sub.count(a) / 3) for sub in subsets) / n)
    assert [vqa_answer_score(m, 10) for m in range(6)] == pytest.approx([0, 0.3, 0.6, 0.9, 1, 1])


#: Ten identical answers that normalisation would change: the official evaluation compares them raw.
UNANIMOUS = ["t-shirt", "Two", "1,000", "Yes!", "The dog", "Dont", "mr. smith", "None"]
#: Spellings the mixed questions draw their ten answers from (several normalise to the same answer).
POOLS = [
    ["t-shirt", "t shirt", "T-Shirt", "shirt"],
    ["Two", "2", "two", "3", "2 "],
    ["1,000", "1000", "100", "1 000"],
    ["yes", "Yes!", "yes.", "no", "No"],
    ["the dog", "dog", "A dog", "dogs"],
    ["dont know", "don't know", "no"],
    ["mr. smith", "mr smith", "Smith"],
    ["none", "0", "zero", "1"],
]


def _vqa_questions() -> dict[int, list[str]]:
    """Half the questions with ten identical unnormalised answers, half with ten mixed spellings."""
    rng = random.Random(0)
    questions = {i: [a] * 10 for i, a in enumerate(UNANIMOUS)}
    for i, pool in enumerate(POOLS, len(UNANIMOUS)):
        questions[i] = [rng.choice(pool) for _ in range(10)]
        assert len({a.strip() for a in questions[i]}) > 1
    questions[99] = ["red", " red", "red\n", *["red"] * 7]  # identical once trimmed: unanimous
    return questions


def test_vqa_official_accuracy_equals_the_published_rules_question_by_question():
    """vqaEval.py (tests/eval/vqa_reference.py, written out from the script): raw strings when the ten
    answers agree, normalised ones otherwise; and it is not the always-normalised soft score."""
    questions = _vqa_questions()
    for q, given in questions.items():
        pool = POOLS[q - len(UNANIMOUS)] if len(UNANIMOUS) <= q < 99 else []
        for guess in {normalize_answer(given[0]), given[0], given[0].upper(), "no", "2", *pool}:
            ours, reference = vqa_official_score(guess, given), vqa_reference.question_accuracy(guess, given)
            assert ours == pytest.approx(reference, abs=1e-6), (q, guess)
    assert vqa_official_score("t-shirt", ["t-shirt"] * 10) == 1 and vqa_official_score("t shirt", ["t-shirt"] * 10) == 0
    # what a model answers: vocabulary entries, i.e. normal forms
    predicted = {q: normalize_answer(given[0]) for q, given in questions.items()}
    official = vqa_official_accuracy(predicted, questions)
    reference = [vqa_reference.question_accuracy(predicted[q], given) for q, given in questions.items()]
    assert official == pytest.approx(sum(reference) / len(reference), abs=1e-6)
    always_normalised = [
        vqa_answer_score([normalize_answer(a) for a in given].count(predicted[q]), len(given))
        for q, given in questions.items()
    ]
    assert sum(always_normalised) / len(questions) - official > 0.4  # the 8 unanimous questions: 1 there, 0 here
    with pytest.raises(InputError, match="1 question\\(s\\) without an answer"):
        vqa_official_accuracy({q: a for q, a in predicted.items() if q != 99}, questions)
    with pytest.raises(InputError, match="at least one human answer"):
        vqa_official_score("yes", [])


def test_vqav2_questions_annotations_and_images(files, tmp_path):
    task = finetune_task("vqav2")
    train = open_task_split(task, files["vqa"], "train")
    val = open_task_split(task, files["vqa"], "val", classes=train.classes)
    assert len(train) == 24 and len(val) == 12 and not train.skipped
    assert set(train.classes) >= {"circle", "square", "triangle"} and train.classes == val.classes
    assert train.classes == vqa_answer_vocab(files["vqa"])  # train's annotations parsed once, the same vocabulary
    rec = train[0]
    assert rec.text == "What color is the first shape?" and rec.image[:2] == b"\xff\xd8"  # the COCO JPEG
    # the answers are the colour in some spelling ("Red", "red.", "the red"): score 1; on images 1, 5, 9...
    # one annotator answered "maybe" (not in the vocabulary)
    assert max(rec.label) == 1.0 and sum(1 for x in rec.label if x) == 1
    # val keeps the answers as released (for the official accuracy), train does not
    assert train.human_answers is None and len(val.human_answers) == len(val)
    annotations = json.loads((files["vqa"] / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    assert {a["question_id"]: tuple(x["answer"] for x in a["answers"]) for a in annotations} == val.human_answers
    assert {len(set(a)) for a in val.human_answers.values()} == {1, 4, 5}  # unanimous ("Red" or "red"), mixed
    predicted = [0] * len(val)
    assert val.official_accuracy(predicted) == pytest.approx(
        vqa_reference.results_file_accuracy(vqa_results(val, predicted), annotations), abs=1e-6
    )
    # an annotation whose question is gone, and a question whose image is missing
    qfile = files["vqa"] / "v2_OpenEnded_mscoco_val2014_questions.json"
    data = json.loads(qfile.read_text())
    dropped = data["questions"].pop(0)
    copy = tmp_path / "vqa"
    copy.mkdir()
    for f in files["vqa"].glob("*.json"):
        (copy / f.name).write_text(qfile.read_text() if f == qfile else f.read_text())
    (copy / qfile.name).write_text(json.dumps(data))
    rows = open_task_split(task, copy, "val", images=files["vqa"], classes=train.classes, max_bad_fraction=0.2)
    assert len(rows) == 11 and rows.skipped == [
        f"v2_mscoco_val2014_annotations.json: annotation of question {dropped['question_id']} has no question "
        "in v2_OpenEnded_mscoco_val2014_questions.json"
    ]
    (copy / "val2014").mkdir()
    ds = ClassificationDataset(
        open_task_split(task, copy, "val", classes=train.classes, max_bad_fraction=0.2),
        "multimodal",
        lambda im: {"image": torch.zeros(3)},
        None,
    )
    skipped = ds[(0, 0, 0)]
    assert isinstance(skipped, Skipped) and "cannot read image" in skipped.reason and "COCO_val2014_" in skipped.reason
    # the annotations where the questions belong: one error naming what was expected
    (copy / qfile.name).write_text((files["vqa"] / "v2_mscoco_val2014_annotations.json").read_text())
    with pytest.raises(BenchmarkFormatError, match="is not a VQA v2 questions file .*expected the fields questions"):
        open_task_split(task, copy, "val", classes=train.classes)


def test_snli_ve_and_hateful_memes(files):
    snli = open_task_split(finetune_task("snli_ve"), files["snli"], "test")
    assert snli.classes == ("contradiction", "entailment", "neutral") and len(snli) == 12
    assert [snli.classes[y] for y in snli.labels[:3]] == ["entailment", "contradiction", "neutral"]
    assert snli[0].image[:2] == b"\xff\xd8" and snli[0].text == snli[0].text.strip()
    memes = open_task_split(finetune_task("hateful_memes"), files["memes"], "test_seen")
    assert memes.classes == ("not_hateful", "hateful") and set(memes.labels) == {0, 1}
    assert memes[0].image[:4] == b"\x89PNG"
    assert finetune_task("hateful_memes").reported_names() == ["auroc", "accuracy"]
    (files["memes"] / "snli_ve_test.jsonl").write_text((files["memes"] / "test_seen.jsonl").read_text())
    with pytest.raises(BenchmarkFormatError, match="is not an SNLI-VE test file: its lines need Flickr30K_ID"):
        open_task_split(finetune_task("snli_ve"), files["memes"], "test")
    with pytest.raises(ValueError, match="has no split 'val': choose train, dev_seen, test_seen"):
        open_task_split(finetune_task("hateful_memes"), files["memes"], "val")


def test_the_reported_metrics_against_scikit_learn_and_scipy():
    """Every metric a task reports, through the finetuning recipe's dispatch, on random predictions."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn import metrics

    recipe = load_recipe("recipes/flava/finetune.py")
    g = torch.Generator().manual_seed(0)
    for classes in (2, 3):
        logits = torch.randn(200, classes, generator=g)
        labels = torch.randint(0, classes, (200,), generator=g)
        preds = logits.argmax(-1).numpy()
        assert recipe.compute_metric("accuracy", logits, labels) == pytest.approx(metrics.accuracy_score(labels, preds))
        assert recipe.compute_metric("matthews", logits, labels) == pytest.approx(
            metrics.matthews_corrcoef(labels, preds)
        )
        assert recipe.compute_metric("mean_per_class_recall", logits, labels) == pytest.approx(
            metrics.balanced_accuracy_score(labels, preds), abs=1e-12
        )
        if classes == 2:
            assert recipe.compute_metric("f1", logits, labels) == pytest.approx(metrics.f1_score(labels, preds))
            assert recipe.compute_metric("auroc", logits, labels) == pytest.approx(
                metrics.roc_auc_score(labels, logits.softmax(-1)[:, 1].numpy())
            )
    x, y = torch.randn(100, generator=g), torch.randn(100, generator=g)
    y[:10] = y[10:20]  # ties for the ranks
    assert recipe.compute_metric("pearson", x, y) == pytest.approx(pearsonr(x.numpy(), y.numpy())[0])
    assert recipe.compute_metric("spearman", x, y) == pytest.approx(spearmanr(x.numpy(), y.numpy())[0])
    soft = torch.rand(50, 7, generator=g)
    vqa_logits = torch.randn(50, 7, generator=g)
    expected = sum(soft[i, vqa_logits[i].argmax()].item() for i in range(50)) / 50
    assert recipe.compute_metric("vqa_accuracy", vqa_logits, soft) == pytest.approx(expected)


@pytest.mark.parametrize("name", ["glue:mnli", "glue:cola", "hateful_memes", "snli_ve", "glue:stsb"])
def test_classification_tasks_also_report_mean_per_class_recall(name):
    """The reported metrics a best step assembles (the recipe's ``_report``) from fixed, imbalanced outputs:
    every single-label task adds ``mean_per_class_recall`` (scikit-learn's balanced accuracy) on each report
    split; regression and VQA do not; the selection metrics and the paper's number are unchanged."""
    from sklearn.metrics import balanced_accuracy_score

    finetune, task = load_recipe("recipes/flava/finetune.py"), finetune_task(name)
    recipe = object.__new__(finetune.FinetuneRecipe)  # the reporting alone: no model, no data
    recipe.cfg = finetune.load_config(None, [f"task={name}", "path=unused"])
    recipe.progress, recipe.val_name = finetune.Progress(), task.select
    g = torch.Generator().manual_seed(0)
    classes = 3 if name in ("glue:mnli", "snli_ve") else 2
    outputs = {}
    for split in {task.select, *task.report.values()}:
        labels = torch.cat([torch.zeros(50), torch.ones(12), torch.full((8,), classes - 1)]).long()
        if task.problem_type == "regression":
            outputs[split] = (torch.randn(70, generator=g), torch.randn(70, generator=g), [])
        else:
            outputs[split] = (torch.randn(70, classes, generator=g) + 0.8 * torch.eye(classes)[labels], labels, [])
    recipe._predict = outputs.__getitem__
    reported = recipe._report(outputs[task.select], 0.0)
    assert list(reported) == task.reported_names(also=True)
    assert recipe.cfg.metric == task.metrics[0] and "mean_per_class_recall" not in finetune.METRICS
    recall = [n for n in reported if n.startswith("mean_per_class_recall")]
    assert bool(recall) == (task.problem_type == "single_label") and not set(recall) & set(task.paper)
    assert finetune_task("vqav2").also_reports == ()  # multi-label: no classes to average over
    for suffix, split in task.report.items():
        if recall:
            logits, labels, _ = outputs[split]
            expected = balanced_accuracy_score(labels.numpy(), logits.argmax(-1).numpy())
            assert reported["mean_per_class_recall" + (f"_{suffix}" if suffix else "")] == pytest.approx(expected)
            assert abs(expected - (logits.argmax(-1) == labels).double().mean().item()) > 1e-3  # imbalanced
