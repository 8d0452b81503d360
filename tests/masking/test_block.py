import math
import random
import statistics

import pytest
import torch

from mmkit.masking import BlockMaskConfig, BlockMaskGenerator


def _reference_beit_counts(n: int, seed: int) -> list[int]:
    """BEiT's published procedure (Algorithm 1 of arXiv 2106.08254), transcribed with Python's
    `random`, as an independent oracle for the law (not for the exact stream)."""
    rng = random.Random(seed)
    height = width = 14
    target, min_block, max_block = 75, 16, 75
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    counts = []
    for _ in range(n):
        mask = [[0] * width for _ in range(height)]
        count = 0
        while count < target:
            budget = min(target - count, max_block)
            delta = 0
            for _ in range(10):
                area = rng.uniform(min_block, budget)
                aspect = math.exp(rng.uniform(*log_aspect))
                h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if w < width and h < height:
                    top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                    already = sum(mask[i][j] for i in range(top, top + h) for j in range(left, left + w))
                    if 0 < h * w - already <= budget:
                        for i in range(top, top + h):
                            for j in range(left, left + w):
                                if not mask[i][j]:
                                    mask[i][j] = 1
                                    delta += 1
                if delta > 0:
                    break
            if delta == 0:
                break
            count += delta
        counts.append(count)
    return counts


def test_masked_count_follows_the_beit_law():
    gen = BlockMaskGenerator()
    g = torch.Generator().manual_seed(0)
    ours = [int(gen(g).sum()) for _ in range(3000)]
    ref = _reference_beit_counts(3000, seed=0)
    assert max(ours) <= 75 and min(ours) >= 16
    assert abs(statistics.mean(ours) - statistics.mean(ref)) < 0.4
    assert 0.36 < statistics.mean(ours) / 196 < 0.385  # "75 of 196, about 38%"


def test_block_proposals_follow_area_and_aspect_laws():
    gen = BlockMaskGenerator(grid_size=(64, 64), num_masking_patches=75)  # a big grid: nothing is rejected
    g = torch.Generator().manual_seed(1)
    blocks = [gen.propose(75, torch.rand(4, generator=g, dtype=torch.float64)) for _ in range(20000)]
    areas = [h * w for h, w, _, _ in blocks]
    log_aspects = [math.log(h / w) for h, w, _, _ in blocks]
    assert abs(statistics.mean(areas) - (16 + 75) / 2) < 1.5  # area ~ U(16, 75), up to rounding
    assert abs(statistics.mean(log_aspects)) < 0.02  # log-uniform on a symmetric interval
    assert min(log_aspects) > math.log(0.3) - 0.35 and max(log_aspects) < math.log(1 / 0.3) + 0.35
    tops = [t for _, _, t, _ in blocks]
    assert min(tops) == 0


def test_seeded_and_reproducible():
    gen = BlockMaskGenerator.from_config(BlockMaskConfig())
    a = gen.batch(8, torch.Generator().manual_seed(5))
    b = gen.batch(8, torch.Generator().manual_seed(5))
    c = gen.batch(8, torch.Generator().manual_seed(6))
    assert a.shape == (8, 196) and a.dtype == torch.bool
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_every_parameter_is_honoured():
    gen = BlockMaskGenerator(grid_size=4, num_masking_patches=6, min_block=2, max_block=4, min_aspect=0.5)
    g = torch.Generator().manual_seed(0)
    counts = [int(gen(g).sum()) for _ in range(500)]
    assert max(counts) <= 6 and statistics.mean(counts) > 4
    assert int(BlockMaskGenerator(num_masking_patches=0)().sum()) == 0
    with pytest.raises(ValueError, match="must lie in"):
        BlockMaskGenerator(grid_size=4, num_masking_patches=17)


def test_flava_preset_scales_the_released_law():
    default = BlockMaskGenerator()
    preset = BlockMaskGenerator.flava(14)
    assert (preset.num_masking_patches, preset.min_block, preset.max_block) == (75, 16, 75)
    assert vars(preset) == vars(default)
    small = BlockMaskGenerator.flava(4)
    assert (small.num_masking_patches, small.min_block) == (6, 1)
