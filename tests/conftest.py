"""Shared fixtures: tiny transformers FLAVA oracles with random (non-trivial) weights."""

from __future__ import annotations

import pytest
import torch

from mmkit.layers.attention import xformers_available

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def builtin_data(tmp_path_factory):
    """One ``MMKIT_DATA`` folder for the tests that run recipes on the built-in set in subprocesses: the
    first run makes the set there (about 5 s), every later one reads it (tests/recipes/test_runtime.py
    uses the same folder, ``tmp_path.parent / "data"``). Runs must not write into it."""
    return tmp_path_factory.getbasetemp() / "data"


def hf_tiny_config(**top):
    """A transformers ``FlavaConfig`` at test sizes (32-wide, 2 layers, 32² images in 8² patches)."""
    from transformers import FlavaConfig

    return FlavaConfig(
        image_config=dict(TINY, image_size=32, patch_size=8, vocab_size=64),
        text_config=dict(TINY, vocab_size=120, max_position_embeddings=40),
        multimodal_config=dict(TINY, num_hidden_layers=1),
        image_codebook_config=dict(hidden_size=8, vocab_size=64),
        projection_dim=24,
        hidden_size=32,
        **top,
    )


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (transformers zero-inits tokens and positions,
    which would hide wiring mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            is_norm_scale = "norm" in name.lower() and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm_scale else noise)
    return module


def available_backends() -> list[str]:
    """Attention backends that can run here (xformers only with CUDA)."""
    return ["math", "sdpa"] + (["xformers"] if xformers_available() else [])


@pytest.fixture
def hf_flava():
    from transformers import FlavaModel

    torch.manual_seed(0)
    return randomize_(FlavaModel(hf_tiny_config())).eval()


@pytest.fixture
def text_batch():
    """(input_ids, attention_mask): 3 sequences of 9 tokens, the last two padded."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 120, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def make_mmkit_export(directory, texts: list[str], seed: int = 0):
    """What ``recipes/flava/pretrain.py`` exports (``model.safetensors``, ``config.json``,
    ``tokenizer/``), for a randomly initialised tiny model whose WordPiece is learned on ``texts``."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from mmkit.models import FLAVAConfig, flava_model_for_pretraining
    from mmkit.tokenizers import train_wordpiece

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(texts))
    tokenizer = train_wordpiece([corpus], 200, min_frequency=1)
    corpus.unlink()
    tokenizer.save(directory / "tokenizer")
    cfg = FLAVAConfig.tiny(text={"vocab_size": tokenizer.vocab_size})
    torch.manual_seed(seed)
    model = randomize_(flava_model_for_pretraining(cfg), seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(cfg.to_dict()))
    return directory


def run_recipe_in_process(relative_path: str, args: list[str], env: dict[str, str]):
    """What ``python <recipe> *args`` with ``env`` added to the environment gives, run in this process: a
    ``subprocess.CompletedProcess`` of the exit code and what was printed. Saves an interpreter and its imports
    (seconds) per run; for runs that do not kill their process (``MMKIT_FAULT_KILL_AT_STEP`` needs a process of
    its own)."""
    import contextlib
    import io
    import os
    import subprocess

    assert "MMKIT_FAULT_KILL_AT_STEP" not in env, "a run that kills itself needs its own process"
    saved = {k: os.environ.get(k) for k in env}
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update(env)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = load_recipe(relative_path).main(args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(relative_path, code, out.getvalue(), err.getvalue())


def load_recipe(relative_path: str):
    """Import a recipe script (``recipes/...py``) as a module; it is registered in ``sys.modules``
    because dataclasses resolve their annotations through it."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relative_path
    name = "recipe_" + relative_path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_recipe(relative_path: str, *keys: str) -> int:
    """A recipe's command line (``main``) in this process, its exit status; the process group it may
    have joined is left again, so the next in-process run starts clean."""
    from mmkit.train import teardown_distributed

    try:
        return load_recipe(relative_path).main(list(keys))
    finally:
        teardown_distributed()


def spawn_ranks(worker, args: tuple, nprocs: int) -> None:
    """``torch.multiprocessing.spawn(worker, args, nprocs)`` whose processes collect their garbage before
    the interpreter exits. A rank's FSDP2 modules sit in reference cycles that keep its gloo process group
    alive past ``destroy_process_group``; freed by the interpreter's last collection, the group's worker
    threads reached for the GIL while Python shut down, and the process died of SIGABRT ("terminate called
    without an active exception") after its work was done: 2 runs in 40 of the FSDP2 device-decision worker
    without the collection, none in 40 with it."""
    import torch.multiprocessing as mp

    mp.spawn(_collecting, args=(worker, *args), nprocs=nprocs, join=True)


def _collecting(rank: int, worker, *args) -> None:
    import gc

    try:
        worker(rank, *args)
    finally:
        gc.collect()
