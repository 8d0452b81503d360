"""The shared training runtime, exercised through the real recipes: collectives on the right device, resume
rules, non-finite streaks, lineage, fallback from a broken checkpoint, one-line config errors, two nodes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_recipe, run_recipe_in_process

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "recipes/flava/pretrain.py"
TINY = [
    "optim.warmup_steps=2",
    "log_every=1",
    "eval_every=1000",
    "eval_samples=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "progress=false",
    "eval_at_start=false",
    "model.pretraining.mim_target=pixels",
]


def _env(tmp_path, **extra):
    return {**os.environ, "MMKIT_DATA": str(tmp_path.parent / "data"), **extra}


def _pretrain(tmp_path, run, *overrides, env=None, check=True):
    """The pretraining CLI on the built-in set; in this process unless the run kills itself."""
    args = ["--config", str(REPO / "recipes/flava/configs/demo.yaml"), f"run_dir={run}", *TINY, *overrides]
    if "MMKIT_FAULT_KILL_AT_STEP" in (env or {}):
        out = subprocess.run(
            [sys.executable, str(PRETRAIN), *args],
            cwd=REPO,
            env=_env(tmp_path, **env),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    else:
        out = run_recipe_in_process("recipes/flava/pretrain.py", args, _env(tmp_path, **(env or {})))
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _steps(run):
    return sorted(int(p.name.split("_")[1]) for p in (Path(run) / "checkpoints").glob("step_????????"))


def _train_losses(run):
    rows = [json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r["split"] == "train"}


@pytest.mark.parametrize(
    "recipe", ["recipes/flava/pretrain.py", "recipes/flava/finetune.py", "recipes/dalle/train_tokenizer.py"]
)
def test_bad_values_fail_at_load_naming_the_key(recipe):
    module = load_recipe(recipe)
    steps = "optim.total_steps"
    batch = "data.batch_size" if "finetune" not in recipe else "batch_size"
    for override, message in (
        (f"{steps}=abc", f"{steps}: expected an integer, got 'abc'"),
        (f"{batch}=0", f"{batch}: must be >= 1, got 0"),
        ("checkpoint.every=0", "checkpoint.every: must be > 0, got 0"),
        ("optim.grad_accum=0", "optim.grad_accum: must be >= 1, got 0"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            module.load_config(None, [override])


def test_cli_errors_are_one_line_and_a_yaml_list_is_refused(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    for args in (["optim.total_steps=abc", "data.batch_size=0"], ["--config", str(bad)]):
        out = subprocess.run(
            [sys.executable, str(PRETRAIN), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(tmp_path),
        )
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]
        assert len(lines) == 1, out.stderr
    assert "optim.total_steps: expected an integer" in lines[0] or "must be a mapping" in lines[0]
    out = subprocess.run(
        [sys.executable, str(PRETRAIN), "--config", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tmp_path, MMKIT_DEBUG="1"),
    )
    assert "Traceback" in out.stderr  # --debug / MMKIT_DEBUG shows it


@pytest.mark.slow
def test_resume_rules_through_the_recipe(tmp_path):
    run = tmp_path / "run"
    _pretrain(tmp_path, run, "optim.total_steps=4", "checkpoint.every=2", "checkpoint.keep=5")
    assert _steps(run) == [2, 4]
    # a changed model is refused, naming the field; nothing is written
    out = _pretrain(tmp_path, run, "optim.total_steps=6", "model.text.num_layers=3", check=False)
    assert out.returncode == 2 and "model.text.num_layers: checkpoint" in out.stderr, out.stderr
    out = _pretrain(tmp_path, run, "optim.total_steps=6", "data.batch_size=4", check=False)
    assert out.returncode == 2 and "data.batch_size: checkpoint 8, config 4" in out.stderr
    # an explicit resume from step 2 with a new lr: the lr applies, steps 4 is set aside for good
    older = f"checkpoint.resume={run}/checkpoints/step_00000002"
    out = _pretrain(
        tmp_path, run, "optim.total_steps=5", "optim.lr=0.01", older, env={"MMKIT_FAULT_KILL_AT_STEP": "3"}, check=False
    )
    assert out.returncode != 0 and "optim.lr: 0.002 -> 0.01" in out.stdout, out.stdout
    assert "set aside step_00000004" in out.stdout
    log = _train_losses(run)
    load = load_recipe("recipes/flava/pretrain.py")
    from mmkit.train import warmup_cosine

    assert log[3]["lr"] == pytest.approx(0.01 * warmup_cosine(3, 2, 5))  # lr after step 3 under the new config
    assert _steps(run) == [2]  # step 4 (the abandoned branch) is not findable any more
    out = _pretrain(tmp_path, run, "optim.total_steps=5", "optim.lr=0.01")
    assert "at step 2" in out.stdout and "step_00000004" not in out.stdout
    assert load.FROZEN  # the recipe lists its frozen fields


@pytest.mark.slow
def test_nonfinite_streaks_are_never_checkpointed_and_the_bound_holds_across_resume(tmp_path):
    run = tmp_path / "run"
    faults = {"MMKIT_FAULT_NONFINITE_AT_STEPS": "3,4,5,6,7,8"}
    args = ("optim.total_steps=10", "checkpoint.every=1", "checkpoint.keep=10", "max_nonfinite=3")
    out = _pretrain(tmp_path, run, *args, env=faults, check=False)
    assert out.returncode == 2 and "3 non-finite steps in a row (last at step 5)" in out.stderr, out.stderr
    assert _steps(run) == [1, 2]  # nothing saved during the streak
    out = _pretrain(tmp_path, run, *args, env=faults, check=False)
    assert "at step 2" in out.stdout and "3 non-finite steps in a row (last at step 5)" in out.stderr
    assert _steps(run) == [1, 2]


@pytest.mark.slow
def test_truncated_or_poisoned_newest_checkpoint_falls_back(tmp_path):
    run = tmp_path / "run"
    _pretrain(tmp_path, run, "optim.total_steps=4", "checkpoint.every=2", "checkpoint.keep=5")
    newest = run / "checkpoints" / "step_00000004"
    shard = next(newest.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated, COMPLETE still there
    marker = tmp_path / "PWNED"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR."  # a protocol-0 pickle calling os.system
    (run / "checkpoints" / "step_00000002" / "rank0.pt").write_text(payload)
    out = _pretrain(tmp_path, run, "optim.total_steps=5", check=False)
    assert "step_00000004 cannot be loaded" in out.stdout and not marker.exists()
    assert out.returncode == 2 and "no checkpoint in" in out.stderr  # step 2 is refused too: nothing ran


def _torchrun(nproc, *args, env, nnodes=None, node_rank=None, port=None):
    launch = ["--standalone", f"--nproc_per_node={nproc}"]
    if nnodes:
        launch = [
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv_id=mmkit-test",
        ]
    return [sys.executable, "-m", "torch.distributed.run", *launch, *args]


@pytest.mark.slow
def test_every_collective_is_on_the_process_groups_device(tmp_path):
    record = tmp_path / "collectives.jsonl"
    env = _env(
        tmp_path,
        MMKIT_RECORD_COLLECTIVES=str(record),
        PYTHONPATH=f"{REPO / 'tests/recipes/collective_probe'}:{os.environ.get('PYTHONPATH', '')}",
    )
    runs = {
        "recipes/flava/pretrain.py": [
            "--config",
            "recipes/flava/configs/demo.yaml",
            *TINY,
            "optim.total_steps=3",
            "checkpoint.every=2",
            "eval_every=2",
        ],
        "recipes/flava/finetune.py": [
            "--config",
            "recipes/flava/configs/finetune_shapes_color.yaml",
            "optim.total_steps=3",
            "batch_size=4",
            "head_hidden=8",
            "eval_every=2",
            "checkpoint.every=2",
            "progress=false",
        ],
        "recipes/dalle/train_tokenizer.py": [
            "data.image_size=16",
            "model.hidden_size=8",
            "model.vocab_size=32",
            "model.num_groups=3",
            "model.init_size=8",
            "data.batch_size=8",
            "data.num_workers=0",
            "optim.total_steps=3",
            "log_every=1",
            "eval_every=2",
            "eval_samples=16",
            "checkpoint.every=2",
            "progress=false",
        ],
    }
    for recipe, args in runs.items():
        cmd = _torchrun(2, recipe, f"run_dir={tmp_path / Path(recipe).stem}", *args, env=env)
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(x) for r in (0, 1) for x in Path(f"{record}.rank{r}").read_text().splitlines()]
    assert {r["op"] for r in rows} >= {"all_reduce", "barrier"}
    for r in rows:
        assert all(d == r["expected"] for d in r["devices"]), r
        assert "/recipes/" not in r["caller"], r  # recipes go through mmkit.train.Collectives
    for path in (REPO / "recipes").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"\bdist\.(all_reduce|all_gather|broadcast|barrier|reduce)", text), path
        assert "import torch.distributed as dist" not in text, path


@pytest.mark.slow
def test_two_nodes_on_localhost_equal_one_node_with_two_processes(tmp_path):
    import socket

    args = [
        str(PRETRAIN),
        "--config",
        "recipes/flava/configs/demo.yaml",
        *TINY,
        "optim.total_steps=4",
        "checkpoint.every=100",
    ]
    env = _env(tmp_path)
    one = subprocess.run(
        _torchrun(2, *args, f"run_dir={tmp_path / 'one'}", env=env),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [
        subprocess.Popen(
            _torchrun(1, *args, f"run_dir={tmp_path / 'two'}", env=env, nnodes=2, node_rank=i, port=port),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    for p in nodes:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    a, b = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step]["loss/total"] == pytest.approx(b[step]["loss/total"], abs=1e-6), step
