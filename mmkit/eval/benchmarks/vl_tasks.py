"""FLAVA's three finetuned multimodal tasks read from their released files (facts in ``docs/EVALUATION.md``).

* **VQA v2** (``path``: the folder with the JSON files; ``images``: the COCO image root, default
  ``path``): ``v2_OpenEnded_mscoco_{train,val}2014_questions.json`` (``questions[] = {image_id, question,
  question_id}``) with ``v2_mscoco_{train,val}2014_annotations.json`` (``annotations[] = {question_id,
  image_id, multiple_choice_answer, answers[] = {answer, ...}}``); images
  ``<images>/{train,val}2014/COCO_{train,val}2014_<image_id:012d>.jpg``. Splits ``train`` and ``val``.
  Answers are normalised as the official evaluation does (:mod:`mmkit.data.vqa_answers`); the vocabulary
  is the ``answer_vocab_size`` most frequent normalised ``multiple_choice_answer`` s over train + val
  (3,129 by default, the common choice), the target each question's soft scores over it. The val split
  also keeps each question's human answers as released (:attr:`VQARows.human_answers`), which the
  official accuracy compares (:func:`~mmkit.data.vqa_answers.vqa_official_accuracy`).
* **SNLI-VE** (``path``: the folder with ``snli_ve_{train,dev,test}.jsonl``): each line's
  ``Flickr30K_ID``, ``sentence2`` (the hypothesis) and ``gold_label``; images
  ``<images>/<Flickr30K_ID>.jpg`` where ``images`` defaults to the first of ``Flickr30K/flickr30k_images``,
  ``flickr30k_images``, ``images`` under ``path`` that exists.
* **Hateful Memes** (``path``: the folder with ``{train,dev_seen,test_seen,dev_unseen,test_unseen}.jsonl``
  and ``img/``): each line's ``img`` (relative to ``path``), ``text`` and ``label`` (1 = hateful).

A question whose annotation is missing (or an annotation without a question), a line that is not JSON, a
row without its fields or with an unknown label is a named skip; a file of another task or split is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmkit.data.tasks import LabeledRows
from mmkit.data.vqa_answers import normalize_answer, vqa_official_accuracy, vqa_sparse_scores
from mmkit.eval.benchmarks.base import BenchmarkFormatError
from mmkit.utils.bounded import parse_json, read_text_file
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.paths import OutsideRoot, inside_root

VQA_SPLITS = {"train": "train2014", "val": "val2014"}
#: The splits whose answers only the challenge server has: questions only, images in ``test2015/``.
VQA_TEST_SPLITS = {"test-dev": "test-dev2015", "test": "test2015"}
SNLI_VE_CLASSES = ("contradiction", "entailment", "neutral")
HATEFUL_MEMES_CLASSES = ("not_hateful", "hateful")


class VQARows(LabeledRows):
    """A VQA v2 split read by :func:`read_vqav2`: :class:`LabeledRows` whose keys are ``q<question_id>``.

    Attributes:
        human_answers: ``{question_id: (answer, ...)}``, each row's human answers as released (VQA v2: ten
            ``answers[].answer`` strings), for an evaluation split; None for train (443k questions: its soft
            scores are all training needs).
    """

    def __init__(
        self,
        rows: Sequence[tuple],
        classes: Sequence[str],
        name: str,
        skipped: Sequence[str] = (),
        human_answers: dict[int, tuple[str, ...]] | None = None,
    ) -> None:
        super().__init__(rows, classes, name, skipped)
        self.human_answers = human_answers

    def official_accuracy(self, predicted: list[int]) -> float:
        """The official VQA accuracy (:func:`~mmkit.data.vqa_answers.vqa_official_accuracy`) of the answers
        ``predicted`` (a class id per row) against the human answers; the split must keep them."""
        if self.human_answers is None:
            raise InputError(f"{self.name} keeps no human answers: the official accuracy cannot be computed")
        answers = {r["question_id"]: r["answer"] for r in vqa_results(self, predicted)}
        return vqa_official_accuracy(answers, self.human_answers)


def _load_json(file: Path, fields: tuple[str, ...], what: str) -> dict[str, Any]:
    """A JSON annotation file holding an object with ``fields`` (each a list); anything else is one error."""
    if not file.exists():
        raise MissingError(f"{what}: {file} does not exist")
    try:
        data = parse_json(read_text_file(file, what), str(file))
    except InputError as e:
        raise BenchmarkFormatError(file, f"is not {what} ({e})") from None
    if not isinstance(data, dict) or any(f not in data for f in fields):
        found = ", ".join(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise BenchmarkFormatError(file, f"is not {what}: expected the fields {', '.join(fields)} (found {found})")
    for f in fields:
        if not isinstance(data[f], list):
            raise BenchmarkFormatError(file, f"is not {what}: {f} must be a list, got {type(data[f]).__name__}")
    return data


def _vqa_files(path: Path, split: str) -> tuple[Path, Path]:
    if split not in VQA_SPLITS:
        raise InputError(
            f"VQA v2 has no labelled split {split!r}: choose train or val (test-dev and test: predictions only)"
        )
    sub = VQA_SPLITS[split]
    names = (f"v2_OpenEnded_mscoco_{sub}_questions.json", f"v2_mscoco_{sub}_annotations.json")
    found = []
    for name in names:
        where = [
            d / name
            for d in (path, path / "questions", path / "annotations", path / "Questions", path / "Annotations")
            if (d / name).is_file()
        ]
        if not where:
            raise MissingError(f"VQA v2 {split}: no {name} under {path} (or its questions/ and annotations/)")
        found.append(where[0])
    return found[0], found[1]


def _vqa_annotations(path: Path, split: str) -> tuple[list[dict], dict[int, dict], Path, Path]:
    qfile, afile = _vqa_files(path, split)
    questions = _load_json(qfile, ("questions",), f"a VQA v2 questions file ({qfile.name})")
    annotations = _load_json(afile, ("annotations",), f"a VQA v2 annotations file ({afile.name})")
    for data, file in ((questions, qfile), (annotations, afile)):
        sub = data.get("data_subtype")
        if sub is not None and sub != VQA_SPLITS[split]:
            raise BenchmarkFormatError(file, f"holds the {sub} split, not {VQA_SPLITS[split]} ({split!r})")
    by_id = {a["question_id"]: a for a in annotations["annotations"] if _annotation_ok(a)}
    return questions["questions"], by_id, qfile, afile


def _qid(value: Any) -> bool:
    """Whether a ``question_id`` / ``image_id`` is an id: an integer (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _annotation_ok(a: Any) -> bool:
    """Whether an annotation can be used: an integer ``question_id`` and ``answers``, a non-empty list of
    ``{"answer": string}`` (others are skipped, named by the question they answer, or lack)."""
    if not isinstance(a, dict) or not _qid(a.get("question_id")):
        return False
    answers = a.get("answers")
    if not isinstance(answers, list) or not answers:
        return False
    mc = a.get("multiple_choice_answer", "")
    return isinstance(mc, str) and all(isinstance(x, dict) and isinstance(x.get("answer"), str) for x in answers)


def vqa_answer_vocab(
    path: str | Path, size: int = 3129, read: dict[str, dict[int, dict]] | None = None
) -> tuple[str, ...]:
    """The ``size`` most frequent normalised ``multiple_choice_answer`` s over VQA v2's train and val
    annotations (ties by name); ``read``: annotations by question id of a split already in memory (the
    files are hundreds of MB: each is parsed once)."""
    counts: dict[str, int] = {}
    for split in VQA_SPLITS:
        by_id = (read or {}).get(split) or _vqa_annotations(Path(path), split)[1]
        for a in by_id.values():
            if isinstance(a.get("multiple_choice_answer"), str):
                key = normalize_answer(a["multiple_choice_answer"])
                counts[key] = counts.get(key, 0) + 1
    return tuple(sorted(counts, key=lambda a: (-counts[a], a))[:size])


def read_vqav2(
    path: str | Path,
    split: str,
    images: str | Path | None = None,
    classes: tuple[str, ...] | None = None,
    answer_vocab_size: int = 3129,
) -> VQARows:
    """One VQA v2 split: rows ``(q<question_id>, question, None, image path, {class id: soft score})`` over
    ``classes`` (default :func:`vqa_answer_vocab`). Questions whose answers all fall outside the vocabulary
    are kept (their target is all zeros, as in training on the usual 3,129 answers). The val split keeps its
    human answers (:attr:`VQARows.human_answers`), train does not."""
    path = Path(path)
    if split in VQA_TEST_SPLITS:
        return _vqa_questions_only(
            path, split, Path(images) if images else path, classes or vqa_answer_vocab(path, answer_vocab_size)
        )
    questions, by_id, qfile, afile = _vqa_annotations(path, split)
    vocab = classes or vqa_answer_vocab(path, answer_vocab_size, read={split: by_id})
    sub, root = VQA_SPLITS[split], Path(images) if images else path
    index = {a: i for i, a in enumerate(vocab)}
    asked = {q["question_id"] for q in questions if isinstance(q, dict) and _qid(q.get("question_id"))}
    rows, skipped = [], []
    human: dict[int, tuple[str, ...]] | None = None if split == "train" else {}
    shared: dict[str, str] = {}  # one string object per distinct answer (most answers repeat: "yes", "2")
    for q in questions:
        if not _question_ok(q):
            skipped.append(
                f"{qfile.name}: a question without an integer question_id and image_id and a string "
                f"question ({q!r:.80})"
            )
            continue
        qid, ann = q["question_id"], by_id.get(q["question_id"])
        if ann is None:
            skipped.append(f"{qfile.name}: question {qid} has no annotation with answers in {afile.name}")
            continue
        image = root / sub / f"COCO_{sub}_{q['image_id']:012d}.jpg"
        rows.append((f"q{qid}", q["question"], None, str(image), vqa_sparse_scores(ann["answers"], index)))
        if human is not None:
            human[qid] = tuple(shared.setdefault(a["answer"], a["answer"]) for a in ann["answers"])
    skipped += [
        f"{afile.name}: annotation of question {qid} has no question in {qfile.name}"
        for qid in by_id
        if qid not in asked
    ]
    return VQARows(rows, vocab, f"vqav2 {split}", skipped, human)


def _vqa_questions_only(path: Path, split: str, root: Path, vocab: tuple[str, ...]) -> VQARows:
    """test-dev / test: rows ``(q<question_id>, question, None, image, {})`` (no answers: an empty target)."""
    name = f"v2_OpenEnded_mscoco_{VQA_TEST_SPLITS[split]}_questions.json"
    qfile = next((d / name for d in (path, path / "questions", path / "Questions") if (d / name).is_file()), None)
    if qfile is None:
        raise MissingError(f"VQA v2 {split}: no {name} under {path} (or its questions/)")
    data = _load_json(qfile, ("questions",), f"a VQA v2 questions file ({qfile.name})")
    if data.get("data_subtype", VQA_TEST_SPLITS[split]) != VQA_TEST_SPLITS[split]:
        raise BenchmarkFormatError(qfile, f"holds the {data['data_subtype']} split, not {VQA_TEST_SPLITS[split]}")
    rows, skipped = [], []
    for q in data["questions"]:
        if not _question_ok(q):
            skipped.append(
                f"{qfile.name}: a question without an integer question_id and image_id and a string "
                f"question ({q!r:.80})"
            )
            continue
        image = root / "test2015" / f"COCO_test2015_{q['image_id']:012d}.jpg"
        rows.append((f"q{q['question_id']}", q["question"], None, str(image), {}))
    return VQARows(rows, vocab, f"vqav2 {split}", skipped)


def _question_ok(q: Any) -> bool:
    """Whether a VQA question has an integer ``question_id`` and ``image_id`` and a string ``question``."""
    return (
        isinstance(q, dict)
        and _qid(q.get("question_id"))
        and _qid(q.get("image_id"))
        and isinstance(q.get("question"), str)
    )


def vqa_results(rows: LabeledRows, predicted: list[int]) -> list[dict[str, Any]]:
    """The VQA challenge's results file for ``rows`` (a split read by :func:`read_vqav2`): one
    ``{"question_id": int, "answer": str}`` per question, ``predicted`` holding each row's class id."""
    keys = rows.keys
    if len(predicted) != len(keys):
        raise InputError(f"{rows.name}: {len(predicted)} predictions for {len(keys)} questions")
    return [{"question_id": int(k[1:]), "answer": rows.classes[c]} for k, c in zip(keys, predicted, strict=True)]


def _jsonl(file: Path, fields: dict[str, tuple[type, ...]], what: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """``(line number, object)`` per line with every field of its type; a line that is not JSON or lacks a
    field (or holds it with another type) is a skip, but a first line without them means the file is
    another one (an error)."""
    if not file.exists():
        raise MissingError(f"{what}: {file} does not exist")
    rows, skipped = [], []
    for n, line in enumerate(read_text_file(file, what).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = parse_json(line, f"line {n}")
        except InputError as e:
            skipped.append(f"{file.name}:{n}: {e}")
            continue
        missing = [f for f in fields if not isinstance(obj, dict) or f not in obj]
        if missing and not rows and not skipped:
            found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise BenchmarkFormatError(file, f"is not {what}: its lines need {', '.join(fields)} (found {found})")
        wrong = [
            f"{f} is {type(obj[f]).__name__}, not {' or '.join(t.__name__ for t in kinds)}"
            for f, kinds in fields.items()
            if f not in missing and not _is(obj[f], kinds)
        ]
        if missing or wrong:
            skipped.append(f"{file.name}:{n}: " + "; ".join([f"no {', '.join(missing)}"] * bool(missing) + wrong))
            continue
        rows.append((n, obj))
    return rows, skipped


def _some(rows: list, skipped: list[str], file: Path) -> list:
    """``rows``, or an error naming ``file`` when none of its records could be used."""
    if not rows:
        why = f": {len(skipped)} skipped, e.g. {skipped[0]}" if skipped else ""
        raise BenchmarkFormatError(file, f"holds no usable record{why}")
    return rows


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    """``isinstance(value, kinds)``, where a bool is not an int."""
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def read_snli_ve(
    path: str | Path, split: str, images: str | Path | None = None, allow_outside_root: bool = False
) -> LabeledRows:
    """One SNLI-VE split (``train``, ``dev``, ``test``): rows ``(pairID, hypothesis, None, image, class)``;
    an image id that would name a file outside ``images`` is a named skip unless ``allow_outside_root``."""
    if split not in ("train", "dev", "test"):
        raise InputError(f"SNLI-VE has no split {split!r}: choose train, dev or test")
    path = Path(path)
    name = f"snli_ve_{split}.jsonl"
    file = next((d / name for d in (path, path / "data") if (d / name).exists()), path / name)
    fields = {"Flickr30K_ID": (str, int), "sentence2": (str,), "gold_label": (str,)}
    lines, skipped = _jsonl(file, fields, f"an SNLI-VE {split} file")
    if images is None:
        candidates = [path / "Flickr30K" / "flickr30k_images", path / "flickr30k_images", path / "images"]
        images = next((c for c in candidates if c.is_dir()), candidates[0])
    rows = []
    for n, obj in lines:
        label = obj["gold_label"]
        if label not in SNLI_VE_CLASSES:
            skipped.append(f"{file.name}:{n}: gold_label {label!r} is not one of {', '.join(SNLI_VE_CLASSES)}")
            continue
        try:
            image = inside_root(images, f"{obj['Flickr30K_ID']}.jpg", allow_outside_root)
        except OutsideRoot as e:
            skipped.append(f"{file.name}:{n}: {e}")
            continue
        key = str(obj.get("pairID", f"{file.name}:{n}"))
        rows.append((key, obj["sentence2"], None, str(image), SNLI_VE_CLASSES.index(label)))
    return LabeledRows(_some(rows, skipped, file), SNLI_VE_CLASSES, f"snli_ve {split}", skipped)


def read_hateful_memes(path: str | Path, split: str, allow_outside_root: bool = False) -> LabeledRows:
    """One Hateful Memes split (``train``, ``dev_seen``, ``test_seen``, ``dev_unseen``, ``test_unseen``):
    rows ``(id, text, None, image, label)`` with label 1 = hateful; an ``img`` outside ``path`` (absolute,
    or climbing out with ``..``) is a named skip unless ``allow_outside_root``."""
    valid = ("train", "dev_seen", "test_seen", "dev_unseen", "test_unseen")
    if split not in valid:
        raise InputError(f"Hateful Memes has no split {split!r}: choose {', '.join(valid)}")
    path = Path(path)
    file = path / f"{split}.jsonl"
    lines, skipped = _jsonl(file, {"img": (str,), "text": (str,), "label": (int,)}, f"a Hateful Memes {split} file")
    rows = []
    for n, obj in lines:
        if obj["label"] not in (0, 1):
            skipped.append(f"{file.name}:{n}: label {obj['label']!r} is not 0 or 1")
            continue
        try:
            image = inside_root(path, obj["img"], allow_outside_root)
        except OutsideRoot as e:
            skipped.append(f"{file.name}:{n}: {e}")
            continue
        key = str(obj.get("id", f"{file.name}:{n}"))
        rows.append((key, obj["text"], None, str(image), obj["label"]))
    return LabeledRows(_some(rows, skipped, file), HATEFUL_MEMES_CLASSES, f"hateful_memes {split}", skipped)
