"""The CLIP / SigLIP recipe: its exports read by transformers and by the evaluation recipe, exact resume
after SIGKILL on 2 DDP ranks (SigLIP: the ring-passed sigmoid loss inside the runtime, over accumulated
micro-batches), and accumulated micro-batches whose contrastive loss is the big batch's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmkit.data import shapes_dataset
from mmkit.models import load_dual_encoder
from tests.conftest import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "clip" / "pretrain.py"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipdata")
    return shapes_dataset(root, num_train=96, num_val=32, num_images=8, num_text=64, per_shard=48)


def _args(data, run_dir, model_type, steps, *extra):
    return [
        "--config",
        str(REPO / "recipes/clip/configs/demo.yaml"),
        f"run_dir={run_dir}",
        f"model_type={model_type}",
        "data.dataset=files",
        f"data.train_pairs={[str(p) for p in data.train_pairs]}",
        f"data.val_pairs={[str(p) for p in data.val_pairs]}",
        f"data.text={[str(p) for p in data.text]}",
        "data.vocab_size=300",
        "data.batch_size=8",
        f"optim.total_steps={steps}",
        "optim.warmup_steps=2",
        "checkpoint.every=3",
        "log_every=1",
        "eval_every=1000",
        "eval_samples=32",
        "progress=false",
        *extra,
    ]


def _records(run_dir, split):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_clip_export_is_read_by_transformers_and_the_evaluation_recipe(tmp_path, pairs):
    transformers = pytest.importorskip("transformers")
    run = tmp_path / "clip"
    assert load_recipe("recipes/clip/pretrain.py").main(_args(pairs, run, "clip", 6, "distributed=none")) == 0
    final = run / "final"
    ours = load_dual_encoder(final)
    theirs = transformers.CLIPModel.from_pretrained(final / "hf").eval()
    tok = json.loads((final / "config.json").read_text())["config"]["text"]
    ids = torch.tensor([[2, 40, 41, tok["eos_token_id"], 0], [2, 50, tok["eos_token_id"], 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[4], [3]])).long()
    batch = dict(pixel_values=torch.randn(2, 3, 32, 32), input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    torch.testing.assert_close(a.image_embedding, b.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.text_embedding, b.text_embeds, atol=1e-5, rtol=1e-5)
    # the evaluation recipe's retrieval over the same held-out pairs as the recipe's last evaluation
    out = tmp_path / "eval.json"
    evaluate = load_recipe("recipes/flava/evaluate.py")
    assert (
        evaluate.main(
            [
                f"checkpoint={final}",
                "tasks=retrieval",
                f"pairs={pairs.val_pairs[0]}",
                "samples=32",
                f"out={out}",
                "device=cpu",
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())
    last = _records(run, "eval")[-1]
    for direction in ("image_to_text", "text_to_image"):  # one near-tie may flip between paddings
        assert abs(got[f"retrieval/{direction}_r1"] - last[f"retrieval/{direction}_r1"]) <= 1 / 32 + 1e-9


def _run(data, run_dir, steps, env=None, check=True):
    """SigLIP on 2 DDP ranks, its loss over 2 accumulated micro-batches (two passes) with patch dropout."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(RECIPE),
        *_args(
            data,
            run_dir,
            "siglip",
            steps,
            "distributed=ddp",
            "data.num_workers=1",
            "data.batch_size=4",
            "optim.grad_accum=2",
            "model.image.patch_dropout=0.5",
        ),
    ]
    return subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600, check=check
    )


@pytest.mark.slow
def test_siglip_sigkill_then_resume_on_two_ranks_equals_uninterrupted(tmp_path, pairs):
    from safetensors.torch import load_file

    ref = _run(pairs, tmp_path / "ref", 7)
    assert "Traceback" not in ref.stderr, ref.stderr[-3000:]
    crashed = _run(pairs, tmp_path / "res", 7, {"MMKIT_FAULT_KILL_AT_STEP": "5"}, check=False)
    assert crashed.returncode != 0
    _run(pairs, tmp_path / "res", 7)
    a = {r["step"]: r["loss/contrastive"] for r in _records(tmp_path / "ref", "train")}
    b = {r["step"]: r["loss/contrastive"] for r in _records(tmp_path / "res", "train")}
    assert sorted(a) == sorted(b) == list(range(1, 8))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    wa, wb = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("ref", "res"))
    assert wa.keys() == wb.keys() and "logit_bias" in wa
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)
    # SigLIP's export is a transformers SiglipModel too
    assert json.loads((tmp_path / "ref" / "final" / "hf" / "config.json").read_text())["model_type"] == "siglip"


def test_bad_model_settings_are_one_clear_error(tmp_path):
    recipe = load_recipe("recipes/clip/pretrain.py")
    with pytest.raises(ValueError, match="text pooler"):
        recipe.load_config(None, ["preset=tiny", "model.text.pooler=mean"])
    with pytest.raises(ValueError, match=r"data.max_length=100 exceeds the text encoder's 64 positions"):
        recipe.load_config(None, ["preset=tiny", "data.max_length=100"])
    with pytest.raises(ValueError, match="model_type"):
        recipe.load_config(None, ["model_type=align"])


