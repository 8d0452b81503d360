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

KINDS = ("zero_shot", "linear_probe", "retrieval")

#: The published FLAVA numbers (percent) the table prints beside a task of the same name: Singh et al.
#: 2022, Table 4, as recorded in docs/FLAVA.md ("Published results").
PAPER: dict[str, dict[str, float]] = {
    "imagenet": {"accuracy": 75.54},
    "coco": {"image_to_text_r1": 42.74, "text_to_image_r1": 38.38},
    "flickr30k": {"image_to_text_r1": 67.70, "text_to_image_r1": 65.22},
}
#: The paper's vision average over its 22 linear-probe tasks (Table 4, docs/FLAVA.md).
PAPER_VISION_AVERAGE = 79.44


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

    def open(self, split: str | None = None) -> BenchmarkSet:
        return open_benchmark(self.layout, self.path, split or self.split, **self.keys)


def load_suite(path: str | Path, data_root: str | None = None) -> list[SuiteTask]:
    """Read and check a suite file; every problem is reported at once, naming the task and the key.

    Raises:
        ValueError: unknown kinds, layouts or keys, missing fields, duplicate names.
    """
    import yaml

    from mmkit.eval.benchmarks import LAYOUTS

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
    common = {"name", "kind", "layout", "path", "split", "train_split", "templates", "paper"}
    for i, entry in enumerate(data["tasks"]):
        where = f"tasks[{i}]" + (f" ({entry.get('name')})" if isinstance(entry, dict) and entry.get("name") else "")
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        missing = [k for k in ("name", "kind", "layout", "path") if k not in entry]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        if entry["kind"] not in KINDS:
            problems.append(f"{where}: kind {entry['kind']!r} is not one of {', '.join(KINDS)}")
        if entry["layout"] not in LAYOUTS:
            problems.append(f"{where}: layout {entry['layout']!r} is not one of {', '.join(LAYOUTS)}")
            continue
        keys = {k: v for k, v in entry.items() if k not in common}
        unknown = sorted(set(keys) - set(layout_keys(entry["layout"])))
        if unknown:
            valid = ", ".join(sorted(common | set(layout_keys(entry["layout"]))))
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)} (valid: {valid})")
        if entry["name"] in seen:
            problems.append(f"{where}: the name {entry['name']!r} is used twice")
        seen.add(entry["name"])
        p = str(entry["path"])
        p = p if "://" in p or Path(p).is_absolute() else str(root / p)
        tasks.append(SuiteTask(str(entry["name"]), entry["kind"], entry["layout"], p, str(entry.get("split", "test")),
                               str(entry.get("train_split", "train")), entry.get("templates"), entry.get("paper"),
                               keys))  # fmt: skip
    if problems:
        raise InputError(f"suite file {path}: " + "; ".join(problems))
    return tasks


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
              log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Run every task not yet in ``<out>/results.json``; write it after each task and ``results.md`` at the end.

    Returns:
        ``{task name: metrics}`` of every task in the file.
    """
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
        metrics = RUNNERS[task.kind](task, ctx)
        results[task.name] = {"kind": task.kind, **metrics}
        _write_json(path, results)
        shown = metrics.get("accuracy", metrics.get("image_to_text_r1"))
        log(f"{task.name}: {task.kind} {shown:.4f} on {metrics['samples']:,} samples")
    (out / "results.md").write_text(results_table(tasks, results, checkpoint))
    print(f"wrote {path} and {out / 'results.md'}", file=sys.stderr)
    return results


def _paper(task: SuiteTask) -> dict[str, float]:
    if isinstance(task.paper, dict):
        return task.paper
    if isinstance(task.paper, int | float):
        key = "accuracy" if task.kind != "retrieval" else "image_to_text_r1"
        return {key: float(task.paper)}
    return PAPER.get(task.name, {})


def results_table(tasks: list[SuiteTask], results: dict[str, Any], checkpoint: str | None) -> str:
    """The Markdown report: one row per task (percent), the paper's number beside it, the vision average."""

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.2f}"

    lines = [f"# Evaluation of {checkpoint or 'a randomly initialised model'}", "",
             "| task | kind | metric | mmkit | FLAVA paper | samples |", "|---|---|---|---|---|---|"]  # fmt: skip
    probes = []
    for task in tasks:
        r = results.get(task.name)
        if r is None:
            lines.append(f"| {task.name} | {task.kind} | — | not run | | |")
            continue
        paper = _paper(task)
        metrics = ["accuracy"] if task.kind != "retrieval" else ["image_to_text_r1", "text_to_image_r1"]
        for m in metrics:
            shown = paper.get(m)
            lines.append(f"| {task.name} | {task.kind} | {m} | {pct(r.get(m))} | "
                         f"{'' if shown is None else f'{shown:.2f}'} | {r['samples']:,} |")  # fmt: skip
        if task.kind == "linear_probe":
            probes.append(r["accuracy"])
    if probes:
        lines += ["", f"Vision average (linear probes, {len(probes)} task(s)): **{100 * statistics.fmean(probes):.2f}**"
                  f" — the paper's over its 22 tasks: {PAPER_VISION_AVERAGE:.2f}."]  # fmt: skip
    return "\n".join(lines) + "\n"
