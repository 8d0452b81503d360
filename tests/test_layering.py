"""The package layering: imports between mmkit's top-level subpackages form a DAG.

Every ``import mmkit.x`` / ``from mmkit.x import ...`` counts, wherever it is written (module level,
inside a function, under ``TYPE_CHECKING``), and so do relative imports and
``importlib.import_module("mmkit.x")`` with a literal name: an import deferred to call time is
still a dependency.

The same imports, between modules rather than packages, form no circle either
(:func:`test_no_import_cycle_between_modules`). An import names the deepest mmkit module it loads:
``from mmkit.x import name`` is an edge to ``mmkit/x/name.py`` when ``name`` is a submodule and to
``mmkit/x/__init__.py`` (or ``mmkit/x.py``) when it is a name defined there; ``import mmkit.x.y``
is an edge to ``mmkit.x.y`` alone (the parent packages it also runs are not edges). One rule keeps
the re-exports out: an import of a package's ``__init__`` from a module inside that package (a
submodule reading its package's public names) is no edge, since the ``__init__`` imports its own
submodules by design and an ordering mistake there fails at import time, not silently. A package's
``__init__`` importing from outside, and anything importing a package from outside, still count.
"""

from __future__ import annotations

import ast
import functools
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mmkit"
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())

# Directions decided on purpose (each reverse edge exists); see the docstrings of
# mmkit/data/formats.py, mmkit/tokenizers/__init__.py, mmkit/tokenizers/dalle_keys.py, mmkit/losses/flava.py.
FORBIDDEN = [
    ("tokenizers", "data"),  # data -> tokenizers: the token cache (mmkit.data.token_cache) runs the image tokenizer
    ("tokenizers", "models"),
    ("losses", "models"),  # models -> losses: a pretraining model composes parameter-free losses
    ("losses", "heads"),
    # the recipe skeleton sits on top: no library package depends on it
    *(
        (p, "pretrain")
        for p in (
            "data",
            "encoders",
            "eval",
            "heads",
            "layers",
            "losses",
            "masking",
            "models",
            "tokenizers",
            "train",
            "utils",
        )
    ),
]


def _imports(tree: ast.AST, module: str) -> list[tuple[str, tuple[str, ...], int]]:
    """``(imported module, names imported from it, line)`` for every import in ``tree`` (names: empty for
    ``import x`` and ``import_module("x")``); ``module`` is the dotted name of the file
    (``mmkit.data.sources``), used to resolve relative imports."""
    package = module.split(".")[:-1]  # what "." means: the file's package (for __init__.py, the package itself)
    found: list[tuple[str, tuple[str, ...], int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, tuple(alias.name for alias in node.names), node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.args[0].value, (), node.lineno))
    return found


