"""The shared runtime's pieces on a tiny model: GradScaler handling, checkpoint round trips, safe loading,
atomic saves with readable errors, resume rules."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from mmkit.train import (
    CheckpointError,
    CheckpointManager,
    CheckpointSaveError,
    Collectives,
    DistInfo,
    ResumeError,
    RunContext,
    SchedulerState,
    StepOptions,
    TrainState,
    TrainStep,
    check_resume_config,
    warmup_cosine_scheduler,
)
from mmkit.train.checkpoint import CheckpointConfig


def _ctx(tmp_path, config=None) -> RunContext:
    return RunContext(DistInfo(), Collectives(torch.device("cpu"), 1), tmp_path, config or CheckpointConfig())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 4))


def _batches():
    g = torch.Generator().manual_seed(1)
    while True:
        yield torch.randn(8, 4, generator=g)


def _forward(model, x):
    loss = model(x).float().sum()  # d loss / d output = 1: scaled by 2^20 it overflows fp16
    return loss, {"sum": loss}


def _fp16_step(tmp_path, model, scaler):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = warmup_cosine_scheduler(opt, 0, 100)
    return TrainStep(_ctx(tmp_path), model, opt, sched, StepOptions("fp16", max_grad_norm=1.0), scaler=scaler), opt


def test_fp16_overflow_skips_backs_off_continues_and_the_scale_resumes_exactly(tmp_path):
    model = _model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, backoff_factor=2.0**-19, growth_interval=1)
    step, opt = _fp16_step(tmp_path, model, scaler)
    data = _batches()
    before = [p.detach().clone() for p in model.parameters()]
    first = step(lambda: next(data), _forward, 1)
    assert not first.finite and not torch.isfinite(first.grad_norm)  # a genuine fp16 overflow
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # update skipped
    assert not opt.state and scaler.get_scale() == 2.0  # scale backed off, Adam untouched
    second = step(lambda: next(data), _forward, 2)
    assert second.finite and not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == 4.0  # growth_interval=1: a finite step grows it
    # the scale is a checkpointed component: saved and restored exactly
    state = TrainState(_ctx(tmp_path), CheckpointConfig(every=1, keep=2), model, opt, {"grad_scaler": scaler}, ())
    state.counters.step = 2
    state.save()
    fresh_model = _model()
    fresh_scaler = torch.amp.GradScaler("cpu", init_scale=7.0)
    _, fresh_opt = _fp16_step(tmp_path, fresh_model, fresh_scaler)
    ckpt = CheckpointManager(tmp_path / "checkpoints")
    ckpt.load(ckpt.latest(), fresh_model, fresh_opt, {"grad_scaler": fresh_scaler, "counters": state.counters})
    assert fresh_scaler.state_dict() == scaler.state_dict()


def _saved(tmp_path, steps=(1, 2, 3), keep=5):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = warmup_cosine_scheduler(opt, 1, 10)
    ckpt = CheckpointManager(tmp_path / "ck", keep=keep)
    for s in steps:
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        sched.step()
        ckpt.save(s, model, opt, {"scheduler": SchedulerState(sched)}, {"config": {"optim": {"lr": 1e-3}}})
    return model, opt, sched, ckpt


def test_round_trip_rotation_and_a_resave_keeps_a_complete_copy(tmp_path, monkeypatch):
    import mmkit.train.checkpoint as mod

    model, opt, sched, ckpt = _saved(tmp_path, keep=2)
    assert [p.name for p in ckpt.complete()] == ["step_00000002", "step_00000003"]
    fresh = _model()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_sched = warmup_cosine_scheduler(fresh_opt, 1, 10)
    meta = ckpt.load(ckpt.latest(), fresh, fresh_opt, {"scheduler": SchedulerState(fresh_sched)})
    assert meta["step"] == 3 and fresh_sched.last_epoch == sched.last_epoch
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # re-saving step 3 fails half-way: step 3's complete copy is still there
    real = mod.dcp.save

    def failing(state, checkpoint_id, **options):
        real(state, checkpoint_id=checkpoint_id, **options)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mod.dcp, "save", failing)
    with pytest.raises(CheckpointSaveError, match=r"could not write checkpoint .*step_00000003\.tmp: no space left"):
        ckpt.save(3, model, opt)
    assert ckpt.latest().name == "step_00000003" and (ckpt.latest() / "COMPLETE").exists()


def test_a_pickle_payload_in_any_mmkit_file_never_runs(tmp_path):
    model, opt, sched, ckpt = _saved(tmp_path, steps=(1, 2))
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    newest = ckpt.latest()
    (newest / "rank0.pt").write_bytes(pickle.dumps({"scheduler": Payload()}))
    (newest / "meta.json").write_bytes(pickle.dumps(Payload()))
    (newest / "COMPLETE").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        ckpt.load(newest, model, opt, {"scheduler": SchedulerState(sched)})
    # the payload in torch.save's own format, with valid metadata beside it: refused by weights_only
    torch.save({"scheduler": Payload()}, newest / "rank0.pt")
    (newest / "meta.json").write_text('{"format": 2, "step": 2, "world_size": 1, "config": {}}')
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        ckpt.load(newest, model, opt, {"scheduler": SchedulerState(sched)})
    assert not marker.exists()


def test_resume_rules_refuse_frozen_fields_and_report_the_rest():
    saved = {"model": {"text": {"num_layers": 2}}, "data": {"batch_size": 8}, "optim": {"lr": 1e-3}}
    now = {"model": {"text": {"num_layers": 4}}, "data": {"batch_size": 16}, "optim": {"lr": 1e-3}}
    with pytest.raises(
        ResumeError, match=r"data\.batch_size: checkpoint 8, config 16; model\.text\.num_layers: checkpoint 2, config 4"
    ):
        check_resume_config(saved, now, ("model", "data.batch_size"))
    changes = check_resume_config(saved, {**saved, "optim": {"lr": 5e-4}}, ("model", "data.batch_size"))
    assert changes == ["optim.lr: 0.001 -> 0.0005"]


def test_a_changed_lr_takes_effect_on_resume(tmp_path):
    _, opt, sched, ckpt = _saved(tmp_path, steps=(1, 2, 3))
    fresh = _model()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=5e-2)  # the new config's lr
    fresh_sched = warmup_cosine_scheduler(fresh_opt, 1, 10)
    ckpt.load(ckpt.latest(), fresh, fresh_opt, {"scheduler": SchedulerState(fresh_sched)})
    assert fresh_sched.last_epoch == 3
    expected = 5e-2 * fresh_sched.lr_lambdas[0](3)
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(expected)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * sched.lr_lambdas[0](3))  # the saved run's


def test_collectives_put_tensors_on_their_device_and_are_local_with_one_process():
    comm = Collectives(torch.device("cpu"), 1)
    t = torch.tensor([1.0, 2.0], dtype=torch.float64)
    out = comm.all_reduce(t, "max")
    assert out.device == comm.device and torch.equal(out, t) and out is not t
    assert comm.any(False, torch.tensor(1.0), True) == [False, True, True]
    with pytest.raises(ValueError, match="op must be one of"):
        comm.all_reduce(t, "prod")


class _Opens:
    """A pickle payload: unpickling it creates ``path`` (as ``os.system`` would run a command)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_planted_dcp_metadata_pickle_never_runs(tmp_path):
    """torch's FileSystemReader unpickles ``.metadata`` as it is; mmkit's admits DCP's classes only."""
    import torch.distributed.checkpoint as dcp

    model, opt, sched, ckpt = _saved(tmp_path, steps=(1, 2))
    newest, marker = ckpt.latest(), tmp_path / "PWNED"
    (newest / ".metadata").write_bytes(pickle.dumps(_Opens(marker)))
    with pytest.raises(CheckpointError, match=r"\.metadata is unsafe: refused to load (io|builtins)\.open"):
        ckpt.load(newest, model, opt, {"scheduler": SchedulerState(sched)})
    assert not marker.exists()
    dcp.FileSystemReader(str(newest)).read_metadata()  # the oracle: torch's own reader runs it
    assert marker.exists()
    (newest / ".metadata").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(CheckpointError, match=r"\.metadata is not DCP checkpoint metadata"):
        ckpt.load(newest, model, opt, {"scheduler": SchedulerState(sched)})


