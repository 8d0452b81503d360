"""GLUE's eight FLAVA tasks read from the files they ship in: the ``glue_data`` TSVs or the hub's parquet.

``path`` is the ``glue_data`` folder (holding ``CoLA/``, ``SST-2/``, ...), one task's folder, or a copy of
the hub's ``glue`` dataset (``<config>/<split>-00000-of-00001.parquet``, the config folder itself, or
``data/<split>-*.parquet``). Splits: ``train`` and ``dev`` (MNLI: ``dev_matched``, ``dev_mismatched``);
the hub's names (``validation``, ``validation_matched``, ...) are the same splits. The test splits carry
no labels and are not read. Facts recorded in ``docs/EVALUATION.md`` ("GLUE").

TSVs are read as GLUE's own scripts write them: tab-separated, no quoting (a ``"`` is text), a header row
except CoLA's ``train`` and ``dev`` (source, label, original label, sentence). A row with the wrong number
of fields or a label outside the task's classes is a named skip; a header that is another task's, or a
parquet file without the task's columns, is an error naming what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmkit.data.tasks import LabeledRows
from mmkit.eval.benchmarks.base import BenchmarkFormatError
from mmkit.utils.bounded import read_text_file
from mmkit.utils.errors import InputError, MissingError


@dataclass(frozen=True)
class GlueTask:
    """One task's files: its folder and hub names, columns (TSV and parquet) and classes in id order."""

    folder: str
    hub: str
    tsv_columns: tuple[str, str | None, str]  # text, pair, label (CoLA: positions in a headerless row)
    hub_columns: tuple[str, str | None]  # text, pair ("label" is the label column)
    classes: tuple[str, ...] | None  # None: regression
    tsv_labels: tuple[str, ...] | None = None  # the TSV's label values in class order (None: the class names)


GLUE: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", "cola", ("3", None, "1"), ("sentence", None), ("unacceptable", "acceptable"), ("0", "1")),
    "sst2": GlueTask(
        "SST-2", "sst2", ("sentence", None, "label"), ("sentence", None), ("negative", "positive"), ("0", "1")
    ),
    "mrpc": GlueTask(
        "MRPC",
        "mrpc",
        ("#1 String", "#2 String", "Quality"),
        ("sentence1", "sentence2"),
        ("not_equivalent", "equivalent"),
        ("0", "1"),
    ),
    "qqp": GlueTask(
        "QQP",
        "qqp",
        ("question1", "question2", "is_duplicate"),
        ("question1", "question2"),
        ("not_duplicate", "duplicate"),
        ("0", "1"),
    ),
    "stsb": GlueTask("STS-B", "stsb", ("sentence1", "sentence2", "score"), ("sentence1", "sentence2"), None),
    "mnli": GlueTask(
        "MNLI",
        "mnli",
        ("sentence1", "sentence2", "gold_label"),
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
    ),
    "qnli": GlueTask(
        "QNLI", "qnli", ("question", "sentence", "label"), ("question", "sentence"), ("entailment", "not_entailment")
    ),
    "rte": GlueTask(
        "RTE", "rte", ("sentence1", "sentence2", "label"), ("sentence1", "sentence2"), ("entailment", "not_entailment")
    ),
}
#: The hub's split names for GLUE's.
HUB_SPLITS = {
    "train": "train",
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}


def read_glue(name: str, path: str | Path, split: str) -> LabeledRows:
    """One split of GLUE task ``name`` (``cola``, ``sst2``, ``mrpc``, ``qqp``, ``stsb``, ``mnli``, ``qnli``, ``rte``).

    Returns:
        rows ``(key, text, text_pair, None, label)``: a class id (the task's classes, in the hub's order)
        or a float (STS-B); ``skipped`` names each row left out.

    Raises:
        MissingError: neither a TSV nor a parquet copy of the split under ``path``.
        BenchmarkFormatError: a file of another task (header or columns), naming the expected ones.
    """
    task = GLUE[name]
    valid = ("train", "dev_matched", "dev_mismatched") if name == "mnli" else ("train", "dev")
    if split not in valid:
        raise InputError(f"GLUE {task.folder} has no labelled split {split!r}: choose {', '.join(valid)}")
    root = Path(path)
    for folder in (root / task.folder, root):
        if (folder / f"{split}.tsv").is_file():
            return _read_tsv(name, task, folder / f"{split}.tsv")
    for folder in (root / task.hub, root):
        files = sorted(folder.glob(f"{HUB_SPLITS[split]}-*.parquet")) or sorted(
            folder.glob(f"data/{HUB_SPLITS[split]}-*.parquet")
        )
        if files:
            return _read_parquet(name, task, files)
    raise MissingError(
        f"no GLUE {task.folder} {split!r} split under {root}: expected {root}/{task.folder}/{split}.tsv "
        f"(glue_data) or {root}/{task.hub}/{HUB_SPLITS[split]}-*.parquet (the hub's copy)"
    )


