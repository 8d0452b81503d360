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
layout's own keys. A task's ``name`` is one path component (it names ``<out>/runs/<name>``); the file is
read and every value type-checked by :func:`~mmkit.eval.suite_file.load_suite`.

:func:`run_suite` computes each task's metrics — ``accuracy`` (zero-shot, probes),
``image_to_text_r1/5/10`` and ``text_to_image_r1/5/10`` (retrieval), ``samples`` — into
``<out>/results.json`` after every task (a rerun skips the tasks it holds), and writes
``<out>/results.md``: one row per task, the paper's number beside it, and the vision average.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmkit.eval.benchmarks import BenchmarkSet, clean_template
from mmkit.eval.features import FeatureCache, image_features, model_digest, text_embeddings
from mmkit.eval.metrics import mean_per_class_recall
from mmkit.eval.probe import fit_linear_probe
from mmkit.eval.retrieval import multi_caption_retrieval
from mmkit.eval.suite_file import CLASS_METRICS, SuiteTask
from mmkit.eval.suite_file import KINDS as KINDS  # their home before mmkit.eval.suite_file
from mmkit.eval.suite_file import load_suite as load_suite
from mmkit.eval.zero_shot import DEFAULT_TEMPLATES
from mmkit.utils.bounded import parse_json, read_text_file
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint

#: The published FLAVA numbers (percent) the table prints beside a task of the same name: Singh et al.
#: 2022, Table 4, as recorded in docs/FLAVA.md ("Published results").
PAPER: dict[str, dict[str, float]] = {
    "imagenet": {"accuracy": 75.54},
    "coco": {"image_to_text_r1": 42.74, "text_to_image_r1": 38.38},
    "flickr30k": {"image_to_text_r1": 67.70, "text_to_image_r1": 65.22},
}
#: Datasets whose literature reports mean per-class recall (Radford et al. 2021, appendix A.1; CLIP_benchmark):
#: FGVC Aircraft, Oxford-IIIT Pets, Caltech-101, Flowers-102, by mmkit's names (aliases resolve to them).
MEAN_PER_CLASS = frozenset({"aircraft", "pets", "caltech101", "flowers102"})
#: How the paper's number of a finetuned task differs from what mmkit computes (shown in results.md).
PAPER_NOTES = {
    "vqav2": "Table 4 does not name its split (aggregators list it as test-dev, scored by the challenge server "
    "only); mmkit reports val",
}
#: The paper's vision average over its 22 linear-probe tasks and NLP average over its 8 GLUE tasks
#: (Table 4, docs/FLAVA.md).
PAPER_VISION_AVERAGE = 79.44
PAPER_NLP_AVERAGE = 78.19


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
        bar = desc if self.progress else False
        return image_features(
            self.model,
            dataset,
            self.transform,
            transform_id=self.transform_id,
            cache=self.cache,
            model_id=self.model_id,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            max_bad_fraction=self.max_bad_fraction,
            progress=bar,
        )

    def texts(self, texts: list[str], desc: str) -> torch.Tensor:
        if self.tokenizer is None:
            raise InputError("text tasks need a tokenizer: set tokenizer= or use a checkpoint exported with one")
        return text_embeddings(
            self.model,
            self.tokenizer,
            texts,
            cache=self.cache,
            model_id=self.model_id,
            progress=self.progress,
            desc=desc,
        )


