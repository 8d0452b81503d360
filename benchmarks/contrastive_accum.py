"""Gradient accumulation whose contrastive loss sees the whole batch: memory and time, side by side.

For CLIP and FLAVA (paired batches: global contrastive + ITM + MMM) at two sizes, one optimiser step (AdamW)
of the same ``K * B`` pairs three ways:

* ``big``: one batch of ``K * B``, ``grad_accum=1`` (the reference; the contrastive loss sees ``K * B``);
* ``whole``: ``K`` micro-batches of ``B``, the contrastive loss over all ``K * B`` rows in two passes
  (``mmkit.train.whole_batch``; the recipes' default with ``optim.grad_accum=K``);
* ``split``: ``K`` micro-batches of ``B``, each contrastive loss over its own ``B`` rows
  (``optim.contrastive_per_micro_batch=true``, plain accumulation).

Expected: ``whole``'s peak memory close to ``split``'s (one micro-batch's activations) and far below
``big``'s; its time about ``split``'s plus one extra tower forward per micro-batch. Reported: median step
time and the step's peak memory above what is resident before it (CPU: RSS sampled every 0.5 ms with
allocations over 64 KiB mmap-ed, as ``benchmarks/flava_step.py`` measures; CUDA: the allocator's peak).
Variants run alternately in one process so machine noise hits them alike.

    python benchmarks/contrastive_accum.py                    # CPU, small sizes, about 2 minutes
    python benchmarks/contrastive_accum.py --device cuda --dtype bf16 --sizes base --batch 64 --accum 8
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mmkit.models import CLIPConfig, FLAVAConfig, dual_encoder_for_pretraining, flava_model_for_pretraining
from mmkit.pretrain import whole_batch_forward
from mmkit.train import CheckpointConfig, Collectives, DistInfo, RunContext, StepOptions, TrainStep

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flava_step import _LIBC, PeakRSS, make_batches

#: encoder sizes: (width, layers, image size, patch size, text length); FLAVA's fusion has half the layers
SIZES = {"small": (128, 4, 64, 16, 32), "medium": (256, 6, 96, 16, 32), "base": (768, 12, 224, 16, 64)}


class Batch(dict):
    """A dict batch with the recipes' ``model_inputs()``."""

    def model_inputs(self) -> dict:
        return self


def build(model: str, size: str) -> torch.nn.Module:
    """A CLIP or FLAVA (without its dVAE: the batches carry tokenizer ids) of ``SIZES[size]``."""
    width, layers, image, patch, _ = SIZES[size]
    enc = dict(hidden_size=width, num_layers=layers, num_heads=max(2, width // 64), mlp_dim=4 * width)
    torch.manual_seed(0)
    if model == "clip":
        cfg = CLIPConfig.tiny(
            image=dict(enc, image_size=image, patch_size=patch), text=dict(enc, vocab_size=30522), projection_dim=width
        )
        return dual_encoder_for_pretraining(cfg).train()
    cfg = FLAVAConfig.tiny(
        image=dict(enc, image_size=image, patch_size=patch),
        text=enc,
        multimodal=dict(enc, num_layers=max(1, layers // 2)),
        projection_dim=width,
        codebook={"enabled": False, "vocab_size": 8192},
    )
    return flava_model_for_pretraining(cfg).train()


def batches(model: str, size: str, n: int, rows: int, device: torch.device) -> list[Batch]:
    """``n`` paired batches of ``rows`` pairs (FLAVA's with masks, ITM labels and tokenizer ids)."""
    _, _, image, patch, length = SIZES[size]
    cfg = FLAVAConfig.tiny(image={"image_size": image, "patch_size": patch}, codebook={"image_size": image})
    out = []
    for i in range(n):
        pair = make_batches(cfg, rows, length, seed=i)["pair"]
        pair.pop("codebook_pixel_values")
        grid = (image // patch) ** 2
        pair["image_token_ids"] = torch.randint(0, 8192, (rows, grid), generator=torch.Generator().manual_seed(i))
        keep = ("pixel_values", "input_ids", "attention_mask") if model == "clip" else tuple(pair)
        out.append(Batch({k: pair[k].to(device) for k in keep}))
    return out


def variant(name: str, model: str, size: str, batch: int, accum: int, device: torch.device, dtype: str):
    """A callable running one step of variant ``name`` (new data each step, cycling over 2 steps' worth)."""
    net = build(model, size).to(device)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    k, rows = (1, batch * accum) if name == "big" else (accum, batch)
    ctx = RunContext(DistInfo(device=device), Collectives(device, 1), "/tmp", CheckpointConfig())
    scaler = torch.amp.GradScaler(device.type) if dtype == "fp16" else None
    step = TrainStep(ctx, net, optimizer, schedule, StepOptions(dtype, grad_accum=k, max_grad_norm=1.0), scaler=scaler)

    def plain(m, b):
        out = m(**b.model_inputs())
        return out.loss, out.losses

    forward = whole_batch_forward(net, plain) if name == "whole" else plain
    data = batches(model, size, 2 * k, rows, device)
    state = {"i": 0}

    def next_batch() -> Batch:
        state["i"] += 1
        return data[state["i"] % len(data)]

    return lambda: step(next_batch, forward, 1)


def measure(steps: dict[str, Callable], n: int, device: torch.device) -> dict[str, tuple[float, float]]:
    """Median time of ``n`` steps per variant (run alternately, after one warm-up each) and peak step memory."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for fn in steps.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(n):
        for name, fn in steps.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    if _LIBC is not None and not cuda:
        _LIBC.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: freed tensors leave the resident set at once
    peaks = {}
    for name, fn in steps.items():
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn()
            peaks[name] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            with PeakRSS() as mem:
                fn()
            peaks[name] = mem.delta_mib
    return {k: (statistics.median(times[k]), peaks[k]) for k in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="clip,flava")
    parser.add_argument("--sizes", default="small,medium", help=f"of {', '.join(SIZES)}")
    parser.add_argument("--batch", type=int, default=16, help="B: pairs per micro-batch")
    parser.add_argument("--accum", type=int, default=4, help="K: micro-batches per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(
        f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads, {args.dtype}; B={args.batch}, "
        f"K={args.accum} (K*B={args.batch * args.accum}); median of {args.steps} steps"
    )
    print(
        "| model | size (width x layers, image) | variant | contrastive batch | step s | peak MiB | time / big "
        "| memory / big |\n|---|---|---|---|---|---|---|---|"
    )
    for model in args.models.split(","):
        for size in args.sizes.split(","):
            steps = {
                v: variant(v, model, size, args.batch, args.accum, device, args.dtype)
                for v in ("big", "whole", "split")
            }
            result = measure(steps, args.steps, device)
            width, layers, image, *_ = SIZES[size]
            big_t, big_m = result["big"]
            for v, (t, m) in result.items():
                seen = args.batch * (1 if v == "split" else args.accum)
                print(
                    f"| {model} | {size} ({width}x{layers}, {image}²) | {v} | {seen} | {t:.3f} | {m:.0f} | "
                    f"{t / big_t:.2f} | {m / big_m:.2f} |"
                )
            del steps


if __name__ == "__main__":
    main()
