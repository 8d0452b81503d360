"""FLAVA's finetuned tasks by name: what each reads, how it is scored, and which split it reports.

``task=glue:<cola|sst2|mrpc|qqp|stsb|mnli|qnli|rte>``, ``task=vqav2``, ``task=snli_ve`` or
``task=hateful_memes`` in ``recipes/flava/finetune.py`` (or a suite's ``kind: finetune`` entry) reads the
dataset's own files (:mod:`mmkit.eval.benchmarks.glue`, :mod:`mmkit.eval.benchmarks.vl_tasks`) and takes
its modality, problem type and metrics from here:

=================  ==========  =============  ==========================  ============  ==================
task               encoder     problem        metrics (first selects)     selects on    reports
=================  ==========  =============  ==========================  ============  ==================
glue:cola          text        single_label   matthews                    dev           dev
glue:sst2          text        single_label   accuracy                    dev           dev
glue:mrpc, qqp     text        single_label   accuracy, f1                dev           dev
glue:stsb          text        regression     pearson, spearman           dev           dev
glue:mnli          text        single_label   accuracy                    dev_matched   dev_matched as
                                                                                        ``accuracy_matched``,
                                                                                        dev_mismatched as
                                                                                        ``accuracy_mismatched``
glue:qnli, rte     text        single_label   accuracy                    dev           dev
vqav2              multimodal  multi_label    vqa_accuracy                val           val
snli_ve            multimodal  single_label   accuracy                    dev           test
hateful_memes      multimodal  single_label   auroc, accuracy             dev_seen      test_seen
=================  ==========  =============  ==========================  ============  ==================

GLUE's test labels are not public, so GLUE reports its dev sets (as the paper does); VQA v2's test-dev
and test-std are scored by its server only, so mmkit reports val (``docs/EVALUATION.md``). The best step
is chosen on the "selects on" split by the first metric (or ``metric=``, one of the task's), and the
reported metrics are those of that step. Every single-label task also reports ``mean_per_class_recall``
(balanced accuracy; MNLI: ``_matched``, ``_mismatched``) beside them: it never selects a step and is not
the number compared with the paper. VQA v2's ``vqa_accuracy`` is the official evaluation's
(:meth:`~mmkit.eval.benchmarks.vl_tasks.VQARows.official_accuracy`) on the predicted answer strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmkit.data import DataQualityError
from mmkit.data.tasks import LabeledRows
from mmkit.eval.benchmarks.glue import GLUE, read_glue
from mmkit.eval.benchmarks.vl_tasks import read_hateful_memes, read_snli_ve, read_vqav2, vqa_results
from mmkit.utils.errors import InputError


@dataclass(frozen=True)
class FinetuneTask:
    """One named task (see the module table).

    Attributes:
        report: ``{suffix: split}``; a metric ``m`` of split ``split`` is reported as ``m`` (empty suffix)
            or ``m_<suffix>``.
        predicts, results_file: splits without public labels (VQA v2's test-dev and test) for which
            ``predict=`` writes the challenge server's results file at the best step.
        keys: the reader's own keys beside ``path`` and ``split`` (``images``, ``answer_vocab_size``).
        paper: the published numbers (percent) by reported metric name (``docs/FLAVA.md``).
    """

    name: str
    modality: str
    problem_type: str
    metrics: tuple[str, ...]
    train: str
    select: str
    report: dict[str, str]
    reader: Callable[..., LabeledRows]
    keys: tuple[str, ...] = ()
    paper: dict[str, float] = field(default_factory=dict)
    group: str = "multimodal"  # which average of the report it counts in: "glue" or "multimodal"
    predicts: tuple[str, ...] = ()  # unlabelled splits it can write a results file for (the server scores it)
    results_file: Callable[[LabeledRows, list[int]], Any] | None = None  # (split, class id per row) -> JSON

    @property
    def also_reports(self) -> tuple[str, ...]:
        """Metrics reported beside :attr:`metrics` that never select a step nor stand for the paper's number:
        a single-label task's ``mean_per_class_recall``."""
        return ("mean_per_class_recall",) if self.problem_type == "single_label" else ()

    def reported_names(self, also: bool = False) -> list[str]:
        """The metric names the task reports, e.g. ``["accuracy_matched", "accuracy_mismatched"]``; with
        ``also``, those of :attr:`also_reports` too (every name in ``results.json``'s ``metrics``)."""
        names = (*self.metrics, *(self.also_reports if also else ()))
        return [m if not s else f"{m}_{s}" for s in self.report for m in names]


#: FLAVA's published numbers (Singh et al. 2022, Table 4; docs/FLAVA.md "Published results").
_GLUE_PAPER = {
    "cola": ("matthews", 50.65),
    "sst2": ("accuracy", 90.94),
    "mrpc": ("accuracy", 84.16),
    "qqp": ("accuracy", 88.74),
    "stsb": ("pearson", 85.67),
    "mnli": ("accuracy_matched", 80.33),
    "qnli": ("accuracy", 87.31),
    "rte": ("accuracy", 57.76),
}
_GLUE_METRICS = {
    "cola": ("matthews",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"),
}


def _glue_task(name: str) -> FinetuneTask:
    def reader(path: str | Path, split: str, classes: Any = None) -> LabeledRows:
        return read_glue(name, path, split)

    mnli = name == "mnli"
    metric, value = _GLUE_PAPER[name]
    return FinetuneTask(
        name=f"glue:{name}",
        modality="text",
        problem_type="regression" if name == "stsb" else "single_label",
        metrics=_GLUE_METRICS.get(name, ("accuracy",)),
        train="train",
        select="dev_matched" if mnli else "dev",
        report={"matched": "dev_matched", "mismatched": "dev_mismatched"} if mnli else {"": "dev"},
        reader=reader,
        paper={metric: value},
        group="glue",
    )


def _snli_ve(
    path: str | Path, split: str, images: str | None = None, classes: Any = None, allow_outside_root: bool = False
) -> LabeledRows:
    return read_snli_ve(path, split, images, allow_outside_root)


def _hateful_memes(path: str | Path, split: str, classes: Any = None, allow_outside_root: bool = False) -> LabeledRows:
    return read_hateful_memes(path, split, allow_outside_root)


FINETUNE_TASKS: dict[str, FinetuneTask] = {
    **{f"glue:{n}": _glue_task(n) for n in GLUE},
    "vqav2": FinetuneTask(
        "vqav2",
        "multimodal",
        "multi_label",
        ("vqa_accuracy",),
        "train",
        "val",
        {"": "val"},
        read_vqav2,
        ("images", "answer_vocab_size"),
        {"vqa_accuracy": 72.49},
        predicts=("test-dev", "test"),
        results_file=vqa_results,
    ),
    "snli_ve": FinetuneTask(
        "snli_ve",
        "multimodal",
        "single_label",
        ("accuracy",),
        "train",
        "dev",
        {"": "test"},
        _snli_ve,
        ("images", "allow_outside_root"),
        {"accuracy": 78.89},
    ),
    "hateful_memes": FinetuneTask(
        "hateful_memes",
        "multimodal",
        "single_label",
        ("auroc", "accuracy"),
        "train",
        "dev_seen",
        {"": "test_seen"},
        _hateful_memes,
        ("allow_outside_root",),
        {"auroc": 76.09},
    ),
}


def finetune_task(name: str) -> FinetuneTask:
    """The task called ``name``; an unknown name is an error listing the known ones."""
    if name not in FINETUNE_TASKS:
        raise InputError(f"unknown task {name!r}: choose one of {', '.join(FINETUNE_TASKS)}")
    return FINETUNE_TASKS[name]


def open_task_split(
    task: FinetuneTask,
    path: str | Path,
    split: str,
    *,
    max_bad_fraction: float = 0.01,
    classes: Any = None,
    **keys: Any,
) -> LabeledRows:
    """Read one split of ``task`` under ``path``; the rows the reader skipped are bounded by ``max_bad_fraction``.

    Args:
        classes: the training split's classes (VQA v2: its answer vocabulary, so every split shares it).
        keys: the task's own keys (``FinetuneTask.keys``); others are an error.

    Raises:
        DataQualityError: more than ``max_bad_fraction`` of the split's rows were skipped (the first named).
    """
    unknown = sorted(set(keys) - set(task.keys))
    if unknown:
        valid = ", ".join(task.keys) or "none"
        raise InputError(f"task {task.name} takes no key(s) {', '.join(unknown)}; its keys: {valid}")
    rows = task.reader(path, split, classes=classes, **{k: v for k, v in keys.items() if v is not None})
    bad, seen = len(rows.skipped), len(rows.skipped) + len(rows)
    if bad / seen > max_bad_fraction:
        shown = "; ".join(rows.skipped[:3])
        raise DataQualityError(
            f"{rows.name}: {bad} of {seen} records skipped ({bad / seen:.1%} > max_bad_fraction "
            f"{max_bad_fraction:.1%}), e.g. {shown}: fix the files or raise max_bad_fraction"
        )
    return rows
