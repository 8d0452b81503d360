"""The one weight reader and strict loader (mmkit.utils.weights): what it refuses, what it reports, and
that every model loader in the package goes through it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mmkit.utils import CheckpointMismatchError, LoadReport, load_strict, read_weight_file, read_weights

REPO = Path(__file__).resolve().parents[2]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))


def test_a_fitting_state_is_loaded_and_reported():
    src, dst = _net(), nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    report = load_strict(dst, src.state_dict(), "ckpt", target="net", kind="mmkit")
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    assert report == LoadReport("ckpt", "net", "mmkit", sorted(src.state_dict()), [], [])
    assert str(report).splitlines() == ["net from ckpt (mmkit): 6 tensors loaded, 0 new, 0 of the checkpoint unused"]


def test_every_misfit_is_listed_and_nothing_is_copied():
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    del state["0.bias"]
    state["2.weight"] = torch.zeros(5, 4)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        load_strict(model, state, "ckpt.safetensors", target="net", hint="build it from the checkpoint's config")
    text = str(err.value)
    assert text.startswith("checkpoint ckpt.safetensors does not fit the net:")
    assert "2.weight: checkpoint (5, 4) vs model (2, 4)" in text
    assert re.search(r"missing from the checkpoint \(1\):\n\s+0\.bias", text)
    assert re.search(r"in the checkpoint, not in the model \(1\):\n\s+extra\.weight", text)
    assert text.endswith("build it from the checkpoint's config")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_allowed_new_and_unused_tensors_are_reported_not_refused():
    model, src = _net(), _net()
    state = {k: v + 1 for k, v in src.state_dict().items() if not k.startswith("1.")}
    state["head.weight"] = torch.zeros(2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_strict(model, state, "ckpt", may_be_new=lambda k: k.startswith("1."), may_be_unused=True)
    assert report.new == ["1.bias", "1.weight"] and report.unused == ["head.weight"]
    assert torch.equal(model.state_dict()["1.weight"], init["1.weight"])  # left as initialised
    assert torch.equal(model.state_dict()["0.weight"], state["0.weight"])
    assert "  new: 1.bias" in str(report) and "  unused: head.* (1 tensors)" in str(report)
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint"):  # a name list works too
        load_strict(_net(), state, "ckpt", may_be_new=["1.weight"], may_be_unused=True)


def test_reader_takes_every_layout_and_refuses_code(tmp_path):
    state = _net().state_dict()
    save_file(dict(state), str(tmp_path / "w.safetensors"))
    torch.save(dict(state), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        assert all(torch.equal(state[k], v) for k, v in read_weight_file(tmp_path / name).items())
    (tmp_path / "dir").mkdir()
    torch.save(dict(state), tmp_path / "dir" / "pytorch_model.bin")
    assert set(read_weights(tmp_path / "dir")) == set(state)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"w": Payload()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(ValueError, match=r"evil.pt cannot be trusted or read: it holds a pickle") as refused:
        read_weight_file(tmp_path / "evil.pt")
    assert "weights_only" not in str(refused.value)  # never torch's advice to load it with weights_only=False
    assert not (tmp_path / "ran").exists()
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        read_weight_file(tmp_path / "list.pt")
    with pytest.raises(ValueError, match="unknown weights format '.npz'"):
        (tmp_path / "w.npz").write_bytes(b"")
        read_weight_file(tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_weights(tmp_path / "nowhere")


# Files that read tensors without the reader, each for a reason that is not model weights.
OWN_READERS = {
    "mmkit/utils/weights.py": "the reader itself",
    "mmkit/train/checkpoint.py": "a run's own state (rank files, DCP), refused by its safe planner and unpickler",
    "mmkit/eval/features.py": "the evaluation's cached features, written by mmkit.eval",
}


def test_every_model_loader_goes_through_the_reader():
    readers = re.compile(r"(?<!`)\btorch\.load\(|\bsafetensors\.torch import (?:[\w, ]*\b)?load_file\b")
    found = set()
    for path in [*REPO.glob("mmkit/**/*.py"), *REPO.glob("recipes/**/*.py")]:
        if readers.search(path.read_text()):
            found.add(str(path.relative_to(REPO)))
    assert found == set(OWN_READERS), (
        f"read weights with mmkit.utils.read_weights in {sorted(found - set(OWN_READERS))}"
    )
