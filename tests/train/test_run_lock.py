"""One writer per run directory: a second hold on a held directory is refused naming the holder, a
hold left by a killed process is taken over with a warning, and a second training run on a directory
in use stops at once while the first finishes untouched."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmkit.train import RunDirInUseError, RunDirLock
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
