from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from mmkit.utils import (
    ConfigError,
    at_least,
    check_config,
    choice,
    config_from_dict,
    config_to_dict,
    fraction,
    load_config,
    positive,
    replace_config,
)


@dataclass
class Inner:
    width: int = 4
    sizes: tuple[int, int] = (1, 2)


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    name: str = "x"


def test_nested_dotted_and_instance_overrides():
    cfg = replace_config(Outer(), {"inner": {"width": 8}}, name="y")
    assert cfg == Outer(Inner(width=8), "y")
    assert replace_config(cfg, {"inner.sizes": (3, 4)}).inner == Inner(8, (3, 4))
    assert replace_config(cfg, {"inner.width": 1, "inner.sizes": (5, 5)}).inner == Inner(1, (5, 5))
    assert replace_config(cfg, inner=Inner(2)).inner == Inner(2)
    assert Outer().inner.width == 4  # the original is untouched


def test_unknown_keys_name_the_nearest_valid_key():
    with pytest.raises(ValueError, match=r"unknown config key 'inner\.widht'; did you mean 'width'\?"):
        replace_config(Outer(), {"inner.widht": 3})
    with pytest.raises(ValueError, match=r"unknown config key 'zzz' \(valid keys: inner, name\)"):
        replace_config(Outer(), zzz=1)
    with pytest.raises(TypeError, match="dataclass instance"):
        replace_config(Outer, {})
    with pytest.raises(ConfigError) as info:  # every unknown key at once
        replace_config(Outer(), {"inner.widht": 3, "nmae": "y"})
    assert info.value.problems == [
        "unknown config key 'inner.widht'; did you mean 'width'? (valid keys: sizes, width)",
        "unknown config key 'nmae'; did you mean 'name'? (valid keys: inner, name)",
    ]


def test_dict_round_trip():
    cfg = replace_config(Outer(), {"inner.width": 9})
    data = config_to_dict(cfg)
    assert data == {"inner": {"width": 9, "sizes": [1, 2]}, "name": "x"}
    back = config_from_dict(Outer, data)
    assert back.inner.width == 9 and list(back.inner.sizes) == [1, 2]


def test_override_values_are_typed():
    from mmkit.utils import parse_override

    # YAML 1.1 keeps 3e-4 a string; load_config makes it a float where the field is a float (and a str field keeps it)
    assert parse_override("optim.lr=3e-4") == ("optim.lr", "3e-4")
    assert parse_override("data.batch_size=16") == ("data.batch_size", 16)
    assert parse_override("checkpoint.resume=auto") == ("checkpoint.resume", "auto")
    assert parse_override("betas=[0.9, 0.95]") == ("betas", [0.9, 0.95])
    with pytest.raises(ValueError, match="must look like key=value"):
        parse_override("optim.lr")


