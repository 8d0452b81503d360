from dataclasses import dataclass, field

import pytest

from mmkit.utils import config_from_dict, config_to_dict, replace_config


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


def test_dict_round_trip():
    cfg = replace_config(Outer(), {"inner.width": 9})
    data = config_to_dict(cfg)
    assert data == {"inner": {"width": 9, "sizes": [1, 2]}, "name": "x"}
    back = config_from_dict(Outer, data)
    assert back.inner.width == 9 and list(back.inner.sizes) == [1, 2]


def test_override_values_are_typed():
    from mmkit.utils import parse_override

    assert parse_override("optim.lr=3e-4") == ("optim.lr", 3e-4)  # YAML 1.1 alone would keep a string
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