# the planted entry is written over the newest checkpoint on purpose (DCP warns that it overwrites)
@pytest.mark.filterwarnings("ignore:Detected an existing checkpoint:UserWarning")
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # its own one-process DCP calls
def test_a_planted_entry_in_the_dcp_data_never_runs(tmp_path):
    """DCP stores non-tensor state (the optimiser's lr, betas, ...) as torch.save'd entries of its data
    file, which torch's load planner reads with ``weights_only=False``: a checkpoint written with a
    payload there is refused, and the payload does not run."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, opt, sched, ckpt = _saved(tmp_path, steps=(1, 2))
    newest, marker = ckpt.latest(), tmp_path / "PWNED"
    model_sd, optim_sd = get_state_dict(model, opt)
    optim_sd["param_groups"][0]["lr"] = _Opens(marker)
    for f in newest.glob("*.distcp"):
        f.unlink()
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(newest), no_dist=True)  # planted entry
    with pytest.raises(CheckpointError, match=r"entry 'optim\.param_groups\.0\.lr' cannot be read safely"):
        ckpt.load(newest, model, opt, {"scheduler": SchedulerState(sched)})
    assert not marker.exists()
    _, fresh_optim = get_state_dict(model, opt)
    dcp.load({"optim": fresh_optim}, checkpoint_id=str(newest), no_dist=True)  # the oracle: torch's planner runs it
    assert marker.exists()


# the payloads are pickles of another protocol than torch.save's: torch says so before refusing them
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_every_file_of_a_checkpoint_replaced_by_a_pickle_runs_nothing(tmp_path):
    """Each file of a real checkpoint in turn replaced by a payload: every load that reads it is
    refused with a one-line CheckpointError naming the file, and no payload runs; with the files
    restored the checkpoint loads again."""
    model, opt, sched, ckpt = _saved(tmp_path, steps=(1, 2))
    newest, marker = ckpt.latest(), tmp_path / "PWNED"
    files = sorted(p for p in newest.iterdir() if p.is_file())
    names = {p.name for p in files}
    assert names >= {".metadata", "meta.json", "COMPLETE", "rank0.pt"} and any(n.endswith(".distcp") for n in names)
    for f in files:
        original = f.read_bytes()
        f.write_bytes(pickle.dumps(_Opens(marker)))
        if f.name == "COMPLETE":  # a marker: its presence is read, never its bytes
            assert ckpt.load(newest, model, opt, {"scheduler": SchedulerState(sched)})["step"] == 2
        else:
            with pytest.raises(CheckpointError, match=f.name if f.suffix != ".distcp" else None) as raised:
                ckpt.load(newest, model, opt, {"scheduler": SchedulerState(sched)})
            assert "\n" not in str(raised.value), f"{f.name}: not one line: {raised.value}"
        f.write_bytes(original)
        assert not marker.exists(), f.name
    assert ckpt.load(newest, model, opt, {"scheduler": SchedulerState(sched)})["step"] == 2
