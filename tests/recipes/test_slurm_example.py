"""``examples/slurm/pretrain.sbatch`` (docs/SLURM.md): valid bash whose torchrun line parses with torchrun's
and the recipe's own parsers, and whose USR1 trap stops the ranks with SIGTERM, then requeues the job.

The script runs for real with ``srun`` and ``scontrol`` replaced by stubs that record their arguments."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import load_recipe

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "slurm" / "pretrain.sbatch"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

SRUN = """#!/bin/bash
printf '%s\\0' "$@" > "$STUB_DIR/srun.args"
trap 'echo TERM >> "$STUB_DIR/srun.signals"; exit 0' TERM
[ -n "${STUB_HOLD:-}" ] && while true; do sleep 0.05; done
exit 0
"""
SCONTROL = """#!/bin/bash
echo "$@" >> "$STUB_DIR/scontrol.calls"
[ "$1 $2" = "show hostnames" ] && printf 'node-a\\nnode-b\\n'
exit 0
"""


def start(tmp_path: Path, hold: bool, *overrides: str) -> subprocess.Popen:
    """The script under the stubs, as job 42 on two nodes."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL)):
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{stubs}:{os.environ['PATH']}",
        STUB_DIR=str(tmp_path),
        SLURM_JOB_ID="42",
        SLURM_JOB_NODELIST="node-[a-b]",
        SLURM_NNODES="2",
        STUB_HOLD="1" if hold else "",
    )
    return subprocess.Popen(["bash", str(SCRIPT), *overrides], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_torchrun_line_parses_with_torchrun_and_the_recipe(tmp_path):
    proc = start(tmp_path, False, "optim.lr=5e-4")
    assert proc.wait(timeout=30) == 0
    args = (tmp_path / "srun.args").read_text().split("\0")[:-1]
    torchrun = args[args.index("torchrun") + 1 :]
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(torchrun)
    assert (parsed.nnodes, parsed.rdzv_backend, parsed.rdzv_endpoint, parsed.rdzv_id) == (
        "2",
        "c10d",
        "node-a:29500",
        "42",
    )
    assert parsed.training_script == "recipes/flava/pretrain.py"
    rest = parsed.training_script_args
    assert rest[:2] == ["--config", "recipes/flava/configs/flava_full.yaml"]
    overrides = rest[2:]
    assert "checkpoint.resume=auto" in overrides and overrides[-1] == "optim.lr=5e-4"
    recipe = load_recipe("recipes/flava/pretrain.py")
    cfg = recipe.load_config(rest[1], [*overrides, "model.pretraining.mim_target=pixels"])  # no codebook file here
    assert (cfg.checkpoint.resume, cfg.run_dir, cfg.optim.lr) == ("auto", "runs/flava_full", 5e-4)


def test_usr1_stops_the_ranks_with_sigterm_then_requeues(tmp_path):
    proc = start(tmp_path, True)
    deadline = time.monotonic() + 20
    while not (tmp_path / "srun.args").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the stub's TERM trap is set after it writes its arguments
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=20) == 0
    assert (tmp_path / "srun.signals").read_text() == "TERM\n"
    assert "requeue 42" in (tmp_path / "scontrol.calls").read_text().splitlines()
