"""The code stays readable in one screen per function: none in mmkit/ or recipes/ over 60 lines, and the
two pretraining recipes keep to their model's own parts (the skeleton lives in mmkit.pretrain)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 60
#: a long, linear algorithm whose steps read best in one place (WordPiece vocabulary learning)
EXEMPT = {"mmkit/tokenizers/text.py:learn_wordpiece_vocab"}


def _long_functions() -> list[str]:
    found = []
    for root in ("mmkit", "recipes"):
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES and f"{rel}:{node.name}" not in EXEMPT:
                        found.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_over_60_lines():
    assert not _long_functions(), "split these:\n" + "\n".join(_long_functions())


def test_the_pretraining_recipes_hold_only_their_models_parts():
    sizes = {name: len((REPO / f"recipes/{name}/pretrain.py").read_text().splitlines()) for name in ("flava", "clip")}
    assert sizes["flava"] < 300 and sizes["clip"] < 200, sizes
