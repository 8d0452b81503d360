"""FLAVA's finetuning datasets in miniature, in their released layouts, from the built-in shapes data, so
the finetuning suite runs on a fresh clone with nothing downloaded (``suites/shapes_finetune.yaml``)::

    python -m mmkit.eval.benchmarks.shapes_finetune --out data/shapes-finetune
    python recipes/flava/evaluate.py suite=suites/shapes_finetune.yaml data_root=data/shapes-finetune \\
        checkpoint=runs/demo/final out=runs/demo/finetune-suite

The files are the real ones' names, headers, fields, quoting and parquet schema (``docs/EVALUATION.md``);
the labels are learnable from the pictures and captions:

* ``glue_data/<Task>/{train,dev}.tsv`` (MNLI: ``dev_matched``, ``dev_mismatched``) as GLUE's download
  script writes them, and the hub's ``glue`` parquet copy (``glue/<config>/<split>-00000-of-00001.parquet``):
  CoLA a caption or its words reversed, SST-2 warm or cool first colour, MRPC/QQP/RTE/STS-B a caption
  against itself or with its colour swapped, MNLI entailed / contradicted / neutral, QNLI a colour question;
* ``vqav2/``: VQA v2's question and annotation JSON files and COCO-named JPEGs (colour and shape questions,
  ten human answers in several spellings, or ten identical ones, some unnormalised), and test-dev's
  questions without answers;
* ``snli-ve/``: ``snli_ve_{train,dev,test}.jsonl`` with ``Flickr30K/flickr30k_images/``;
* ``hateful_memes/``: ``{train,dev_seen,test_seen}.jsonl`` and ``img/`` ("hateful" = the first shape is a circle).
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

from mmkit.data import TarShards, decode_text, shapes_dataset
from mmkit.data.tasks import COLOR_NAMES, parse_first_group
from mmkit.utils.errors import InputError, run_cli


def shapes(n: int, offset: int = 0, train: bool = False) -> list[tuple[bytes, str, dict[str, str]]]:
    """``(png bytes, caption, parsed first group)`` of ``n`` built-in pairs from ``offset``: training pairs
    for a training split, held-out pairs (which pretraining never saw) for an evaluation split."""
    data = shapes_dataset()
    pairs = TarShards(data.train_pairs if train else data.val_pairs)
    if offset + n > len(pairs):
        raise InputError(
            f"the built-in set has {len(pairs)} {'training' if train else 'held-out'} pairs: "
            f"{offset + n} asked for (use fewer samples per split)"
        )
    out = []
    for i in range(offset, offset + n):
        rec = pairs[i]
        caption = decode_text(rec)
        out.append((rec.image, caption, parse_first_group(caption)))
    return out


def jpeg(png: bytes) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _swap_color(caption: str, rng: random.Random) -> str:
    words = caption.split()
    words[2] = rng.choice([c for c in COLOR_NAMES if c != words[2]])
    return " ".join(words)


def glue_rows(task: str, split: str, n: int) -> list[tuple[str, str | None, str]]:
    """``(text, pair, label as the TSV writes it)`` rows for one GLUE task, from shapes captions."""
    rng = random.Random(f"{task}{split}")
    samples = shapes(n, offset=n if "mismatched" in split else 0, train=split == "train")
    rows = []
    for k, (_, caption, first) in enumerate(samples):
        other = _swap_color(caption, rng)
        same = k % 2 == 0
        if task == "cola":
            words = caption.split()
            rows.append((caption, None, "1") if same else (" ".join(reversed(words)), None, "0"))
        elif task == "sst2":
            rows.append((caption, None, "1" if first["color"] in ("red", "yellow", "orange") else "0"))
        elif task in ("mrpc", "qqp"):
            rows.append((caption, caption if same else other, "1" if same else "0"))
        elif task == "stsb":
            rows.append((caption, caption if same else other, "5.000" if same else "1.250"))
        elif task == "mnli":
            kind = k % 3
            pair = (caption, other, samples[(k + 1) % n][1])[kind]
            rows.append((caption, pair, ("entailment", "contradiction", "neutral")[kind]))
        elif task == "qnli":
            rows.append(
                (
                    f"is it {first['color']}?" if same else f"is it {other.split()[2]}?",
                    caption,
                    "entailment" if same else "not_entailment",
                )
            )
        elif task == "rte":
            rows.append((caption, caption if same else other, "entailment" if same else "not_entailment"))
    return rows


def _tsv_lines(task: str, split: str, rows) -> list[str]:
    if task == "cola":  # no header: source, label, original label ("*" when unacceptable), sentence
        return [f"gj04\t{y}\t{'' if y == '1' else '*'}\t{t}" for t, _, y in rows]
    if task == "sst2":
        return ["sentence\tlabel", *[f"{t}\t{y}" for t, _, y in rows]]
    if task == "mrpc":
        return [
            "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
            *[f"{y}\t{100 + i}\t{200 + i}\t{t}\t{p}" for i, (t, p, y) in enumerate(rows)],
        ]
    if task == "qqp":
        return [
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            *[f"{i}\t{2 * i}\t{2 * i + 1}\t{t}\t{p}\t{y}" for i, (t, p, y) in enumerate(rows)],
        ]
    if task == "stsb":
        return [
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
            *[
                f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{t}\t{p}\t{y}"
                for i, (t, p, y) in enumerate(rows)
            ],
        ]
    if task == "mnli":
        head = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
        head += "sentence2_parse\tsentence1\tsentence2"
        if split == "train":
            return [
                head + "\tlabel1\tgold_label",
                *[
                    f"{i}\t{i}\t{i}e\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{t}\t{p}\t{y}\t{y}"
                    for i, (t, p, y) in enumerate(rows)
                ],
            ]
        return [
            head + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
            *[
                f"{i}\t{i}\t{i}e\tfiction\t( x )\t( y )\t(ROOT x)\t(ROOT y)\t{t}\t{p}\t{y}\t{y}\t{y}\t{y}\t{y}\t{y}"
                for i, (t, p, y) in enumerate(rows)
            ],
        ]
    if task == "qnli":
        return ["index\tquestion\tsentence\tlabel", *[f"{i}\t{t}\t{p}\t{y}" for i, (t, p, y) in enumerate(rows)]]
    return ["index\tsentence1\tsentence2\tlabel", *[f"{i}\t{t}\t{p}\t{y}" for i, (t, p, y) in enumerate(rows)]]


FOLDERS = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "qqp": "QQP",
    "stsb": "STS-B",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
}


def glue_splits(task: str) -> tuple[str, ...]:
    return ("train", "dev_matched", "dev_mismatched") if task == "mnli" else ("train", "dev")


def glue_data(root: Path, n_train: int = 24, n_dev: int = 12, tasks=tuple(FOLDERS)) -> Path:
    """``glue_data/<TASK>/{train,dev}.tsv`` (MNLI: ``dev_matched``, ``dev_mismatched``) as GLUE's download
    script writes them, plus each task's unlabelled ``test.tsv``."""
    for task in tasks:
        folder = root / FOLDERS[task]
        folder.mkdir(parents=True, exist_ok=True)
        for split in glue_splits(task):
            rows = glue_rows(task, split, n_train if split == "train" else n_dev)
            (folder / f"{split}.tsv").write_text("\n".join(_tsv_lines(task, split, rows)) + "\n", encoding="utf-8")
        (folder / "test.tsv").write_text("index\tsentence\n0\tunlabelled\n", encoding="utf-8")
    return root


