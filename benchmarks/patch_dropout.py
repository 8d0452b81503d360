"""FLIP patch dropout: one training step (forward + backward) of a ViT image encoder with 0% and 50%
of the patch tokens dropped, side by side in one run.

    python benchmarks/patch_dropout.py [--width 384 --layers 6 --batch 16 --steps 6]

ViT at 224² in 16² patches (196 patches + CLS); the attention and MLP costs fall with the token count,
so dropping half the patches should roughly halve the step (Li et al., CVPR 2023, report ~2x).
"""

from __future__ import annotations

import argparse
import time

import torch

from mmkit.encoders.builders import vit_encoder


def step_time(p: float, args) -> float:
    torch.manual_seed(0)
    enc = vit_encoder(
        image_size=224,
        patch_size=16,
        hidden_size=args.width,
        num_layers=args.layers,
        num_heads=args.width // 64,
        mlp_dim=4 * args.width,
        patch_dropout=p,
    ).train()
    x = torch.randn(args.batch, 3, 224, 224)
    times = []
    for _ in range(args.steps + 1):
        t = time.perf_counter()
        enc(x).last_hidden_state.mean().backward()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    full, half = step_time(0.0, args), step_time(0.5, args)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, ViT width {args.width}, "
        f"{args.layers} layers, batch {args.batch}, 224² / 16² patches; median of {args.steps} steps"
    )
    print("| patch dropout | step s (fwd + bwd) |")
    print("|---|---|")
    print(f"| 0% | {full:.3f} |")
    print(f"| 50% | {half:.3f} |")
    print(f"50% / 0%: {half / full:.2f} (time saved {1 - half / full:.0%})")


if __name__ == "__main__":
    main()
