"""The DALL-E tokenizer in NCHW vs channels-last layout: time per image and whether ids agree.

    python benchmarks/tokenizer_layout.py [--batch 8] [--reps 5]

Same weights, same 112² inputs; the layouts alternate so noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmkit.tokenizers import DalleEncoder, ImageTokenizer, dalle_preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--size", type=int, default=112)
    args = parser.parse_args()
    torch.manual_seed(0)
    encoder = DalleEncoder()
    tokenizers = {}
    for channels_last in (False, True):
        enc = DalleEncoder()
        enc.load_state_dict(encoder.state_dict())
        tokenizers["channels_last" if channels_last else "NCHW"] = ImageTokenizer(enc, channels_last=channels_last)
    x = dalle_preprocess(torch.rand(args.batch, 3, args.size, args.size))
    ids = {name: tok(x) for name, tok in tokenizers.items()}  # warm-up and results
    times: dict[str, list[float]] = {name: [] for name in tokenizers}
    for _ in range(args.reps):
        for name, tok in tokenizers.items():
            t = time.perf_counter()
            tok(x)
            times[name].append(time.perf_counter() - t)
    agree = torch.equal(ids["NCHW"], ids["channels_last"])
    base = statistics.median(times["NCHW"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} at {args.size}²")
    print("| layout | ms / image (median) | x NCHW |")
    print("|---|---|---|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {1000 * t / args.batch:.1f} | {base / t:.2f} |")
    print(f"token ids identical across layouts: {agree}")


if __name__ == "__main__":
    main()
