"""Builds the mixed loader the resume tests use; run as a module it resumes from a saved state
in a fresh process and saves the next batches:

    python -m tests.data.resume_helper STATE_IN BATCHES_OUT ROOT TOKENIZER_DIR RANK WORLD WORKERS M
"""

import sys
from pathlib import Path

import torch

from mmkit.data import (
    ImageCollator,
    ImageTransform,
    ImageTransformConfig,
    LoaderOptions,
    MixedBatches,
    PairCollator,
    SampleDataset,
    TarShards,
    TextCollator,
    TextLines,
    make_loader,
)
from mmkit.masking import BlockMaskGenerator, TokenMasker
from mmkit.tokenizers import TextTokenizer


def build(root: Path, tokenizer: TextTokenizer, rank: int, world: int, workers: int) -> MixedBatches:
    transform = ImageTransform(ImageTransformConfig(image_size=32, codebook_image_size=32, random_crop=True))
    blocks = BlockMaskGenerator(grid_size=4, num_masking_patches=6, min_block=2)
    tokens = TokenMasker(tokenizer.vocab_size, tokenizer.mask_token_id, tokenizer.special_token_ids)
    pairs = TarShards(sorted(root.glob("train-pairs-*.tar")), name="pairs")
    images = TarShards(sorted(root.glob("images-*.tar")), require_text=False, name="images")
    specs = {
        "pairs": ("pair", pairs, PairCollator(blocks, tokens, 0.5)),
        "images": ("image", images, ImageCollator(blocks)),
        "text": ("text", TextLines(root / "text.txt", name="text"), TextCollator(tokens)),
    }
    probs = {"pairs": 0.6, "images": 0.2, "text": 0.2}
    loaders = {}
    for name, (kind, source, collator) in specs.items():
        ds = SampleDataset(source, kind, image_transform=transform, tokenizer=tokenizer, seed=7)
        options = LoaderOptions(4, rank=rank, world_size=world, seed=11, num_workers=workers)
        loader = make_loader(ds, collator, options)
        loaders[name] = (loader, probs[name])
    return MixedBatches(loaders, seed=5)


def take(mixed: MixedBatches, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        batch = next(mixed)
        out.append({"source": batch.source, **batch.model_inputs()})
    return out


if __name__ == "__main__":
    state_in, batches_out, root, tok_dir, rank, world, workers, m = sys.argv[1:]
    tokenizer = TextTokenizer.from_pretrained(tok_dir, max_length=24)
    mixed = build(Path(root), tokenizer, int(rank), int(world), int(workers))
    mixed.load_state_dict(torch.load(state_in, weights_only=True))
    torch.save(take(mixed, int(m)), batches_out)
