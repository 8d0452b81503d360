"""Throughput of the full FLAVA pair pipeline on the built-in shards, beside the tiny model's step.

Pipeline per sample: read the tar record, decode the PNG, crop, resize to the encoder size
(bicubic) and to the tokenizer size (Lanczos), normalise, tokenize the caption; per batch:
ITM negatives, block masks, MLM masks, collate. Measured in the main process (one worker's
rate) and with ``--workers`` DataLoader workers, at FLAVA's sizes (224 / 112) and at the tiny
model's (32 / 32). The last line times the tiny model's paired training step on the batches
the pipeline produced (forward + backward + AdamW, tokenizer in the step), so it is clear
whether data keeps up.

    python benchmarks/data_throughput.py [--batches 30] [--batch-size 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmkit.data import (
    ImageTransform,
    ImageTransformConfig,
    LoaderOptions,
    PairCollator,
    SampleDataset,
    TarShards,
    make_loader,
    shapes_dataset,
)
from mmkit.masking import BlockMaskGenerator, TokenMasker
from mmkit.models import FLAVAConfig, flava_model_for_pretraining
from mmkit.tokenizers import TextTokenizer, train_wordpiece


def pipeline(paths, tokenizer: TextTokenizer, size: int, codebook_size: int, batch_size: int, workers: int):
    grid = size // (16 if size >= 224 else 8)
    blocks = BlockMaskGenerator.flava(grid)
    tokens = TokenMasker(tokenizer.vocab_size, tokenizer.mask_token_id, tokenizer.special_token_ids)
    transform = ImageTransform(ImageTransformConfig(image_size=size, codebook_image_size=codebook_size))
    ds = SampleDataset(TarShards(paths), "pair", image_transform=transform, tokenizer=tokenizer)
    return make_loader(ds, PairCollator(blocks, tokens), LoaderOptions(batch_size, num_workers=workers))


def rate(loader, batches: int) -> tuple[float, list]:
    it = iter(loader)
    next(it)  # start-up (workers, first batch) is not throughput
    kept = []
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        batch, _ = next(it)
        n += len(batch)
        kept.append(batch)
    return n / (time.perf_counter() - t), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    paths = shapes_dataset()
    tokenizer = train_wordpiece(paths.text, vocab_size=1000, min_frequency=1, max_length=32)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; built-in shapes shards at {paths.root}")
    print()
    print("| pipeline | workers | samples/s | samples/s per worker |")
    print("|---|---|---|---|")
    tiny_batches = None
    for label, size, cb in (("FLAVA sizes (224 / 112)", 224, 112), ("tiny sizes (32 / 32)", 32, 32)):
        for workers in (0, args.workers):
            r, kept = rate(pipeline(paths.train_pairs, tokenizer, size, cb, args.batch_size, workers), args.batches)
            print(f"| {label} | {workers or 'main process'} | {r:.0f} | {r / max(workers, 1):.0f} |")
            if size == 32:
                tiny_batches = kept
    cfg = FLAVAConfig.tiny(text={"vocab_size": tokenizer.vocab_size}, codebook={"allow_random": True})  # speed only
    model = flava_model_for_pretraining(cfg).train()
    opt = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=1e-4, fused=True)
    times = []
    for batch in tiny_batches[:12]:
        t = time.perf_counter()
        model(**batch.model_inputs()).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    step = statistics.median(times[2:])
    print()
    print(
        f"tiny model, paired step on these batches: {args.batch_size / step:.0f} samples/s "
        f"({1000 * step:.0f} ms per batch of {args.batch_size})"
    )


if __name__ == "__main__":
    main()