def test_load_config_file_overrides_and_free_dicts(tmp_path):
    from mmkit.utils import load_config

    @dataclass
    class Recipe:
        lr: float = 1.0
        inner: Inner = field(default_factory=Inner)
        model: dict = field(default_factory=dict)

    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.5\ninner: {width: 7}\nmodel: {a: 1}\n")
    cfg = load_config(Recipe, str(path), ["lr=3e-4", "model.b.c=2", "inner.width=9"])
    assert cfg.lr == 3e-4 and cfg.inner.width == 9 and cfg.model == {"a": 1, "b.c": 2}
    with pytest.raises(ValueError, match="unknown config key 'lrr'; did you mean 'lr'"):
        load_config(Recipe, None, ["lrr=1"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(Recipe, str(tmp_path / "missing.yaml"))


# -- type and range checks ---------------------------------------------------------------------


@dataclass
class Optim:
    lr: float = positive(1e-3)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = at_least(0, 100)
    total_steps: int = positive(1000)
    max_grad_norm: float | None = positive(1.0)


@dataclass
class Data:
    train_pairs: list[str] = field(default_factory=list)
    tokenizer: str | None = None
    batch_size: int = at_least(1, 32)
    pair_prob: float = fraction(0.7)


@dataclass
class Checkpoint:
    every: int = field(default=1000, metadata={"min": 0, "min_exclusive": True})
    keep: int = field(default=3, metadata={"ge": 1})


@dataclass
class Train:
    run_dir: str = "runs/x"
    model: dict[str, Any] = field(default_factory=dict)
    data: Data = field(default_factory=Data)
    optim: Optim = field(default_factory=Optim)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    precision: str = choice("fp32", "bf16", "fp16")
    distributed: Literal["ddp", "fsdp"] = "ddp"
    compile: bool = False
    extra: Any = None
    eval_checkpoint: Checkpoint | None = None


def _error(overrides, path=None):
    with pytest.raises(ConfigError) as info:
        load_config(Train, path, overrides)
    message = str(info.value)
    assert "\n" not in message and message.startswith(("invalid config: ", "config file "))
    return message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.total_steps=abc", "optim.total_steps: expected an integer, got 'abc' (str)"),
        ("data.batch_size=0", "data.batch_size: must be >= 1, got 0"),
        ("checkpoint.every=0", "checkpoint.every: must be > 0, got 0"),
        ("checkpoint.keep=0", "checkpoint.keep: must be >= 1, got 0"),
        ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
        ("optim.lr=-1e-3", "optim.lr: must be > 0, got -0.001"),
        ("optim.lr=fast", "optim.lr: expected a number, got 'fast' (str)"),
        ("data.pair_prob=1.5", "data.pair_prob: must be >= 0 and <= 1, got 1.5"),
        ("optim.total_steps=3.0", "optim.total_steps: expected an integer, got 3.0 (float)"),
        ("optim.total_steps=1e5", "optim.total_steps: expected an integer, got '1e5' (str)"),
        ("optim.total_steps=true", "optim.total_steps: expected an integer, got True (bool)"),
        ("compile=maybe", "compile: expected true or false, got 'maybe' (str)"),
        ("compile=1", "compile: expected true or false, got 1 (int)"),
        ("optim.betas=[0.9]", "optim.betas: expected a list of 2 values, got [0.9] (list)"),
        ("optim.betas=[0.9, x]", "optim.betas[1]: expected a number, got 'x' (str)"),
        ("optim.betas=0.9", "optim.betas: expected a list of 2 values, got 0.9 (float)"),
        ("precision=fp64", "precision: must be one of 'fp32', 'bf16', 'fp16', got 'fp64'"),
        ("distributed=zero", "distributed: expected one of 'ddp', 'fsdp', got 'zero' (str)"),
        ("data.train_pairs=a.tar", "data.train_pairs: expected a list, got 'a.tar' (str)"),
        ("data.train_pairs=[a.tar, 3]", "data.train_pairs[1]: expected a string, got 3 (int)"),
        ("data.tokenizer=[a]", "data.tokenizer: expected a string, got ['a'] (list)"),
        ("optim.max_grad_norm=0", "optim.max_grad_norm: must be > 0, got 0.0"),
        ("model=3", "model: expected a mapping, got 3 (int)"),
        ("optim=3", "optim: expected a section (a mapping of keys to values), got 3 (int)"),
        ("run_dir={a: 1}", "run_dir: expected a string, got {'a': 1} (dict)"),
        ("optim.lr.x=1", "optim.lr: expected a number, got {'x': 1} (dict)"),
        ("eval_checkpoint.every=0", "eval_checkpoint.every: must be > 0, got 0"),
        ("eval_checkpoint=[1]", "eval_checkpoint: expected a section (a mapping of keys to values), got [1] (list)"),
    ],
)
def test_each_bad_value_names_its_key(override, expected):
    assert _error([override]) == f"invalid config: {expected}"


