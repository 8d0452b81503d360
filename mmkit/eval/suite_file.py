"""A suite file read and checked: every problem of every entry reported at once, in one line.

The format is :mod:`mmkit.eval.suite`'s (its module docstring). Every value is checked for its type
before it is used, so a wrong one is a line naming the entry and the key, never a traceback:
``name`` is one path component (it names ``<out>/runs/<name>``: no ``/``, ``\\``, ``..``, empty or
absolute name), ``kind``, ``layout`` and ``task`` are strings among the known ones, ``paper`` is a
number or a mapping of metric names to numbers, the layout's own keys have the types its reader takes.
A file that is not UTF-8 or not YAML (or nests or numbers past what YAML's reader converts) is one line
too.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmkit.eval.benchmarks import BenchmarkSet, layout_keys, open_benchmark
from mmkit.utils.bounded import read_text_file
from mmkit.utils.errors import InputError
from mmkit.utils.paths import name_problem

KINDS = ("zero_shot", "linear_probe", "retrieval", "finetune")
#: the metrics a classification task can headline
CLASS_METRICS = ("accuracy", "mean_per_class_recall")


@dataclass
class SuiteTask:
    """One task of a suite file (see :mod:`mmkit.eval.suite`)."""

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
    val_split: str | None = None  # linear probes: the validation split (None: the layout's own, if any)
    metric: str | None = None  # the headline metric (None: the dataset's, see :func:`headline_metric`)
    prompts: str | None = None  # the dataset in mmkit's CLIP prompt table (None: the task's name)
    paper_note: str | None = None  # how the paper's number differs (another split or protocol)

    def open(self, split: str | None = None) -> BenchmarkSet:
        return open_benchmark(self.layout, self.path, split or self.split, **self.keys)


def _read_yaml(path: Path) -> Any:
    """The suite file parsed; not UTF-8, not YAML, too deep or a number too long is one line naming the file."""
    import yaml

    text = read_text_file(path, "suite file")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(f"suite file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise InputError(f"suite file {path} nests too deeply to read") from None
    except ValueError as e:  # a number of more digits than Python converts
        raise InputError(f"suite file {path} holds a value that cannot be read: {str(e).split(';')[0]}") from None


def load_suite(
    path: str | Path, data_root: str | None = None, finetune_keys: set[str] | None = None
) -> list[SuiteTask]:
    """Read and check a suite file; every problem is reported at once, naming the task and the key.

    Args:
        finetune_keys: the keys a ``kind: finetune`` entry may set (the finetuning recipe's); None: any.

    Raises:
        ValueError: unknown kinds, layouts, tasks or keys, values of the wrong type, missing fields,
            names that are not one path component, duplicate names.
    """
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise InputError(f"suite file {path} must hold a mapping with a 'tasks' list")
    if data.get("root") is not None and not isinstance(data["root"], str):
        raise InputError(f"suite file {path}: root must be a folder name (a string), got {data['root']!r:.80}")
    root = Path(data_root or data.get("root") or path.parent)
    tasks, problems, seen = [], [], set()
    for i, entry in enumerate(data["tasks"]):
        named = isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]
        where = f"tasks[{i}]" + (f" ({entry['name']})" if named else "")
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


_COMMON = {
    "name",
    "kind",
    "layout",
    "path",
    "split",
    "train_split",
    "templates",
    "paper",
    "val_split",
    "metric",
    "prompts",
    "paper_note",
}
#: the optional keys every entry may set that hold one string (checked when the file is read)
_STRINGS = ("split", "train_split", "val_split", "metric", "prompts", "paper_note")


def _one_of(entry: dict, key: str, choices: Any, where: str, problems: list[str]) -> bool:
    """Whether ``entry[key]`` is a string among ``choices``; else its problem is appended."""
    value = entry[key]
    if isinstance(value, str) and value in choices:
        return True
    shown = f"{value!r:.80}" if isinstance(value, str) else f"a {type(value).__name__} ({value!r:.60})"
    problems.append(f"{where}: {key} {shown} is not one of {', '.join(choices)}")
    return False


def _common_problems(entry: dict, where: str) -> list[str]:
    """The problems of the keys every entry has: the name, the path and the paper's numbers."""
    problems = []
    problem = name_problem(entry["name"])
    if problem:
        problems.append(f"{where}: name {problem} (it names the task's folder under out=)")
    if not isinstance(entry["path"], str) or not entry["path"].strip():
        problems.append(f"{where}: path must be a file or folder name (a string), got {entry['path']!r:.80}")
    paper = entry.get("paper")
    number = lambda v: isinstance(v, int | float) and not isinstance(v, bool)  # noqa: E731
    if paper is not None and not number(paper):
        if not isinstance(paper, dict) or not all(isinstance(k, str) and number(v) for k, v in paper.items()):
            problems.append(
                f"{where}: paper must be a number or a mapping of metric names to numbers (percent), got {paper!r:.80}"
            )
    return problems


def _suite_task(
    entry: Any, where: str, root: Path, finetune_keys: set[str] | None, problems: list[str]
) -> SuiteTask | None:
    """One entry as a :class:`SuiteTask`, or None with its problems appended."""
    from mmkit.eval.benchmarks import LAYOUTS

    if not isinstance(entry, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    finetune = entry.get("kind") == "finetune"
    missing = [k for k in ("name", "kind", "task" if finetune else "layout", "path") if k not in entry]
    if missing:
        problems.append(f"{where}: missing {', '.join(missing)}")
        return None
    found = _common_problems(entry, where)
    problems += found
    bad = bool(found) or not _one_of(entry, "kind", KINDS, where, problems)  # the entry is reported, not built
    p = entry["path"] if isinstance(entry["path"], str) else ""
    p = p if "://" in p or Path(p).is_absolute() else str(root / p)
    if finetune:
        task = _finetune_task(entry, where, p, finetune_keys, problems)
        return None if bad else task
    if not _one_of(entry, "layout", LAYOUTS, where, problems):
        return None
    keys = {k: v for k, v in entry.items() if k not in _COMMON}
    unknown = sorted(set(keys) - set(layout_keys(entry["layout"])))
    if unknown:
        valid = ", ".join(sorted(_COMMON | set(layout_keys(entry["layout"]))))
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)} (valid: {valid})")
    problems += [
        f"{where}: {k} must be a string, got {entry[k]!r:.80}"
        for k in _STRINGS
        if entry.get(k) is not None and not isinstance(entry[k], str)
    ]
    problems += _layout_key_problems(entry["layout"], {k: v for k, v in keys.items() if k not in unknown}, where)
    t = entry.get("templates")
    if t is not None and not isinstance(t, str) and not (isinstance(t, list) and all(isinstance(x, str) for x in t)):
        problems.append(f"{where}: templates must be a file name or a list of strings, got {t!r:.80}")
    if isinstance(entry.get("metric"), str) and entry["metric"] not in CLASS_METRICS:
        problems.append(f"{where}: metric {entry['metric']!r} is not one of {', '.join(CLASS_METRICS)}")
    if bad:
        return None
    opts = {k: entry.get(k) for k in ("val_split", "metric", "prompts", "paper_note")}
    return SuiteTask(
        entry["name"],
        entry["kind"],
        entry["layout"],
        p,
        str(entry.get("split", "test")),
        str(entry.get("train_split", "train")),
        entry.get("templates"),
        entry.get("paper"),
        keys,
        **opts,
    )