def _imported_modules(tree: ast.AST, module: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``tree``; ``from mmkit import data`` names
    ``mmkit.data``."""
    found = []
    for target, names, line in _imports(tree, module):
        if target == "mmkit" and names:  # from mmkit import data
            found += [(f"mmkit.{name}", line) for name in names]
        else:
            found.append((target, line))
    return found


def _edges(sources: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    """Package -> package import edges, with the ``file:line`` of each import, from
    ``{relative path under mmkit/: source text}``."""
    edges: dict[tuple[str, str], list[str]] = {}
    for rel, text in sources.items():
        parts = rel.removesuffix(".py").split("/")
        if len(parts) < 2:  # mmkit/__init__.py
            continue
        src = parts[0]
        for target, line in _imported_modules(ast.parse(text), ".".join(["mmkit", *parts])):
            names = target.split(".")
            if names[0] == "mmkit" and len(names) > 1 and names[1] != src:
                edges.setdefault((src, names[1]), []).append(f"mmkit/{rel}:{line}")
    return edges


@functools.cache
def _package_edges() -> dict[tuple[str, str], list[str]]:
    """Read once per session: every test of the house reads the same tree."""
    return _edges({p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in sorted(ROOT.rglob("*.py"))})


def _cycles(nodes: list[str], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    graph = {n: sorted(b for a, b in edges if a == n) for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for n in nodes:
        if n not in index:
            visit(n)
    return out


def _module_name(rel: str) -> str:
    """``data/sources.py`` -> ``mmkit.data.sources``; ``data/__init__.py`` -> ``mmkit.data``."""
    return ".".join(["mmkit", *rel.removesuffix(".py").split("/")]).removesuffix(".__init__")


def _resolve(target: str, modules: set[str]) -> str | None:
    """The deepest mmkit module a dotted name lies in (``mmkit.models.flava.X`` -> ``mmkit.models.flava``)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _module_edges(sources: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    """Module -> module import edges (the rules are in this file's docstring), with the ``file:line`` of
    each import, from ``{relative path under mmkit/: source text}``."""
    modules = {_module_name(rel) for rel in sources} | {"mmkit"}
    packages = {_module_name(rel) for rel in sources if rel.endswith("__init__.py")} | {"mmkit"}
    edges: dict[tuple[str, str], list[str]] = {}
    for rel, text in sources.items():
        src = _module_name(rel)
        file_name = "mmkit." + rel.removesuffix(".py").replace("/", ".")
        for target, names, line in _imports(ast.parse(text), file_name):
            if not target.startswith("mmkit"):
                continue
            subs = [f"{target}.{name}" for name in names] or [target]
            found = {sub if sub in modules else _resolve(target, modules) for sub in subs}
            for dst in found - {None, src}:
                if dst in packages and src.startswith(dst + "."):  # a submodule reading its package's names
                    continue
                edges.setdefault((src, dst), []).append(f"mmkit/{rel}:{line}")
    return edges


def _a_cycle(component: list[str], edges: set[tuple[str, str]]) -> list[str]:
    """One shortest import circle through the first module of a strongly connected ``component``."""
    members, start = set(component), component[0]
    parent: dict[str, str] = {}
    queue = [start]
    for v in queue:
        for w in sorted(b for a, b in edges if a == v and b in members and b not in parent):
            parent[w] = v
            if w == start:
                path, node = [start], v
                while node != start:
                    path.append(node)
                    node = parent[node]
                return [start, *reversed(path[1:]), start]
            queue.append(w)
    return component


def test_the_scanner_sees_every_kind_of_import():
    sources = {
        "data/a.py": "import mmkit.tokenizers.text\n",
        "data/b.py": "def f():\n    from mmkit.models import x\n",
        "data/c.py": "from mmkit import convert\n",
        "data/d.py": "import importlib\nimportlib.import_module('mmkit.eval.metrics')\n",
        "data/e.py": "from ..losses import flava\nfrom . import sources\n",
        "data/__init__.py": "from ..heads import heads\n",
    }
    assert sorted(_edges(sources)) == [
        ("data", "convert"),
        ("data", "eval"),
        ("data", "heads"),
        ("data", "losses"),
        ("data", "models"),
        ("data", "tokenizers"),
    ]
    assert _cycles(["a", "b", "c", "d"], {("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]


def test_the_module_scanner_follows_submodules_and_skips_own_package_reexports():
    sources = {
        "__init__.py": "",
        "a/__init__.py": "from .x import X\nfrom . import y\n",
        "a/x.py": "from mmkit.a import y\nfrom mmkit.a import Z\n",  # a submodule, and a name of a's __init__
        "a/y.py": "def f():\n    from mmkit.b import w\n",
        "b/__init__.py": "from mmkit.b.v import w\n",
        "b/v.py": "import mmkit.a.x\n",
        "c.py": "from mmkit import a\nif TYPE_CHECKING:\n    from mmkit.b.v import w\n",
    }
    edges = _module_edges(sources)
    assert sorted(edges) == [
        ("mmkit.a", "mmkit.a.x"),
        ("mmkit.a", "mmkit.a.y"),
        ("mmkit.a.x", "mmkit.a.y"),
        ("mmkit.a.y", "mmkit.b"),
        ("mmkit.b", "mmkit.b.v"),
        ("mmkit.b.v", "mmkit.a.x"),
        ("mmkit.c", "mmkit.a"),
        ("mmkit.c", "mmkit.b.v"),
    ]
    [component] = _cycles(sorted({m for e in edges for m in e}), set(edges))
    assert component == ["mmkit.a.x", "mmkit.a.y", "mmkit.b", "mmkit.b.v"]
    assert _a_cycle(component, set(edges)) == ["mmkit.a.x", "mmkit.a.y", "mmkit.b", "mmkit.b.v", "mmkit.a.x"]


def test_packages_are_found():
    expected = {"data", "encoders", "eval", "heads", "layers", "losses", "masking", "models"}
    assert expected | {"pretrain", "tokenizers", "train", "utils"} <= set(PACKAGES)


def test_no_import_cycle_between_packages():
    edges = _package_edges()
    cycles = _cycles(PACKAGES, set(edges))
    if cycles:
        lines = []
        for component in cycles:
            lines.append(" <-> ".join(component))
            for (a, b), sites in sorted(edges.items()):
                if a in component and b in component:
                    lines.append(f"  {a} -> {b}: {', '.join(sites)}")
        pytest.fail("import cycles between mmkit packages:\n" + "\n".join(lines))


def test_no_import_cycle_between_modules():
    sources = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in sorted(ROOT.rglob("*.py"))}
    edges = _module_edges(sources)
    lines = []
    for component in _cycles(sorted({_module_name(rel) for rel in sources}), set(edges)):
        cycle = _a_cycle(component, set(edges))
        lines.append(" -> ".join(cycle))
        if len(component) > len(cycle) - 1:
            lines.append(f"  (one circle of several, among {', '.join(component)})")
        lines += [f"  {a} -> {b}: {', '.join(edges[a, b])}" for a, b in itertools.pairwise(cycle)]
    assert not lines, "import circles between mmkit modules:\n" + "\n".join(lines)


@pytest.mark.parametrize(("src", "dst"), FORBIDDEN, ids=[f"{a}-not-{b}" for a, b in FORBIDDEN])
def test_decided_directions(src, dst):
    sites = _package_edges().get((src, dst))
    assert not sites, f"mmkit.{src} must not import mmkit.{dst}: {', '.join(sites)}"


MODEL_PACKAGES = (
    "mmkit.models",
    "mmkit.encoders",
    "mmkit.tokenizers",
    "mmkit.layers",
    "mmkit.losses",
    "mmkit.heads",
    "mmkit.masking",
)


def test_the_model_packages_load_nothing_of_the_data_pipeline():
    """Whoever reuses the encoders or the models gets no data loaders, sources or collators with them:
    checked in a fresh interpreter, so whatever a package imports at any depth counts. One interpreter
    imports the packages in turn and looks after each: while none has loaded ``mmkit.data``, the next
    import runs every import of its own, so the first package that pulls the data pipeline in is named."""
    import subprocess
    import sys

    code = (
        "import importlib, sys\n"
        f"for package in {MODEL_PACKAGES!r}:\n"
        "    importlib.import_module(package)\n"
        "    loaded = sorted(m for m in sys.modules if m.startswith('mmkit.data'))\n"
        "    if loaded:\n"
        "        print(f'import {package} loads {loaded}')\n"
        "        break\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "", out.strip()


#: modules a recipe may import from directly: commands whose ``main`` is their interface
COMMAND_MODULES = {"mmkit.data.token_cache"}


def test_recipes_use_public_names_only():
    """A recipe imports from a package (``from mmkit.data import X``), and only names the package lists
    in ``__all__``: what a recipe needs is public, so a user's own recipe can do the same."""
    import importlib

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    bad = []
    for path in sorted(recipes.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmkit")):
                continue
            site = f"{path.relative_to(recipes.parent)}:{node.lineno}"
            if node.module in COMMAND_MODULES:
                continue
            if node.module.count(".") != 1:
                bad.append(
                    f"{site}: from {node.module} (import from the package, {'.'.join(node.module.split('.')[:2])})"
                )
                continue
            public = set(getattr(importlib.import_module(node.module), "__all__", ()))
            bad += [f"{site}: {node.module}.{a.name} is not in its __all__" for a in node.names if a.name not in public]
    assert not bad, "\n".join(bad)