HUB = {
    "cola": ("sentence", None, ["unacceptable", "acceptable"]),
    "sst2": ("sentence", None, ["negative", "positive"]),
    "mrpc": ("sentence1", "sentence2", ["not_equivalent", "equivalent"]),
    "qqp": ("question1", "question2", ["not_duplicate", "duplicate"]),
    "stsb": ("sentence1", "sentence2", None),
    "mnli": ("premise", "hypothesis", ["entailment", "neutral", "contradiction"]),
    "qnli": ("question", "sentence", ["entailment", "not_entailment"]),
    "rte": ("sentence1", "sentence2", ["entailment", "not_entailment"]),
}
HUB_SPLIT = {
    "train": "train",
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}


def glue_parquet(root: Path, n_train: int = 24, n_dev: int = 12, tasks=tuple(FOLDERS)) -> Path:
    """The hub's ``glue`` dataset: ``<config>/<split>-00000-of-00001.parquet`` with the task's columns, an
    ``idx`` column and ``label`` (a ClassLabel, names in the ``huggingface`` schema metadata; a float for STS-B)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for task in tasks:
        text, pair, names = HUB[task]
        for split in glue_splits(task):
            rows = glue_rows(task, split, n_train if split == "train" else n_dev)
            tsv_values = ("0", "1") if task in ("cola", "sst2", "mrpc", "qqp") else names
            labels = [float(y) for _, _, y in rows] if names is None else [tsv_values.index(y) for _, _, y in rows]
            columns = {text: [t for t, _, _ in rows]}
            if pair:
                columns[pair] = [p for _, p, _ in rows]
            columns["label"] = pa.array(labels, type=pa.float32() if names is None else pa.int64())
            columns["idx"] = list(range(len(rows)))
            label_feature = (
                {"dtype": "float32", "_type": "Value"} if names is None else {"names": names, "_type": "ClassLabel"}
            )
            features = {c: {"dtype": "string", "_type": "Value"} for c in (text, pair) if c}
            features.update(label=label_feature, idx={"dtype": "int32", "_type": "Value"})
            table = pa.table(columns).replace_schema_metadata(
                {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
            )
            (root / task).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, root / task / f"{HUB_SPLIT[split]}-00000-of-00001.parquet")
    return root


def _vqa_answers(answer: str, k: int) -> list[dict]:
    """Ten human answers to a question on image ``k``, by ``k % 4``: the true one in several spellings that
    normalise to it (0), nine of those and one stray "maybe" (1), ten identical unnormalised spellings
    (2: ``"Red"``, which the official evaluation compares as it is, so the vocabulary's ``"red"`` scores 0),
    ten identical normal ones (3)."""
    spellings = [answer, answer.capitalize(), f"{answer}.", f"the {answer}", *[answer] * 6]
    given = {0: spellings, 1: [*spellings[:9], "maybe"], 2: [answer.capitalize()] * 10, 3: [answer] * 10}[k % 4]
    return [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(given)]


def vqav2(root: Path, n_train: int = 12, n_val: int = 6) -> Path:
    """``v2_OpenEnded_mscoco_{train,val}2014_questions.json``, ``v2_mscoco_{train,val}2014_annotations.json``
    and ``{train,val}2014/COCO_<split>2014_<id:012d>.jpg``: two questions per image (colour, shape); and
    test-dev as released, questions only (``v2_OpenEnded_mscoco_test-dev2015_questions.json``, images in
    ``test2015/``), ``n_val`` other images."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train2014", n_train), ("val2014", n_val), ("test-dev2015", n_val)):
        folder = "test2015" if split == "test-dev2015" else split
        (root / folder).mkdir(exist_ok=True)
        questions, annotations = [], []
        picked = shapes(n, offset=n_val if folder == "test2015" else 0, train=split == "train2014")
        for k, (png, _, first) in enumerate(picked):
            image_id = {"train2014": 1, "val2014": 500_000, "test-dev2015": 900_000}[split] + k
            (root / folder / f"COCO_{folder}_{image_id:012d}.jpg").write_bytes(jpeg(png))
            for j, (q, a, qtype) in enumerate(
                (
                    ("What color is the first shape?", first["color"], "what color is the"),
                    ("What shape is first?", first["shape"], "what"),
                )
            ):
                qid = image_id * 10 + j
                questions.append({"image_id": image_id, "question": q, "question_id": qid})
                annotations.append(
                    {
                        "question_type": qtype,
                        "multiple_choice_answer": a,
                        "answers": _vqa_answers(a, k),
                        "image_id": image_id,
                        "answer_type": "other",
                        "question_id": qid,
                    }
                )
        info = {"description": "miniature VQA v2", "version": "2.0"}
        (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
            json.dumps(
                {
                    "info": info,
                    "task_type": "Open-Ended",
                    "data_type": "mscoco",
                    "license": {},
                    "data_subtype": split,
                    "questions": questions,
                }
            )
        )
        if split != "test-dev2015":  # the test splits' answers stay on the server
            (root / f"v2_mscoco_{split}_annotations.json").write_text(
                json.dumps(
                    {
                        "info": info,
                        "license": {},
                        "data_type": "mscoco",
                        "data_subtype": split,
                        "annotations": annotations,
                    }
                )
            )
    return root