def test_flava_pretraining_starts_from_the_clip_export(tmp_path, pairs):
    """model.image.init_from = a CLIP export: the report names FLAVA's new image weights, the transformers
    export is skipped (it has no place for CLIP's input LayerNorm) and the mmkit export loads."""
    from mmkit.models import load_flava

    clip_run = tmp_path / "clip"
    assert load_recipe("recipes/clip/pretrain.py").main(_args(pairs, clip_run, "clip", 2, "distributed=none")) == 0
    flava_run = tmp_path / "flava"
    args = [
        "--config",
        str(REPO / "recipes/flava/configs/demo.yaml"),
        f"run_dir={flava_run}",
        "distributed=none",
        "data.dataset=files",
        f"data.train_pairs={[str(p) for p in pairs.train_pairs]}",
        f"data.val_pairs={[str(p) for p in pairs.val_pairs]}",
        f"data.text={[str(p) for p in pairs.text]}",
        f"data.tokenizer={clip_run / 'final' / 'tokenizer'}",
        "data.batch_size=8",
        "optim.total_steps=2",
        "eval_samples=16",
        "progress=false",
        f"model.image.init_from={clip_run / 'final'}",
        "model.pretraining.mim_target=pixels",
    ]
    assert load_recipe("recipes/flava/pretrain.py").main(args) == 0
    report = (flava_run / "tower_report.txt").read_text()
    assert "FLAVA image encoder from the clip image tower" in report
    assert "new: image_encoder.embeddings.mask_token" in report and "new: image_encoder.pooler.dense.weight" in report
    assert not (flava_run / "final" / "hf").exists() and (flava_run / "final" / "model.safetensors").exists()
    flava = load_flava(flava_run / "final")
    assert flava.config.image.input_norm and flava.config.image.activation == "quick_gelu"