def test_every_problem_in_one_message(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {batch_size: 0}\noptim: {total_steps: 10.5, lrr: 1}\n")
    message = _error(["optim.total_steps=abc", "checkpoint.every=0", "compile=yes please"], str(path))
    assert message == (
        "invalid config: unknown config key 'optim.lrr'; did you mean 'lr'? (valid keys: betas, lr, max_grad_norm, "
        "total_steps, warmup_steps); data.batch_size: must be >= 1, got 0; optim.total_steps: expected an integer, "
        "got 'abc' (str); checkpoint.every: must be > 0, got 0; compile: expected true or false, got 'yes please' (str)"
    )
    with pytest.raises(ConfigError) as info:
        load_config(Train, str(path), ["optim.total_steps=abc"])
    assert len(info.value.problems) == 3 and isinstance(info.value, ValueError)


def test_good_values_are_converted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  betas: [0.9, 1]\n  max_grad_norm: 2\ndata: {train_pairs: [a.tar]}\n")
    cfg = load_config(Train, str(path), ["optim.warmup_steps=0", "data.pair_prob=1", "run_dir=1e3", "extra=[1, x]"])
    assert cfg.optim == Optim(lr=1e-3, betas=(0.9, 1.0), warmup_steps=0, max_grad_norm=2.0)
    assert type(cfg.optim.lr) is float and type(cfg.optim.betas) is tuple and type(cfg.optim.betas[1]) is float
    assert type(cfg.optim.max_grad_norm) is float and type(cfg.data.pair_prob) is float
    assert cfg.data.train_pairs == ["a.tar"] and cfg.extra == [1, "x"]
    assert cfg.run_dir == "1e3"  # a str field keeps what was written
    assert load_config(Train, None, ["run_dir=2024", "precision=bf16"]).run_dir == "2024"  # not the int 2024
    assert load_config(Train, None, ["distributed=fsdp"]).distributed == "fsdp"


def test_optional_fields_accept_none_and_skip_ranges():
    cfg = load_config(Train, None, ["optim.max_grad_norm=null", "data.tokenizer=null", "data.tokenizer=vocab.txt"])
    assert cfg.optim.max_grad_norm is None and cfg.data.tokenizer == "vocab.txt"
    assert load_config(Train, None, ["data.tokenizer=~"]).data.tokenizer is None
    assert (
        _error(["data.batch_size=null"]) == "invalid config: data.batch_size: expected an integer, got None (NoneType)"
    )


def test_nested_sections_from_mappings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("eval_checkpoint: {every: 5}\ncheckpoint: {keep: 1}\n")
    cfg = load_config(Train, str(path), ["eval_checkpoint.keep=2"])
    assert cfg.eval_checkpoint == Checkpoint(every=5, keep=2) and cfg.checkpoint == Checkpoint(keep=1)
    assert _error(["eval_checkpoint={evry: 5}"]) == (
        "invalid config: unknown config key 'eval_checkpoint.evry'; did you mean 'every'? (valid keys: every, keep)"
    )


def test_free_form_dict_fields(tmp_path):
    cfg = load_config(Train, None, ["model.image.num_layers=4", "model.dropout=1e-1", "model.name=x"])
    assert cfg.model == {"image.num_layers": 4, "dropout": 0.1, "name": "x"}  # no annotation: 1e-1 is a number


def test_check_config_standalone():
    cfg = Train(optim=Optim(lr=1, betas=[0.9, 0.95]), data=Data(batch_size=4))
    checked = check_config(cfg)
    assert checked.optim.betas == (0.9, 0.95) and type(checked.optim.lr) is float and checked.data.batch_size == 4
    assert cfg.optim.betas == [0.9, 0.95]  # the input is left as it is
    assert check_config(Train()) == Train()
    with pytest.raises(ConfigError, match=r"^invalid config: data.batch_size: must be >= 1, got 0; precision: must"):
        check_config(Train(data=Data(batch_size=0), precision="int8"))
    with pytest.raises(TypeError, match="dataclass instance"):
        check_config(Train)


def test_field_helpers():
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(Train)}
    assert fields["precision"].default == "fp32"
    assert dict(fields["precision"].metadata) == {"choices": ("fp32", "bf16", "fp16")}
    assert dict(choice("a", "a", "b").metadata) == {"choices": ("a", "b")}
    assert dict(positive(1).metadata) == {"gt": 0} and dict(at_least(2, 3).metadata) == {"ge": 2}
    assert dict(fraction(0.5).metadata) == {"ge": 0, "le": 1}
    assert dict(positive(1, metadata={"help": "x"}).metadata) == {"gt": 0, "help": "x"}

    @dataclass
    class Bounds:
        x: float = field(default=0.5, metadata={"max": 1.0, "max_exclusive": True})
        y: float = field(default=0.5, metadata={"lt": 1, "le": 0.9})

    check_config(Bounds())
    with pytest.raises(
        ConfigError, match=r"^invalid config: x: must be < 1.0, got 1.0; y: must be < 1 and <= 0.9, got 0.95$"
    ):
        check_config(Bounds(x=1.0, y=0.95))


def test_bad_config_files(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- optim.lr: 1\n")
    assert _error([], str(path)) == f"config file {path} must be a mapping of keys to values, got a list"
    path.write_text("fp32\n")
    assert _error([], str(path)) == f"config file {path} must be a mapping of keys to values, got a string ('fp32')"
    path.write_text("run_dir: x\noptim:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=rf"^config file {path} is not valid YAML at line 4, column 1: "):
        load_config(Train, str(path))
    path.write_text("run_dir: x\n  compile: true\n")
    with pytest.raises(ConfigError, match=r"list.yaml is not valid YAML at line 2, column 10: mapping values"):
        load_config(Train, str(path))
    path.write_text("# only comments\n")
    assert load_config(Train, str(path)) == Train()
    with pytest.raises(FileNotFoundError, match=r"config file .*missing.yaml does not exist"):
        load_config(Train, str(tmp_path / "missing.yaml"))


def test_string_annotations_of_a_recipe_module(tmp_path):
    """Recipes use ``from __future__ import annotations`` and are imported under a synthetic module name."""
    import importlib.util
    import sys

    path = tmp_path / "recipe.py"
    path.write_text(
        "from __future__ import annotations\n"
        "from dataclasses import dataclass, field\n"
        "from mmkit.utils import positive\n"
        "@dataclass\n"
        "class Sub:\n"
        "    steps: int = positive(10)\n"
        "@dataclass\n"
        "class Cfg:\n"
        "    sub: Sub = field(default_factory=Sub)\n"
        "    ratio: float | None = None\n"
    )
    spec = importlib.util.spec_from_file_location("recipe_test_config_strings", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        assert load_config(module.Cfg, None, ["ratio=2"]).ratio == 2.0
        with pytest.raises(
            ConfigError, match=r"^invalid config: sub.steps: must be > 0, got 0; ratio: expected a number"
        ):
            load_config(module.Cfg, None, ["sub.steps=0", "ratio=x"])
    finally:
        del sys.modules[spec.name]