def snli_ve(root: Path, n: int = 12, n_eval: int | None = None) -> Path:
    """``snli_ve_{train,dev,test}.jsonl`` with ``Flickr30K/flickr30k_images/<id>.jpg``: per image an
    entailed, a contradicted (colour swapped) and a neutral (another image's caption) hypothesis."""
    images = root / "Flickr30K" / "flickr30k_images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    n_eval = n if n_eval is None else n_eval
    for split, count, offset in (("train", n, 0), ("dev", n_eval, 0), ("test", n_eval, n_eval)):
        samples = shapes(count, offset, train=split == "train")
        lines = []
        for k, (png, caption, _) in enumerate(samples):
            flickr_id = str((1_000_000 if split == "train" else 3_000_000) + offset + k)
            (images / f"{flickr_id}.jpg").write_bytes(jpeg(png))
            label = ("entailment", "contradiction", "neutral")[k % 3]
            hypothesis = (caption, _swap_color(caption, rng), samples[(k + 1) % count][1])[k % 3]
            lines.append(
                json.dumps(
                    {
                        "annotator_labels": [label],
                        "captionID": f"{flickr_id}.jpg#0",
                        "gold_label": label,
                        "pairID": f"{flickr_id}.jpg#0r1{label[0]}",
                        "sentence1": caption,
                        "sentence2": hypothesis,
                        "Flickr30K_ID": flickr_id,
                        "sentence1_parse": "(ROOT)",
                        "sentence2_parse": "(ROOT)",
                    }
                )
            )
        (root / f"snli_ve_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def hateful_memes(root: Path, n: int = 12, n_eval: int | None = None) -> Path:
    """``{train,dev_seen,test_seen}.jsonl`` and ``img/<id>.png``; "hateful" = the caption names circles."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    n_eval = n if n_eval is None else n_eval
    for split, count, offset in (("train", n, 0), ("dev_seen", n_eval, 0), ("test_seen", n_eval, n_eval)):
        lines = []
        for k, (png, caption, first) in enumerate(shapes(count, offset, train=split == "train")):
            meme_id = (10_000 if split == "train" else 50_000) + offset + k
            (root / "img" / f"{meme_id}.png").write_bytes(png)
            label = int(first["shape"] == "circle") if k > 1 else k  # both classes in every split
            lines.append(json.dumps({"id": meme_id, "img": f"img/{meme_id}.png", "label": label, "text": caption}))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_finetune_benchmarks(out: str | Path, train: int = 200, dev: int = 100) -> Path:
    """Write every layout above under ``out`` (once: a ``DONE`` marker is written last).

    Args:
        train, dev: samples per training and per evaluation split (VQA v2: images, two questions each).
    """
    out = Path(out)
    if (out / "DONE").is_file() and (out / "DONE").read_text() == f"{train} {dev}":
        return out
    glue_data(out / "glue_data", n_train=train, n_dev=dev)
    glue_parquet(out / "glue", n_train=train, n_dev=dev)
    vqav2(out / "vqav2", n_train=train, n_val=dev)
    snli_ve(out / "snli-ve", n=train, n_eval=dev)
    hateful_memes(out / "hateful_memes", n=train, n_eval=dev)
    (out / "DONE").write_text(f"{train} {dev}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmkit.eval.benchmarks.shapes_finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=200, help="samples per training split (default 200)")
    parser.add_argument("--dev", type=int, default=100, help="samples per evaluation split (default 100)")
    args = parser.parse_args(argv)
    print(f"wrote {write_finetune_benchmarks(args.out, args.train, args.dev)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