def _read_templates(task: SuiteTask) -> list[str] | None:
    """The entry's own ``templates``: a list, or a file of one template a line (under the task's path or as given)."""
    t = task.templates
    if isinstance(t, str):
        file = Path(t) if Path(t).is_absolute() else Path(task.path) / t
        if not file.is_file():
            file = Path(t)
        if not file.is_file():
            raise MissingError(f"task {task.name}: templates file {t} does not exist (looked in {task.path} too)")
        t = [line.strip() for line in file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    return list(t) if t else None


def class_prompts(task: SuiteTask, dataset: BenchmarkSet) -> tuple[list[str], list[str], str]:
    """The class names and templates a zero-shot task uses, and where they come from.

    Names: a ``folder`` entry's own ``classnames`` file, else CLIP's curated names for the dataset
    (:mod:`mmkit.eval.prompts`, looked up by ``prompts`` or the task's name), else the set's own.
    Templates: the entry's ``templates``, else CLIP's for the dataset, else the set's own, else
    :data:`DEFAULT_TEMPLATES`. ``prompts: none`` skips CLIP's table.

    Returns:
        ``(class names in label order, templates with one {}, "names from; templates from")``.
    """
    from mmkit.eval.prompts import clip_prompts

    clip = None if task.prompts == "none" else clip_prompts(task.prompts or task.name)
    if clip is None and task.prompts not in (None, "none"):
        raise InputError(f"task {task.name}: prompts {task.prompts!r} is not a dataset of mmkit's CLIP prompt table")
    names, names_from = list(dataset.classnames or ()), "the dataset"
    if task.keys.get("classnames"):
        names_from = "the entry's classnames"
    elif clip is not None and clip.classnames:
        if len(clip.classnames) != len(names):
            raise InputError(
                f"task {task.name}: CLIP's {task.prompts or task.name} names {len(clip.classnames)} classes, the set "
                f"has {len(names)} ({dataset.describe()}): set prompts: none, or prompts: to the right dataset"
            )
        names, names_from = list(clip.classnames), f"CLIP ({task.prompts or task.name})"
    own = _read_templates(task)
    choices = (
        (own, "the entry"),
        (clip.templates if clip else None, f"CLIP ({task.prompts or task.name})"),
        (dataset.templates, "the dataset"),
        (DEFAULT_TEMPLATES, "mmkit's default"),
    )
    templates, templates_from = next((list(t), f) for t, f in choices if t)
    return names, [clean_template(x) for x in templates], f"names from {names_from}; templates from {templates_from}"


def _class_metrics(preds: torch.Tensor, labels: torch.Tensor, classes: int) -> dict[str, float]:
    """Top-1 accuracy and mean per-class recall of ``(N,)`` predicted class ids."""
    preds, labels = preds.cpu(), labels.cpu()
    return {
        "accuracy": preds.eq(labels).float().mean().item(),
        "mean_per_class_recall": mean_per_class_recall(preds, labels, classes),
    }


def zero_shot(task: SuiteTask, ctx: SuiteContext) -> dict[str, Any]:
    """Accuracy and mean per-class recall of the class-prompt ensemble (Radford et al. 2021, §3.1.4)."""
    ds = task.open()
    if ds.kind != "classification" or not ds.classnames:
        raise InputError(f"task {task.name}: zero-shot needs a classification set with class names ({ds.describe()})")
    names, templates, origin = class_prompts(task, ds)
    feats = ctx.images(ds, f"{task.name} [{task.split}]")
    prompts = [t.format(c) for c in names for t in templates]
    emb = ctx.texts(prompts, f"{task.name} prompts").reshape(len(names), len(templates), -1)
    classes = torch.nn.functional.normalize(emb.mean(1), dim=-1)
    preds = (feats.embeddings @ classes.T).argmax(1)
    return {
        **_class_metrics(preds, feats.labels, len(names)),
        "samples": len(feats.keys),
        **_skips(feats),
        "classes": len(names),
        "templates": len(templates),
        "prompts": origin,
    }


def validation_split(task: SuiteTask, test: BenchmarkSet) -> BenchmarkSet | None:
    """The dataset's own validation split for a probe: the entry's ``val_split`` (``none``: carve one from
    train instead), else the first of the layout's validation split names that exists and shares no file
    with the test split (a lone parquet file serves every split name)."""
    from mmkit.eval.benchmarks import LAYOUTS

    if task.val_split == "none":
        return None
    if task.val_split:
        return task.open(task.val_split)
    for name in LAYOUTS[task.layout].validation_splits:
        if name in (task.split, task.train_split):
            continue
        try:
            val = task.open(name)
        except MissingError:
            continue
        if not {str(f) for f in val.files()} & {str(f) for f in test.files()}:
            return val
    return None


def linear_probe(task: SuiteTask, ctx: SuiteContext) -> dict[str, Any]:
    """The logistic-regression probe on frozen features (:mod:`mmkit.eval.probe`): ``C`` chosen on the
    dataset's validation split when it has one (then fit on train + val), else on a carved share of train."""
    train_ds, test_ds = task.open(task.train_split), task.open()
    val_ds = validation_split(task, test_ds)
    if train_ds.kind != "classification":
        raise InputError(f"task {task.name}: a linear probe needs a classification set ({train_ds.describe()})")
    for other in [test_ds, *([val_ds] if val_ds else [])]:
        if train_ds.classnames != other.classnames:
            raise InputError(
                f"task {task.name}: the {task.train_split!r} and {other.split!r} splits have different classes "
                f"({len(train_ds.classnames or ())} vs {len(other.classnames or ())}): their labels would not match"
            )
    train, test = (ctx.images(d, f"{task.name} [{d.split}]") for d in (train_ds, test_ds))
    val = ctx.images(val_ds, f"{task.name} [{val_ds.split}]") if val_ds else None
    classes = len(train_ds.classnames) if train_ds.classnames else None
    device = next(ctx.model.parameters()).device  # solved where the model runs (a GPU when there is one)
    probe = fit_linear_probe(
        train.features.to(device),
        train.labels.to(device),
        val.features.to(device) if val else None,
        val.labels.to(device) if val else None,
        seed=ctx.seed,
        num_classes=classes,
    )
    preds = probe.predict(test.features.to(device))
    metrics = _class_metrics(preds, test.labels, classes or int(preds.max()) + 1)
    return {
        **metrics,
        "samples": len(test.keys),
        "train_samples": probe.train_samples,
        "selected_on": probe.selected_on,
        "val_split": val_ds.split if val_ds else None,
        "C": probe.c,
        "l2": probe.l2,
        **_skips(train, test, val),
    }


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
    out.update(samples=len(feats.keys), captions=len(captions), **_skips(feats))
    return out


def _skips(*feats: Any) -> dict[str, Any]:
    """``skipped``: how many samples of these splits were left out (unreadable, missing, over a bound), and
    ``skipped_examples`` (when there are any): the first five, named ``key (why)``."""
    rows = [f"{key} ({why})" for f in feats if f is not None for key, why in f.skipped]
    return {"skipped": len(rows), **({"skipped_examples": rows[:5]} if rows else {})}


RUNNERS = {"zero_shot": zero_shot, "linear_probe": linear_probe, "retrieval": retrieval}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def run_suite(
    tasks: list[SuiteTask],
    ctx: SuiteContext,
    out: str | Path,
    *,
    checkpoint: str | None = None,
    weights: str | None = None,
    log: Callable[[str], None] = print,
    runners: dict[str, Callable[[SuiteTask, SuiteContext], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Run every task not yet in ``<out>/results.json``; write it after each task and ``results.md`` at the end.

    Args:
        weights: a digest of what is evaluated (:func:`checkpoint_digest`), recorded as ``_weights``:
            results of other weights in ``out`` are moved aside (``results.<digest>.json``,
            ``runs.<digest>/``) and every task is scored again. None: ``ctx``'s model digest, if any.
        runners: extra task kinds, ``{kind: runner(task, ctx) -> metrics}`` (``finetune`` comes from
            ``recipes/flava/evaluate.py``, which runs the finetuning recipe).

    Returns:
        ``{task name: metrics}`` of every task in the file; each also records its ``kind``, ``split``,
        ``metric`` (the headline) and the ``seconds`` it took (wall time, as first run).
    """
    runners = {**RUNNERS, **(runners or {})}
    missing = sorted({t.kind for t in tasks} - set(runners))
    if missing:
        raise InputError(
            f"no runner for task kind(s) {', '.join(missing)}: run the suite with recipes/flava/evaluate.py"
        )
    if not tasks:
        raise InputError("the suite lists no tasks: add at least one under tasks:")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = weights or (ctx.model_id if ctx is not None else None)
    results = _previous_results(out, checkpoint, weights, log)
    path = out / "results.json"
    for task in tasks:
        if task.name in results:
            log(f"{task.name}: done already ({path}, the same weights)")
            continue
        results[task.name] = _run_task(task, ctx, runners[task.kind], log)
        _write_json(path, results)
    (out / "results.md").write_text(results_table(tasks, results, checkpoint))
    print(f"wrote {path} and {out / 'results.md'}", file=sys.stderr)
    return results


def _run_task(
    task: SuiteTask, ctx: SuiteContext, runner: Callable[[SuiteTask, SuiteContext], dict[str, Any]], log
) -> dict[str, Any]:
    """One task's results record (kind, split, headline metric, metrics, seconds), told in a line or two."""
    start = time.perf_counter()
    metrics = runner(task, ctx)
    seconds = time.perf_counter() - start
    shown = _metrics_shown(task)[0]
    log(f"{task.name}: {task.kind} {shown} {metrics[shown]:.4f} on {metrics['samples']:,} samples ({seconds:.1f} s)")
    if metrics.get("skipped"):
        named = "; ".join(metrics.get("skipped_examples", []))
        log(f"{task.name}: {metrics['skipped']} sample(s) skipped, the first: {named}")
    return {"kind": task.kind, "split": _split_of(task), "metric": shown, **metrics, "seconds": round(seconds, 3)}


def _previous_results(out: Path, checkpoint: str | None, weights: str | None, log: Callable[[str], None]) -> dict:
    """The results ``out`` holds for these weights (to reuse), else a fresh record; results of other weights
    (or of unknown weights: files written before digests were recorded) are moved aside, not reused."""
    path = out / "results.json"
    results: Any = parse_json(read_text_file(path, "results file"), str(path)) if path.exists() else {}
    if not isinstance(results, dict):
        raise InputError(f"{path} is not an mmkit results file (a JSON object): choose another out=")
    if results.get("_checkpoint", checkpoint) != checkpoint:
        raise InputError(
            f"{path} holds results of checkpoint {results['_checkpoint']}, not {checkpoint}: choose another out="
        )
    if results and results.get("_weights") != weights:
        tag = "".join(c for c in str(results.get("_weights") or "") if c in "0123456789abcdef")[:12] or "unknown"
        for name in ("results.json", "results.md", "runs"):
            old = out / name
            if old.exists():
                os.replace(old, out / (f"{old.stem}.{tag}{old.suffix}" if old.suffix else f"{name}.{tag}"))
        log(f"{path} held results of other weights ({tag}): moved aside as results.{tag}.json; scoring every task")
        results = {}
    return {**results, "_checkpoint": checkpoint, "_weights": weights}


def checkpoint_digest(checkpoint: str | Path) -> str:
    """SHA-256 of a checkpoint's bytes: a weights file, or every regular file under a checkpoint directory
    (weights, config, tokenizer, preprocessing: all that decides the scores), by relative name."""
    root = resolve_checkpoint(checkpoint)  # a path, or a hub name (its cached snapshot)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root) if f != root else f.name}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def headline_metric(task: SuiteTask) -> str:
    """What a classification task's row shows and compares with the paper: the entry's ``metric``, else the
    one its literature reports — mean per-class recall for FGVC Aircraft, Oxford-IIIT Pets, Caltech-101 and
    Flowers-102 (Radford et al. 2021, appendix A.1, the metric column of its datasets table; CLIP_benchmark), top-1
    accuracy elsewhere."""
    from mmkit.eval.prompts import canonical_name

    if task.metric:
        return task.metric
    return "mean_per_class_recall" if canonical_name(task.prompts or task.name) in MEAN_PER_CLASS else "accuracy"


def _metrics_shown(task: SuiteTask) -> list[str]:
    """The metrics a task's rows show, the headline (the one the paper reports) first."""
    if task.kind == "finetune":
        from mmkit.eval.finetune_tasks import finetune_task

        spec = finetune_task(task.task)
        names = spec.reported_names(also=True)  # mean per-class recall too, where a class is predicted
        head = next(iter(spec.paper), names[0])
        return [head, *[n for n in names if n != head]]
    if task.kind == "retrieval":
        return ["image_to_text_r1", "text_to_image_r1"]
    head = headline_metric(task)
    return [head, *[m for m in CLASS_METRICS if m != head]]


def _split_of(task: SuiteTask, metric: str | None = None) -> str:
    """The split a task's metric is computed on (a finetuned task's report split for that metric)."""
    if task.kind != "finetune":
        return task.split
    from mmkit.eval.finetune_tasks import finetune_task

    spec = finetune_task(task.task)
    for suffix, split in spec.report.items():
        if metric is None or metric.endswith(f"_{suffix}") or not suffix:
            return split
    return next(iter(spec.report.values()))


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
    """The Markdown report: one row per task and metric (percent) with the split it is computed on, the
    paper's number beside it (and how the paper's differs, where it does), and the averages the paper gives
    (vision: linear probes; NLP: GLUE; multimodal: the finetuned three), each over headline metrics."""
    weights = results.get("_weights")
    lines = [
        f"# Evaluation of {checkpoint or 'a randomly initialised model'}",
        "",
        *([f"Weights digest (SHA-256): `{weights}`", ""] if weights else []),
        "| task | kind | split | metric | mmkit | FLAVA paper | samples | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[str, list[tuple[float, float | None]]] = {"vision": [], "glue": [], "multimodal": []}
    for task in tasks:
        r = results.get(task.name)
        if r is None:
            lines.append(f"| {task.name} | {task.kind} | {_split_of(task)} | — | not run | | | |")
            continue
        paper, shown = _paper(task), _metrics_shown(task)
        for i, m in enumerate(shown):
            value, note = paper.get(m), _row_notes(task, r) if i == 0 else ""
            lines.append(
                f"| {task.name} | {task.kind} | {_split_of(task, m)} | {m} | {_pct(r.get(m))} | "
                f"{'' if value is None else f'{value:.2f}'} | {r['samples']:,} | {note} |"
            )
        group = _group(task)
        if group is not None:
            groups[group].append((r[shown[0]], paper.get(shown[0])))
    lines += [
        "",
        "The first row of each task is its headline metric (the one its literature reports), which the "
        "averages use. A note marked **paper:** says where the paper's number is on another split or "
        "protocol than mmkit's (docs/EVALUATION.md).",
    ]
    return "\n".join(lines + _averages(groups)) + "\n"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def _row_notes(task: SuiteTask, r: dict[str, Any]) -> str:
    """How a task's number was made (the probe's selection and fit, the prompts, the best step) and how the
    paper's differs."""
    notes = []
    if task.kind == "linear_probe" and "selected_on" in r:
        where = f"on {r['val_split']}" if r["selected_on"] == "val" else "on 20% carved from train"
        notes.append(f"C={r['C']:.3g} chosen {where}; fit on {r['train_samples']:,}")
    if task.kind == "zero_shot" and r.get("prompts"):
        notes.append(f"{r['prompts']} ({r.get('templates', '?')} templates)")
    if task.kind == "finetune" and "best_step" in r:
        notes.append(f"best step {r['best_step']:,} of {r.get('steps', '?'):,}")
    paper_note = task.paper_note or (PAPER_NOTES.get(task.task or "") if task.kind == "finetune" else None)
    if paper_note:
        notes.append(f"**paper:** {paper_note}")
    return "; ".join(notes)


def _averages(groups: dict[str, list[tuple[float, float | None]]]) -> list[str]:
    """The report's average lines, each beside the paper's over the same tasks and over its whole group."""
    lines = []
    # (group, label, the paper's average over its whole group and that group's size)
    averages = (
        ("vision", "Vision average (linear probes", PAPER_VISION_AVERAGE, 22),
        ("glue", "NLP average (GLUE", PAPER_NLP_AVERAGE, 8),
        ("multimodal", "Multimodal average (finetuned", None, None),
    )
    for group, label, published, size in averages:
        scores = groups[group]
        if not scores:
            continue
        papers = [p for _, p in scores if p is not None]
        notes = [f"the paper's on the same {len(papers)}: {statistics.fmean(papers):.2f}"] if papers else []
        if published is not None:  # the whole group run: its own average is the paper's
            notes = [n for n in notes if len(papers) != size] + [f"the paper's over its {size} tasks: {published:.2f}"]
        lines += [
            "",
            f"{label}, {len(scores)} task(s)): **{100 * statistics.fmean(v for v, _ in scores):.2f}**"
            + "".join(f" — {n}" if i == 0 else f"; {n}" for i, n in enumerate(notes))
            + ".",
        ]
    return lines


def _group(task: SuiteTask) -> str | None:
    if task.kind == "linear_probe":
        return "vision"
    if task.kind == "finetune":
        from mmkit.eval.finetune_tasks import finetune_task

        return finetune_task(task.task).group
    return None
