"""Where the time goes: a step's FLOPs are counted once per batch shape and equal ``flop_counter`` run on
the model by hand; tokens come from the batch's shapes; ``perf/mfu`` appears only with a known peak."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mmkit.data.collators import Batch
from mmkit.train import (
    Collectives,
    DistInfo,
    LogWindow,
    PerfConfig,
    PerfMeter,
    RunContext,
    StepOptions,
    TrainStep,
    warmup_cosine_scheduler,
)
from mmkit.train.checkpoint import CheckpointConfig
from mmkit.train.perf import batch_tokens


class _Tiny(nn.Module):
    """Patches through a linear layer, token ids through an embedding, one attention over both."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.embed = nn.Embedding(50, 8)
        self.mix = nn.Linear(8, 8)

    def forward(self, pixel_values, input_ids):
        x = torch.cat([self.patch(pixel_values).flatten(2).transpose(1, 2), self.embed(input_ids)], 1)
        x = nn.functional.scaled_dot_product_attention(x, x, x)
        return self.mix(x).square().mean()


def _batch(length: int) -> Batch:
    return Batch(pixel_values=torch.randn(2, 3, 8, 8), input_ids=torch.randint(0, 50, (2, length)))


def _forward(model, batch):
    loss = model(batch.pixel_values, batch.input_ids)
    return loss, {"loss": loss}


def test_flops_are_counted_once_per_shape_and_equal_flop_counter_on_the_model(tmp_path):
    torch.manual_seed(0)
    model = _Tiny()
    ctx = RunContext(DistInfo(), Collectives(torch.device("cpu"), 1), tmp_path, CheckpointConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    perf = PerfMeter(torch.device("cpu"), "fp32", patch_size=4)
    step = TrainStep(ctx, model, opt, warmup_cosine_scheduler(opt, 0, 10), StepOptions(grad_accum=2), perf=perf)
    oracle = {}
    for length in (5, 7):  # the hand-run oracle: flop_counter on the model's forward and backward
        with FlopCounterMode(display=False) as counter:
            _forward(model, _batch(length))[0].backward()
        oracle[length] = counter.get_total_flops()
        model.zero_grad()
    assert oracle[5] != oracle[7] > 0
    batches = iter([_batch(5), _batch(7), _batch(5), _batch(7)])
    first = step(lambda: next(batches), _forward, 1)
    second = step(lambda: next(batches), _forward, 2)
    assert first.flops == second.flops == oracle[5] + oracle[7]
    assert len(step.perf.flops_by_key) == 2  # counted on step 1, reused on step 2
    assert first.tokens == 2 * (2 * 2 + 5) + 2 * (2 * 2 + 7) == batch_tokens(_batch(5), 4) + batch_tokens(_batch(7), 4)
    assert 0.0 <= first.data_wait and first.peak_flops is None  # a CPU has no peak in the table
    window = LogWindow()
    window.add(first)
    record = window.read()
    assert {"perf/samples_per_s", "perf/tokens_per_s", "perf/tflops_per_device", "perf/data_wait"} <= set(record)
    assert "perf/mfu" not in record and 0.0 <= record["perf/data_wait"] <= 1.0


def test_mfu_is_the_flop_rate_against_the_given_peak():
    meter = PerfMeter(torch.device("cpu"), "bf16", PerfConfig(peak_tflops=2.0))
    assert meter.peak == 2e12
    window = LogWindow()
    window.flops, window.peak = 1e9, meter.peak
    record = window.perf()
    assert record["perf/mfu"] == record["perf/tflops_per_device"] * 1e12 / 2e12 > 0
