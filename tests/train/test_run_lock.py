"""One writer per run directory: a second hold on a held directory is refused naming the holder, a
hold left by a killed process is taken over with a warning, a second training run on a directory
in use stops at once while the first finishes untouched, and a run gives back what it held however it ends."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from mmkit.train import RunDirInUseError, RunDirLock, TrainingRecipe, run_recipe, run_training, start_run
from mmkit.utils.run_lock import LOCK_NAME

REPO = Path(__file__).resolve().parents[2]


def test_a_held_directory_is_refused_naming_the_holder_and_free_again_after_release(tmp_path):
    first = RunDirLock.acquire(tmp_path / "run")
    with pytest.raises(
        RunDirInUseError,
        match=rf"run directory .*run is in use by pid {os.getpid()} on host \S+ "
        r"\(started \d{4}-\d\d-\d\dT[\d:]+[+-][\d:]+\): .*another run_dir",
    ):
        RunDirLock.acquire(tmp_path / "run")
    first.release()
    first.release()  # idempotent
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""  # a clean release leaves no holder behind
    again = RunDirLock.acquire(tmp_path / "run")
    again.release()


def test_a_killed_holders_directory_is_taken_over_with_a_warning(tmp_path, caplog):
    code = f"from mmkit.train import RunDirLock; hold = RunDirLock.acquire({str(tmp_path / 'run')!r}); print('held')"
    holder = subprocess.Popen(
        [sys.executable, "-u", "-c", f"{code}; import time; time.sleep(60)"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirInUseError, match=f"in use by pid {holder.pid} "):
            RunDirLock.acquire(tmp_path / "run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="mmkit.utils.run_lock"):
        lock = RunDirLock.acquire(tmp_path / "run")
    assert f"from pid {holder.pid} on host" in caplog.text and "no longer running" in caplog.text
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_second_training_run_on_a_directory_in_use_stops_and_the_first_finishes(tmp_path):
    from mmkit.data import shapes_dataset

    data = shapes_dataset(tmp_path / "data", num_train=48, num_val=16, num_images=8, num_text=32, per_shard=48)
    run = tmp_path / "run"
    steps = 300  # long enough to be still training when the second copy has started (a few seconds)
    args = [
        "--config",
        str(REPO / "recipes/clip/configs/demo.yaml"),
        f"run_dir={run}",
        "model_type=clip",
        "data.dataset=files",
        f"data.train_pairs={[str(p) for p in data.train_pairs]}",
        f"data.val_pairs={[str(p) for p in data.val_pairs]}",
        f"data.text={[str(p) for p in data.text]}",
        "data.vocab_size=300",
        "data.batch_size=8",
        "data.num_workers=0",
        f"optim.total_steps={steps}",
        "optim.warmup_steps=2",
        "checkpoint.every=10",
        "log_every=1",
        "eval_every=1000",
        "eval_samples=16",
        "progress=false",
        "distributed=none",
    ]
    recipe = [sys.executable, str(REPO / "recipes/clip/pretrain.py")]
    first = subprocess.Popen([*recipe, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # the first run holds the directory from its start; wait until it trains
        assert first.poll() is None, first.communicate()[1][-2000:]
        second = subprocess.run([*recipe, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert lines[-1].startswith(f"error: run directory {run} is in use by pid {first.pid} on host "), lines
        err = first.communicate(timeout=600)[1]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    steps_logged = [
        r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"
    ]
    assert steps_logged == list(range(1, steps + 1))  # one run's steps, once each
    assert (run / "final" / "model.safetensors").exists() and (run / LOCK_NAME).read_text() == ""


class _Recipe(TrainingRecipe):
    """Starts a run that registers two resources; its training fails when told to."""

    def __init__(self, run_dir: Path, fail: Exception | None, events: list) -> None:
        self.run_dir, self.fail, self.events = run_dir, fail, events

    def setup(self) -> None:
        self.ctx = start_run(None, self.run_dir)
        self.ctx.comm.barrier = lambda: self.events.append("barrier")
        for name in ("stream", "metrics"):
            self.ctx.closing(type("Resource", (), {"close": lambda _, n=name: self.events.append(n)})())

    def train(self) -> None:
        if self.fail is not None:
            raise self.fail


@pytest.mark.parametrize("fail", [None, RuntimeError("training failed")])
def test_a_run_closes_what_it_registered_last_first_and_gives_its_directory_back_however_it_ends(tmp_path, fail):
    """The ranks wait for each other only after a run that finished (a failed rank must not hang its peers);
    the registered resources close the last first, then the run directory is released."""
    events = []
    recipe = _Recipe(tmp_path / "run", fail, events)
    if fail is None:
        assert run_training(recipe) == 0
    else:
        with pytest.raises(RuntimeError, match="training failed"):
            run_training(recipe)
    assert events == (["barrier"] if fail is None else []) + ["metrics", "stream"]
    RunDirLock.acquire(tmp_path / "run").release()  # free again
    recipe.close(completed=True)  # a second close does nothing
    assert events == (["barrier"] if fail is None else []) + ["metrics", "stream"]
    TrainingRecipe().close()  # a recipe whose setup never started a run has nothing to close


class _Cycle(TrainingRecipe):
    """A recipe that trains nothing and sits in a reference cycle, as FSDP2's hooked modules do."""

    def __init__(self, freed: list) -> None:
        self.me = self
        weakref.finalize(self, freed.append, "freed")

    def setup(self) -> None:
        pass

    def train(self) -> None:
        pass


@pytest.mark.parametrize("world", [None, "2"])
def test_the_cli_frees_a_multi_process_runs_cycles_before_python_exits(monkeypatch, world):
    """Under torchrun (``WORLD_SIZE`` > 1) the recipe, cycles included, is freed when the CLI returns, so its
    process groups stop while Python runs (freed at the interpreter's exit, gloo's threads could abort it); a
    one-process run leaves its cycles to the collector. Automatic collection is off: only the CLI's can free it."""
    if world is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", world)
    freed = []
    gc.collect()
    gc.disable()
    try:
        assert run_recipe(lambda cfg: _Cycle(freed), lambda path, overrides: None, None, []) == 0
        seen = list(freed)
    finally:
        gc.enable()
        gc.collect()
    assert seen == ([] if world is None else ["freed"])
