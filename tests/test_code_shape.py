"""The code stays readable in one screen per function: none in mmkit/, recipes/ or benchmarks/ over 60
lines, no mmkit module over 600 lines, no mmkit function taking more than 10 parameters (group them in a
config or a dataclass), and the two pretraining recipes keep to their model's own parts (the skeleton
lives in mmkit.pretrain)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 60
MAX_MODULE_LINES = 600
MAX_PARAMETERS = 10
#: a long, linear algorithm whose steps read best in one place (WordPiece vocabulary learning)
EXEMPT = {"mmkit/tokenizers/text.py:learn_wordpiece_vocab"}

Function = ast.FunctionDef | ast.AsyncFunctionDef


def _files(*roots: str) -> Iterator[tuple[str, ast.Module, str]]:
    """``(path relative to the repository, parsed module, source)`` of every Python file under ``roots``."""
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            yield path.relative_to(REPO).as_posix(), ast.parse(text), text


def _functions(tree: ast.Module) -> Iterator[tuple[Function, bool]]:
    """Every function in ``tree`` at any depth, with whether it is a method (defined in a class body)."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, in_class = stack.pop()
        if isinstance(node, Function):
            yield node, in_class
        for child in ast.iter_child_nodes(node):
            stack.append((child, isinstance(node, ast.ClassDef)))


def _long_functions() -> list[str]:
    found = []
    for rel, tree, _ in _files("mmkit", "recipes", "benchmarks"):
        for node, _ in _functions(tree):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES and f"{rel}:{node.name}" not in EXEMPT:
                found.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    return sorted(found)


def _parameter_count(node: Function, is_method: bool) -> int:
    """Every parameter (positional-only, positional, keyword-only, ``*args``, ``**kwargs``), less the
    ``self``/``cls`` of a method that is not a staticmethod."""
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args)]
    count = len(names) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
    if is_method and not static and names and names[0] in ("self", "cls"):
        count -= 1
    return count


def _many_parameters() -> list[str]:
    found = []
    for rel, tree, _ in _files("mmkit"):
        for node, is_method in _functions(tree):
            count = _parameter_count(node, is_method)
            if count > MAX_PARAMETERS:
                found.append(f"{rel}:{node.lineno} {node.name} ({count} parameters)")
    return sorted(found)


def _long_modules() -> list[str]:
    found = []
    for rel, _, text in _files("mmkit"):
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{rel} ({lines} lines)")
    return found


def test_the_scanners_count_what_they_say():
    tree = ast.parse(
        "def f(a, /, b, *c, d, **e): pass\n"
        "class C:\n"
        "    def m(self, a): pass\n"
        "    @classmethod\n"
        "    def k(cls, a, b): pass\n"
        "    @staticmethod\n"
        "    def s(self, a): pass\n"
        "    def outer(self):\n"
        "        def inner(self): pass\n"
    )
    counts = {node.name: _parameter_count(node, is_method) for node, is_method in _functions(tree)}
    assert counts == {"f": 5, "m": 1, "k": 2, "s": 2, "outer": 0, "inner": 1}


def test_no_function_is_over_60_lines():
    long = _long_functions()
    assert not long, f"split these (over {MAX_LINES} lines):\n" + "\n".join(long)


def test_no_module_is_over_600_lines():
    long = _long_modules()
    assert not long, f"split these mmkit modules (over {MAX_MODULE_LINES} lines):\n" + "\n".join(long)


def test_no_function_takes_more_than_10_parameters():
    many = _many_parameters()
    assert not many, f"group these parameters (over {MAX_PARAMETERS}):\n" + "\n".join(many)


def _code_lines(path: Path) -> int:
    """Non-blank lines after the module docstring (the docstring lists the recipe's features and config keys:
    documentation, not code)."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    first = tree.body[0]
    start = first.end_lineno if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) else 0
    return sum(1 for line in text.splitlines()[start:] if line.strip())


def test_the_pretraining_recipes_hold_only_their_models_parts():
    sizes = {name: _code_lines(REPO / f"recipes/{name}/pretrain.py") for name in ("flava", "clip")}
    assert sizes["flava"] < 230 and sizes["clip"] < 100, sizes
