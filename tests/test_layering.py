"""The package layering: imports between mmkit's top-level subpackages form a DAG.

Every ``import mmkit.x`` / ``from mmkit.x import ...`` counts, wherever it is written (module level,
inside a function, under ``TYPE_CHECKING``), and so do relative imports and
``importlib.import_module("mmkit.x")`` with a literal name: an import deferred to call time is
still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mmkit"
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())

# Directions decided on purpose (each reverse edge exists); see the docstrings of
# mmkit/data/formats.py, mmkit/tokenizers/dalle_keys.py, mmkit/losses/flava.py.
FORBIDDEN = [
    ("data", "tokenizers"),  # tokenizers -> data: dalle_preprocess and the token-cache format live in data
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


def _imported_modules(tree: ast.AST, module: str) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``tree``; ``module`` is the dotted name of the
    file (``mmkit.data.sources``), used to resolve relative imports."""
    package = module.split(".")[:-1]  # what "." means: the file's package (for __init__.py, the package itself)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "mmkit":  # from mmkit import data
                found += [(f"mmkit.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((target, node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.args[0].value, node.lineno))
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


def _package_edges() -> dict[tuple[str, str], list[str]]:
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


@pytest.mark.parametrize(("src", "dst"), FORBIDDEN, ids=[f"{a}-not-{b}" for a, b in FORBIDDEN])
def test_decided_directions(src, dst):
    sites = _package_edges().get((src, dst))
    assert not sites, f"mmkit.{src} must not import mmkit.{dst}: {', '.join(sites)}"


@pytest.mark.parametrize("package", ["mmkit.models", "mmkit.encoders", "mmkit.tokenizers", "mmkit.layers",
                                     "mmkit.losses", "mmkit.heads", "mmkit.masking"])  # fmt: skip
def test_the_model_packages_load_nothing_of_the_data_pipeline(package):
    """Whoever reuses the encoders or the models gets no data loaders, sources or collators with them:
    checked in a fresh interpreter, so whatever the package imports at any depth counts."""
    import subprocess
    import sys

    code = f"import sys, {package}; print(sorted(m for m in sys.modules if m.startswith('mmkit.data')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import {package} loads {out.strip()}"


#: modules a recipe may import from directly: commands whose ``main`` is their interface
COMMAND_MODULES = {"mmkit.tokenizers.cache"}


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