def _label(task: GlueTask, raw: str) -> int | float:
    if task.classes is None:
        return float(raw)
    values = task.tsv_labels or task.classes
    if raw not in values:
        raise ValueError(f"label {raw!r} is not one of {', '.join(values)}")
    return values.index(raw)


def _whose_header(fields: list[str]) -> str | None:
    """The GLUE task whose TSV header ``fields`` is, if any (the one naming most of its columns)."""
    fits = [
        (sum(1 for c in t.tsv_columns if c), t.folder)
        for t in GLUE.values()
        if not t.tsv_columns[0].isdigit() and all(c in fields for c in t.tsv_columns if c is not None)
    ]
    return max(fits)[1] if fits else None


def _read_tsv(name: str, task: GlueTask, file: Path) -> LabeledRows:
    lines = read_text_file(file, f"GLUE {task.folder} file").split("\n")
    lines = [line.rstrip("\r") for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    headerless = task.tsv_columns[0].isdigit()
    if headerless:
        width, at = 4, [int(c) if c is not None else None for c in task.tsv_columns]
        first = lines[0].split("\t") if lines else []
        if len(first) != width and _whose_header(first):
            raise BenchmarkFormatError(
                file,
                f"is {_whose_header(first)}'s (header {' | '.join(first)}), not CoLA's: CoLA's rows have "
                "4 fields (source, label, original label, sentence) and no header",
            )
        body = list(enumerate(lines, 1))
    else:
        header = lines[0].split("\t") if lines else []
        missing = [c for c in task.tsv_columns if c is not None and c not in header]
        if missing:
            other = _whose_header(header)
            raise BenchmarkFormatError(
                file,
                f"is not {task.folder}'s: its header has no {', '.join(missing)} (expected "
                f"{', '.join(c for c in task.tsv_columns if c)}; found {' | '.join(header) or 'nothing'})"
                + (f" — it reads as {other}'s" if other else ""),
            )
        width, at = len(header), [header.index(c) if c is not None else None for c in task.tsv_columns]
        body = list(enumerate(lines[1:], 2))
    rows, skipped = [], []
    for n, line in body:
        fields = line.split("\t")
        where = f"{file.name}:{n}"
        if len(fields) != width:
            skipped.append(f"{where}: {len(fields)} tab-separated fields, expected {width}")
            continue
        try:
            label = _label(task, fields[at[2]])
        except ValueError as e:
            skipped.append(f"{where}: {e}")
            continue
        pair = fields[at[1]] if at[1] is not None else None
        rows.append((where, fields[at[0]], pair, None, label))
    return LabeledRows(rows, task.classes, f"glue:{name} {file.stem}", skipped)


def _hub_row_problem(task: GlueTask, text: object, pair: object, label: object) -> str | None:
    """Why a row of the hub's parquet cannot be used: a text that is not a string, a label that is not a
    class id (a number, for STS-B's regression); None when it can."""
    for column, value in zip(task.hub_columns, (text, pair), strict=True):
        if column is not None and not isinstance(value, str):
            return f"{column} is {type(value).__name__}, not a string"
    number = isinstance(label, int | float) and not isinstance(label, bool)
    if task.classes is None:
        return None if number else f"label {label!r} is not a number"
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(task.classes):
        return f"label {label!r} is not a class id of {', '.join(task.classes)}"
    return None


def _read_parquet(name: str, task: GlueTask, files: list[Path]) -> LabeledRows:
    import pyarrow.parquet as pq

    wanted = [c for c in (*task.hub_columns, "label") if c is not None]
    rows, skipped = [], []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # pyarrow's ArrowInvalid and friends: not a parquet file
            raise BenchmarkFormatError(f, f"not a parquet file ({type(e).__name__}: {e})") from None
        columns = pf.schema_arrow.names
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise BenchmarkFormatError(
                f,
                f"is not GLUE {task.folder}'s: no column {', '.join(missing)} (expected {', '.join(wanted)}; "
                f"found {', '.join(columns)})",
            )
        table = pf.read(columns=wanted).to_pydict()
        for i in range(pf.metadata.num_rows):
            row = [table[c][i] if c else None for c in (*task.hub_columns, "label")]
            problem = _hub_row_problem(task, *row)
            if problem:
                skipped.append(f"{f.name}:{i}: {problem}")
                continue
            rows.append((f"{f.name}:{i}", *row[:2], None, row[2]))
    return LabeledRows(rows, task.classes, f"glue:{name} {files[0].stem.split('-')[0]}", skipped)