def _finetune_task(
    entry: dict, where: str, path: str, finetune_keys: set[str] | None, problems: list[str]
) -> SuiteTask | None:
    """A ``kind: finetune`` entry as a :class:`SuiteTask` (its keys are the finetuning recipe's, checked
    for their types when the recipe's config is made), or None with its problems appended."""
    from mmkit.eval.finetune_tasks import FINETUNE_TASKS

    known = _one_of(entry, "task", FINETUNE_TASKS, where, problems)
    keys = {k: v for k, v in entry.items() if k not in ("name", "kind", "task", "path", "paper", "paper_note")}
    unknown = sorted(set(keys) - finetune_keys) if finetune_keys is not None else []
    if unknown:
        problems.append(
            f"{where}: unknown finetune key(s) {', '.join(unknown)} (valid: {', '.join(sorted(finetune_keys or ()))})"
        )
    note = entry.get("paper_note")
    if note is not None and not isinstance(note, str):
        problems.append(f"{where}: paper_note must be a string, got {note!r:.80}")
    if not known:
        return None
    return SuiteTask(
        entry["name"], "finetune", "", path, paper=entry.get("paper"), keys=keys, task=entry["task"], paper_note=note
    )


def _layout_key_problems(layout: str, keys: dict[str, Any], where: str) -> list[str]:
    """Each of a layout's own keys checked against the type its reader declares (a string, a mapping, a
    boolean), so a wrong one is named here instead of failing inside the reader."""
    from mmkit.eval.benchmarks import LAYOUTS

    params = inspect.signature(LAYOUTS[layout].__init__).parameters
    problems = []
    for key, value in keys.items():
        declared = str(params[key].annotation)
        if value is None and "None" in declared:
            continue
        if "dict" in declared:
            ok, want = isinstance(value, dict), "a mapping"
        elif "bool" in declared:
            ok, want = isinstance(value, bool), "true or false"
        elif "list" in declared:
            ok, want = isinstance(value, str | list), "a file name or a list"
        else:
            ok, want = isinstance(value, str), "a string"
        if not ok:
            problems.append(f"{where}: {key} must be {want}, got {value!r:.80}")
    return problems
