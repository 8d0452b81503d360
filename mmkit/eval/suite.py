"""An evaluation suite: benchmark tasks listed in a YAML file, run on one model, reported as the paper does.

A suite file::

    root: /data                     # optional: where relative paths start (else the file's folder,
                                    # or the command line's data_root=)
    tasks:
      - {name: imagenet, kind: linear_probe, layout: folder, path: imagenet, split: val,
         classnames: LOC_synset_mapping.txt}
      - {name: cifar10, kind: zero_shot, layout: cifar, path: cifar-10-batches-py, split: test}
      - {name: coco, kind: retrieval, layout: karpathy, path: coco, split: test, annotations: dataset_coco.json}

Each task: ``name``, ``kind`` (``zero_shot`` | ``linear_probe`` | ``retrieval``), ``layout`` (see
:mod:`mmkit.eval.benchmarks`), ``path``, ``split`` (default ``test``), ``train_split`` (linear probes,
default ``train``), ``templates`` (zero-shot: a file of templates or a list; default the set's own, else
mmkit's), ``paper`` (the published number to print beside; default :data:`PAPER` by name) and the
layout's own keys.

:func:`run_suite` computes each task's metrics — ``accuracy`` (zero-shot, probes),
``image_to_text_r1/5/10`` and ``text_to_image_r1/5/10`` (retrieval), ``samples`` — into
``<out>/results.json`` after every task (a rerun skips the tasks it holds), and writes
``<out>/results.md``: one row per task, the paper's number beside it, and the vision average.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmkit.eval.benchmarks import BenchmarkSet, clean_template, layout_keys, open_benchmark
from mmkit.eval.features import FeatureCache, image_features, model_digest, text_embeddings
from mmkit.eval.probe import fit_linear_probe
from mmkit.eval.retrieval import multi_caption_retrieval
from mmkit.eval.zero_shot import DEFAULT_TEMPLATES
from mmkit.utils.errors import InputError, MissingError

KINDS = ("zero_shot", "linear_probe", "retrieval", "finetune")

#: The published FLAVA numbers (percent) the table prints beside a task of the same name: Singh et al.
#: 2022, Table 4, as recorded in docs/FLAVA.md ("Published results").
PAPER: dict[str, dict[str, float]] = {
    "imagenet": {"accuracy": 75.54},
    "coco": {"image_to_text_r1": 42.74, "text_to_image_r1": 38.38},
    "flickr30k": {"image_to_text_r1": 67.70, "text_to_image_r1": 65.22},
}
#: The paper's vision average over its 22 linear-probe tasks and NLP average over its 8 GLUE tasks
#: (Table 4, docs/FLAVA.md).
PAPER_VISION_AVERAGE = 79.44
PAPER_NLP_AVERAGE = 78.19


@dataclass
class SuiteTask:
    """One task of a suite file (see the module docstring)."""

    name: str
    kind: str
    layout: str
    path: str
    split: str = "test"
    train_split: str = "train"
    templates: str | list[str] | None = None
    paper: dict[str, float] | float | None = None
    keys: dict[str, Any] = field(default_factory=dict)
    task: str | None = None  # kind finetune: the named task (``glue:cola``, ``vqav2``, ...)

    def open(self, split: str | None = None) -> BenchmarkSet:
        return open_benchmark(self.layout, self.path, split or self.split, **self.keys)


def load_suite(path: str | Path, data_root: str | None = None,
               finetune_keys: set[str] | None = None) -> list[SuiteTask]:  # fmt: skip
    """Read and check a suite file; every problem is reported at once, naming the task and the key.

    Args:
        finetune_keys: the keys a ``kind: finetune`` entry may set (the finetuning recipe's); None: any.

    Raises:
        ValueError: unknown kinds, layouts, tasks or keys, missing fields, duplicate names.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MissingError(f"suite file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"suite file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise InputError(f"suite file {path} must hold a mapping with a 'tasks' list")
    root = Path(data_root or data.get("root") or path.parent)
    tasks, problems, seen = [], [], set()
    for i, entry in enumerate(data["tasks"]):
        where = f"tasks[{i}]" + (f" ({entry.get('name')})" if isinstance(entry, dict) and entry.get("name") else "")
        task = _suite_task(entry, where, root, finetune_keys, problems)
        if task is None:
            continue
        if task.name in seen:
            problems.append(f"{where}: the name {task.name!r} is used twice")
        seen.add(task.name)
        tasks.append(task)
    if problems:
        raise InputError(f"suite file {path}: " + "; ".join(problems))
    return tasks


_COMMON = {"name", "kind", "layout", "path", "split", "train_split", "templates", "paper"}


def _suite_task(entry: Any, where: str, root: Path, finetune_keys: set[str] | None,
                problems: list[str]) -> SuiteTask | None:  # fmt: skip
    """One entry as a :class:`SuiteTask`, or None with its problems appended."""
    from mmkit.eval.benchmarks import LAYOUTS
    from mmkit.eval.finetune_tasks import FINETUNE_TASKS

    if not isinstance(entry, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    finetune = entry.get("kind") == "finetune"
    missing = [k for k in ("name", "kind", "task" if finetune else "layout", "path") if k not in entry]
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
        return None
    if entry["kind"] not in KINDS:
        problems.append(f"{where}: kind {entry['kind']!r} is not one of {', '.join(KINDS)}")
    p = str(entry["path"])
    p = p if "://" in p or Path(p).is_absolute() else str(root / p)
    if finetune:
        if entry["task"] not in FINETUNE_TASKS:
            problems.append(f"{where}: task {entry['task']!r} is not one of {', '.join(FINETUNE_TASKS)}")
        keys = {k: v for k, v in entry.items() if k not in ("name", "kind", "task", "path", "paper")}
        unknown = sorted(set(keys) - finetune_keys) if finetune_keys is not None else []
        if unknown:
            problems.append(f"{where}: unknown finetune key(s) {', '.join(unknown)} (valid: "
                            f"{', '.join(sorted(finetune_keys or ()))})")  # fmt: skip
        return SuiteTask(str(entry["name"]), "finetune", "", p, paper=entry.get("paper"), keys=keys,
                         task=str(entry["task"]))  # fmt: skip
    if entry["layout"] not in LAYOUTS:
        problems.append(f"{where}: layout {entry['layout']!r} is not one of {', '.join(LAYOUTS)}")
        return None
    keys = {k: v for k, v in entry.items() if k not in _COMMON}
    unknown = sorted(set(keys) - set(layout_keys(entry["layout"])))
    if unknown:
        valid = ", ".join(sorted(_COMMON | set(layout_keys(entry["layout"]))))
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)} (valid: {valid})")
    return SuiteTask(str(entry["name"]), entry["kind"], entry["layout"], p, str(entry.get("split", "test")),
                     str(entry.get("train_split", "train")), entry.get("templates"), entry.get("paper"),
                     keys)  # fmt: skip


@dataclass
class SuiteContext:
    """What every task needs: the model and its tokenizer, the image transform, the cache and the knobs."""

    model: torch.nn.Module
    tokenizer: Any
    transform: Callable[[Any], dict[str, torch.Tensor]]
    transform_id: str
    cache: FeatureCache | None = None
    batch_size: int = 128
    num_workers: int = 0
    max_bad_fraction: float = 0.01
    progress: bool = True
    seed: int = 0
    model_id: str | None = None

    def __post_init__(self) -> None:
        if self.cache is not None and self.model_id is None:
            self.model_id = model_digest(self.model)

    def images(self, dataset: BenchmarkSet, desc: str):
        return image_features(self.model, dataset, self.transform, transform_id=self.transform_id, cache=self.cache,
                              model_id=self.model_id, batch_size=self.batch_size, num_workers=self.num_workers,
                              max_bad_fraction=self.max_bad_fraction, progress=self.progress, desc=desc)  # fmt: skip

    def texts(self, texts: list[str], desc: str) -> torch.Tensor:
        if self.tokenizer is None:
            raise InputError("text tasks need a tokenizer: set tokenizer= or use a checkpoint exported with one")
        return text_embeddings(self.model, self.tokenizer, texts, cache=self.cache, model_id=self.model_id,
                               progress=self.progress, desc=desc)  # fmt: skip


def _templates(task: SuiteTask, dataset: BenchmarkSet) -> list[str]:
    t = task.templates
    if isinstance(t, str):
        file = Path(t) if Path(t).is_absolute() else Path(task.path) / t
        if not file.is_file():
            file = Path(t)
        t = [line.strip() for line in file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    templates = t or dataset.templates or list(DEFAULT_TEMPLATES)
    return [clean_template(x) for x in templates]


def zero_shot(task: SuiteTask, ctx: SuiteContext) -> dict[str, Any]:
    """Accuracy of the class-prompt ensemble (Radford et al. 2021, §3.1.4) on the split."""
    ds = task.open()
    if ds.kind != "classification" or not ds.classnames:
        raise InputError(f"task {task.name}: zero-shot needs a classification set with class names ({ds.describe()})")
    templates = _templates(task, ds)
    feats = ctx.images(ds, f"{task.name} [{task.split}]")
    prompts = [t.format(c) for c in ds.classnames for t in templates]
    emb = ctx.texts(prompts, f"{task.name} prompts").reshape(len(ds.classnames), len(templates), -1)
    classes = torch.nn.functional.normalize(emb.mean(1), dim=-1)
    accuracy = (feats.embeddings @ classes.T).argmax(1).eq(feats.labels).float().mean().item()
    return {"accuracy": accuracy, "samples": len(feats.keys), "skipped": len(feats.skipped),
            "classes": len(ds.classnames), "templates": len(templates)}  # fmt: skip


def linear_probe(task: SuiteTask, ctx: SuiteContext) -> dict[str, Any]:
    """Accuracy of the logistic-regression probe on frozen features (:mod:`mmkit.eval.probe`)."""
    train_ds, test_ds = task.open(task.train_split), task.open()
    if train_ds.kind != "classification":
        raise InputError(f"task {task.name}: a linear probe needs a classification set ({train_ds.describe()})")
    if train_ds.classnames != test_ds.classnames:
        raise InputError(
            f"task {task.name}: the {task.train_split!r} and {task.split!r} splits have different classes "
            f"({len(train_ds.classnames or ())} vs {len(test_ds.classnames or ())}): their labels would not match"
        )
    train = ctx.images(train_ds, f"{task.name} [{task.train_split}]")
    test = ctx.images(test_ds, f"{task.name} [{task.split}]")
    classes = len(train_ds.classnames) if train_ds.classnames else None
    device = next(ctx.model.parameters()).device  # solved where the model runs (a GPU when there is one)
    probe = fit_linear_probe(train.features.to(device), train.labels.to(device), seed=ctx.seed, num_classes=classes)
    accuracy = probe.accuracy(test.features.to(device), test.labels)
    return {"accuracy": accuracy, "samples": len(test.keys), "train_samples": len(train.keys),
            "skipped": len(test.skipped) + len(train.skipped), "l2": probe.l2}  # fmt: skip


def retrieval(task: SuiteTask, ctx: SuiteContext) -> dict[str, Any]:
    """Image <-> text recall@1/5/10, several captions per image (:func:`multi_caption_retrieval`)."""
    ds = task.open()
    if ds.kind != "retrieval":
        raise InputError(f"task {task.name}: retrieval needs a set of images with captions ({ds.describe()})")
    feats = ctx.images(ds, f"{task.name} [{task.split}]")
    captions = [c for cs in feats.captions for c in cs]
    owner = torch.tensor([i for i, cs in enumerate(feats.captions) for _ in cs])
    text = ctx.texts(captions, f"{task.name} captions")
    out: dict[str, Any] = multi_caption_retrieval(feats.embeddings, text, owner)
    out.update(samples=len(feats.keys), captions=len(captions), skipped=len(feats.skipped))
    return out


RUNNERS = {"zero_shot": zero_shot, "linear_probe": linear_probe, "retrieval": retrieval}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def run_suite(tasks: list[SuiteTask], ctx: SuiteContext, out: str | Path, *, checkpoint: str | None = None,
              log: Callable[[str], None] = print,
              runners: dict[str, Callable[[SuiteTask, SuiteContext], dict[str, Any]]] | None = None,
              ) -> dict[str, Any]:  # fmt: skip
    """Run every task not yet in ``<out>/results.json``; write it after each task and ``results.md`` at the end.

    Args:
        runners: extra task kinds, ``{kind: runner(task, ctx) -> metrics}`` (``finetune`` comes from
            ``recipes/flava/evaluate.py``, which runs the finetuning recipe).

    Returns:
        ``{task name: metrics}`` of every task in the file; each also records its ``kind`` and the
        ``seconds`` it took (wall time, as first run).
    """
    runners = {**RUNNERS, **(runners or {})}
    missing = sorted({t.kind for t in tasks} - set(runners))
    if missing:
        raise InputError(
            f"no runner for task kind(s) {', '.join(missing)}: run the suite with recipes/flava/evaluate.py"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if results.get("_checkpoint", checkpoint) != checkpoint:
        raise InputError(
            f"{path} holds results of checkpoint {results['_checkpoint']}, not {checkpoint}: choose another out="
        )
    results["_checkpoint"] = checkpoint
    for task in tasks:
        if task.name in results:
            log(f"{task.name}: done already ({path})")
            continue
        start = time.perf_counter()
        metrics = runners[task.kind](task, ctx)
        seconds = time.perf_counter() - start
        results[task.name] = {"kind": task.kind, **metrics, "seconds": round(seconds, 3)}
        _write_json(path, results)
        shown = _metrics_shown(task)[0]
        log(
            f"{task.name}: {task.kind} {shown} {metrics[shown]:.4f} on {metrics['samples']:,} samples ({seconds:.1f} s)"
        )
    (out / "results.md").write_text(results_table(tasks, results, checkpoint))
    print(f"wrote {path} and {out / 'results.md'}", file=sys.stderr)
    return results


def _metrics_shown(task: SuiteTask) -> list[str]:
    """The metrics a task's rows show, the headline (the one the paper reports) first."""
    if task.kind == "finetune":
        from mmkit.eval.finetune_tasks import finetune_task

        spec = finetune_task(task.task)
        names = spec.reported_names()
        head = next(iter(spec.paper), names[0])
        return [head, *[n for n in names if n != head]]
    return ["accuracy"] if task.kind != "retrieval" else ["image_to_text_r1", "text_to_image_r1"]


def _paper(task: SuiteTask) -> dict[str, float]:
    if isinstance(task.paper, dict):
        return task.paper
    if isinstance(task.paper, int | float):
        return {_metrics_shown(task)[0]: float(task.paper)}
    if task.kind == "finetune":
        from mmkit.eval.finetune_tasks import finetune_task

        return finetune_task(task.task).paper
    return PAPER.get(task.name, {})


def results_table(tasks: list[SuiteTask], results: dict[str, Any], checkpoint: str | None) -> str:
    """The Markdown report: one row per task and metric (percent), the paper's number beside it, and the
    averages the paper gives (vision: linear probes; NLP: GLUE; multimodal: the finetuned three)."""

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.2f}"

    lines = [f"# Evaluation of {checkpoint or 'a randomly initialised model'}", "",
             "| task | kind | metric | mmkit | FLAVA paper | samples |", "|---|---|---|---|---|---|"]  # fmt: skip
    groups: dict[str, list[tuple[float, float | None]]] = {"vision": [], "glue": [], "multimodal": []}
    for task in tasks:
        r = results.get(task.name)
        if r is None:
            lines.append(f"| {task.name} | {task.kind} | — | not run | | |")
            continue
        paper, shown = _paper(task), _metrics_shown(task)
        for m in shown:
            value = paper.get(m)
            lines.append(f"| {task.name} | {task.kind} | {m} | {pct(r.get(m))} | "
                         f"{'' if value is None else f'{value:.2f}'} | {r['samples']:,} |")  # fmt: skip
        group = _group(task)
        if group is not None:
            groups[group].append((r[shown[0]], paper.get(shown[0])))
    # (group, label, the paper's average over its whole group and that group's size)
    averages = (("vision", "Vision average (linear probes", PAPER_VISION_AVERAGE, 22),
                ("glue", "NLP average (GLUE", PAPER_NLP_AVERAGE, 8),
                ("multimodal", "Multimodal average (finetuned", None, None))  # fmt: skip
    for group, label, published, size in averages:
        scores = groups[group]
        if not scores:
            continue
        papers = [p for _, p in scores if p is not None]
        notes = [f"the paper's on the same {len(papers)}: {statistics.fmean(papers):.2f}"] if papers else []
        if published is not None:  # the whole group run: its own average is the paper's
            notes = [n for n in notes if len(papers) != size] + [f"the paper's over its {size} tasks: {published:.2f}"]
        lines += ["", f"{label}, {len(scores)} task(s)): **{100 * statistics.fmean(v for v, _ in scores):.2f}**"
                  + "".join(f" — {n}" if i == 0 else f"; {n}" for i, n in enumerate(notes)) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _group(task: SuiteTask) -> str | None:
    if task.kind == "linear_probe":
        return "vision"
    if task.kind == "finetune":
        from mmkit.eval.finetune_tasks import finetune_task

        return finetune_task(task.task).group
    return None
