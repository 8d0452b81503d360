"""User errors print one line; bugs keep their traceback (mmkit.utils.errors)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmkit.utils import USER_ERRORS, ConfigError, DataKeyError, InputError, MissingError, StateError, run_cli

REPO = Path(__file__).resolve().parents[2]


def _raising(exc: BaseException):
    def main() -> int:
        raise exc

    return main


def test_a_user_error_is_one_line_with_status_2(capsys, monkeypatch):
    monkeypatch.delenv("MMKIT_DEBUG", raising=False)
    message = "data.batch_size: must be > 0, got 0\n  (set it in the config)"
    assert run_cli(_raising(ConfigError(message))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: data.batch_size: must be > 0, got 0 (set it")
    with pytest.raises(ConfigError):  # --debug: the traceback instead
        run_cli(_raising(ConfigError(message)), debug=True)
    monkeypatch.setenv("MMKIT_DEBUG", "1")
    with pytest.raises(ConfigError):
        run_cli(_raising(ConfigError(message)))


@pytest.mark.parametrize(
    "bug", [RuntimeError("boom"), KeyError("column"), ValueError("bad"), OSError(5, "I/O"), TypeError("x")]
)
def test_builtin_exceptions_are_bugs_and_propagate(bug, monkeypatch):
    monkeypatch.delenv("MMKIT_DEBUG", raising=False)
    with pytest.raises(type(bug)):
        run_cli(_raising(bug))


def test_mmkit_errors_are_still_the_builtins_callers_catch():
    with pytest.raises(KeyError):
        raise DataKeyError("no column 'caption' in x.parquet")
    assert str(DataKeyError("no column 'caption'")) == "no column 'caption'"  # not repr-quoted like KeyError
    with pytest.raises(FileNotFoundError):
        raise MissingError("missing data path(s): /x")
    assert str(MissingError("missing data path(s): /x")) == "missing data path(s): /x"
    assert issubclass(InputError, ValueError) and issubclass(StateError, RuntimeError)
    for t in (InputError, MissingError, DataKeyError, StateError, ConfigError):
        assert issubclass(t, USER_ERRORS)
    assert not issubclass(RuntimeError, USER_ERRORS) and not issubclass(KeyError, USER_ERRORS)


def test_a_bug_inside_a_recipe_prints_its_traceback(tmp_path):
    """A bug-class exception in the pretraining recipe is not dressed as a config error."""
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("pretrain", {str(REPO / "recipes/flava/pretrain.py")!r})
        recipe = sys.modules["pretrain"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(recipe)
        def broken(*args, **kwargs):
            raise KeyError("a bug, not a config value")
        recipe.load_config = broken
        sys.exit(recipe.main([]))
    """)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MMKIT_DEBUG": "0"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 1, out.stderr
    assert "Traceback" in out.stderr and "KeyError: 'a bug, not a config value'" in out.stderr
    assert "error: " not in out.stderr.splitlines()[-1]