def test_jpeg_shards_decoded_on_the_device_train_like_worker_decoding(tmp_path, pairs):
    """data.image_decode=device on JPEG shards: the first step's loss is the worker-decoded one up to the
    resampler's grey-level differences (the CPU stands in for the device here)."""
    import io
    import tarfile

    from PIL import Image

    from mmkit.data.sources import TarShards, decode_text

    def to_jpeg(src, dst):
        with tarfile.open(dst, "w") as out:
            for i in range(len(shards := TarShards([src]))):
                rec = shards[i]
                buf = io.BytesIO()
                Image.open(io.BytesIO(rec.image)).convert("RGB").save(buf, format="JPEG", quality=95)
                for name, data in ((f"{i:06d}.jpg", buf.getvalue()), (f"{i:06d}.txt", decode_text(rec).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    out.addfile(info, io.BytesIO(data))
        return dst

    train = to_jpeg(pairs.train_pairs[0], tmp_path / "train.tar")
    val = to_jpeg(pairs.val_pairs[0], tmp_path / "val.tar")
    losses = {}
    for decode in ("worker", "device"):
        run = tmp_path / decode
        args = _args(
            pairs,
            run,
            "clip",
            2,
            "distributed=none",
            f"data.train_pairs=[{train}]",
            f"data.val_pairs=[{val}]",
            f"data.image_decode={decode}",
            "eval_at_start=false",
        )
        assert load_recipe("recipes/clip/pretrain.py").main(args) == 0
        losses[decode] = [r["loss/contrastive"] for r in _records(run, "train")]
    assert losses["worker"][0] == pytest.approx(losses["device"][0], rel=2e-3)
    assert losses["worker"] != losses["device"]  # the device path did run


def test_flava_contrastive_only_evaluates_without_the_switched_off_batch_kinds(tmp_path, pairs):
    """The comparison's control: FLAVA with every objective but the contrastive one at weight 0. Its
    evaluation used to run image-only and text-only batches too, which train nothing then, and stopped."""
    run = tmp_path / "flava"
    off = [f"model.pretraining.weights.{k}=0.0" for k in ("mim", "mlm", "mmm_image", "mmm_text", "itm")]
    args = [
        "--config",
        str(REPO / "recipes/flava/configs/demo.yaml"),
        f"run_dir={run}",
        "distributed=none",
        "data.dataset=files",
        f"data.train_pairs={[str(p) for p in pairs.train_pairs]}",
        f"data.val_pairs={[str(p) for p in pairs.val_pairs]}",
        f"data.text={[str(p) for p in pairs.text]}",
        "data.batch_size=8",
        "optim.total_steps=2",
        "eval_samples=16",
        "progress=false",
        "data.pair_prob=1.0",
        "data.image_prob=0.0",
        "data.text_prob=0.0",
        "data.itm_negative_prob=0.0",
        *off,
        "model.codebook.checkpoint=null",
    ]
    assert load_recipe("recipes/flava/pretrain.py").main(args) == 0
    first = _records(run, "eval")[0]
    assert "loss/global_contrastive" in first and "loss/mim" not in first and "loss/mlm" not in first


def test_accumulated_micro_batches_log_the_big_batch_contrastive_loss(tmp_path, pairs):
    """data.batch_size=8 optim.grad_accum=4 logs the contrastive loss of data.batch_size=32 at every step (the same
    32 samples in the same order: one permutation per epoch, cut into batches), CLIP's and FLAVA's global one at
    step 1 (FLAVA's masked objectives then draw other masks); optim.contrastive_per_micro_batch=true keeps each
    micro-batch's loss on its own 8 pairs (chance ln 8, not ln 32)."""
    recipes = {m: load_recipe(f"recipes/{m}/pretrain.py") for m in ("clip", "flava")}
    flava = [
        "--config",
        str(REPO / "recipes/flava/configs/demo.yaml"),
        "model.pretraining.mim_target=pixels",
        "data.image_prob=0",
        "data.text_prob=0",
        "data.itm_negative_prob=0",
    ]
    runs = {
        "big": ["data.batch_size=32"],
        "accum": ["data.batch_size=8", "optim.grad_accum=4"],
        "per_micro": ["data.batch_size=8", "optim.grad_accum=4", "optim.contrastive_per_micro_batch=true"],
    }
    logged = {}
    for name, keys in runs.items():
        for model, loss, steps in (("clip", "contrastive", 3), ("flava", "global_contrastive", 1)):
            if name == "per_micro" and model == "flava":
                continue
            run = tmp_path / f"{model}_{name}"
            args = _args(
                pairs,
                run,
                "clip",
                1 if name == "per_micro" else steps,
                "distributed=none",
                "eval_at_start=false",
                *keys,
            )
            if model == "flava":
                args = [a for a in args[2:] if not a.startswith("model_type=")] + flava
            assert recipes[model].main(args) == 0
            logged[f"{model}_{name}"] = [r[f"loss/{loss}"] for r in _records(run, "train")]
    assert len(logged["clip_big"]) == len(logged["clip_accum"]) == 3
    for big, accum in zip(logged["clip_big"], logged["clip_accum"], strict=True):
        assert abs(big - accum) <= 1e-5, logged
    assert abs(logged["flava_big"][0] - logged["flava_accum"][0]) <= 1e-5, logged
    assert logged["clip_per_micro"][0] < logged["clip_big"][0] - 0.5, logged  # about ln 8 against ln 32 at first


def _wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then 32 KiB blocks of chunks (4-byte
    checksum, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, parts, out = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(parts))
            parts = b""
    return out


def _wandb_history(run_dir: Path) -> tuple[str, list[dict]]:
    """The id and logged rows of the W&B run written offline last in ``run_dir``."""
    (offline,) = sorted((run_dir / "wandb").glob("offline-run-*"))[-1:]
    rows = []
    for record in _wandb_records(next(offline.glob("run-*.wandb"))):
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return offline.name.rsplit("-", 1)[1], rows


def test_wandb_offline_holds_the_runs_metrics_and_a_resume_continues_its_run(tmp_path, pairs, monkeypatch):
    """log.wandb=true with WANDB_MODE=offline; every train record says where the time went."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run, main = tmp_path / "clip", load_recipe("recipes/clip/pretrain.py").main
    extra = ("distributed=none", "log.wandb=true", "perf.peak_tflops=1")
    assert main(_args(pairs, run, "clip", 3, *extra)) == 0
    train = _records(run, "train")
    for r in train:
        assert {"perf/samples_per_s", "perf/tokens_per_s", "perf/tflops_per_device", "perf/mfu"} <= set(r)
        assert 0.0 <= r["perf/data_wait"] <= 1.0 and r["perf/tflops_per_device"] > 0
        assert r["perf/mfu"] == pytest.approx(r["perf/tflops_per_device"] / 1.0)
    assert "perf/mfu" in (run / "summary.txt").read_text()
    run_id, rows = _wandb_history(run)
    assert (run / "wandb_run_id").read_text().strip() == run_id
    logged = [row for row in rows if "train/loss/total" in row]
    assert [row["_step"] for row in logged] == [r["step"] for r in train]
    assert logged[-1]["train/loss/total"] == pytest.approx(train[-1]["loss/total"])
    assert logged[-1]["train/perf/mfu"] == pytest.approx(train[-1]["perf/mfu"])
    assert main(_args(pairs, run, "clip", 4, *extra)) == 0  # resumes from step 3: the same W&B run
    resumed_id, rows = _wandb_history(run)
    assert resumed_id == run_id == (run / "wandb_run_id").read_text().strip()
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2
    assert [row["_step"] for row in rows if "train/loss/total" in row] == [4]


def test_log_wandb_without_the_library_is_one_error_line(tmp_path, pairs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    assert load_recipe("recipes/clip/pretrain.py").main(_args(pairs, tmp_path / "r", "clip", 3, "log.wandb=true")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and 'pip install -e ".[wandb]"' in err[0]
    assert not (tmp_path / "r").exists()  # stopped when the config was read, before the run began
