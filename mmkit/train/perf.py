"""Where the time goes: model FLOPs counted once per batch shape, tokens, data wait and MFU.

:class:`PerfMeter` (made by :func:`~mmkit.train.loop.prepare_training` from a recipe's ``perf`` section)
times how long each step waits for its next batch, counts its image patches and text tokens from the
batch's shapes, and counts its model FLOPs with ``torch.utils.flop_counter.FlopCounterMode`` around the
training forward and backward of the FIRST step of each ``(batch kind, shapes)`` (exact, and only that
step pays the counter's overhead); later steps of the same shapes reuse the count. Under DDP / FSDP2 the
count is of this rank's local batch (FLOPs per device). :class:`~mmkit.train.loop.LogWindow` turns the
sums into ``perf/samples_per_s``, ``perf/tokens_per_s``, ``perf/tflops_per_device``, ``perf/mfu`` (against
:func:`peak_flops`) and ``perf/data_wait``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmkit.utils import positive

__all__ = ["PEAK_TFLOPS", "PerfConfig", "PerfMeter", "batch_key", "batch_tokens", "count_flops", "peak_flops"]


@dataclass
class PerfConfig:
    """The ``perf`` section: the device's peak for ``perf/mfu``."""

    # dense TFLOP/s per device that perf/mfu is measured against; None: the table of common GPUs
    # (mmkit.train.perf.PEAK_TFLOPS) for the run's precision, and no perf/mfu on a CPU or an unknown card
    peak_tflops: float | None = positive(None)


#: dense peak TFLOP/s per GPU, ``(substring of torch.cuda.get_device_name, {precision: TFLOP/s})``, first
#: match wins. bf16/fp16: tensor cores without sparsity; fp32: plain FP32 (no TF32, torch's default for
#: matmuls). Sources: NVIDIA's data sheets — H200 (H200 SXM datasheet, 2024), H100 SXM / PCIe / NVL (H100
#: datasheet, 2023), A100 (A100 datasheet, 2021: 312 / 19.5), L4 (L4 datasheet, 2023: 121 / 30.3), A10 (A10
#: datasheet, 2021: 125 / 31.2), V100 (V100 datasheet, 2020: SXM2 fp16 125 / fp32 15.7; no bf16).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),  # SXM
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
)


def peak_flops(device: torch.device, precision: str, peak_tflops: float | None = None) -> float | None:
    """The dense peak FLOP/s of one ``device`` at ``precision``: ``peak_tflops`` when given, else
    :data:`PEAK_TFLOPS`; None on a CPU or a card (or precision) not in the table."""
    if peak_tflops is not None:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks[precision] * 1e12 if precision in peaks else None
    return None


def flop_counter() -> Any:
    """A ``torch.utils.flop_counter.FlopCounterMode`` that counts the total only.

    ``FlopCounterMode`` also tracks which module each FLOP belongs to, with backward hooks that
    ``torch.autograd.grad`` refuses ("A leaf node was passed to _will_engine_execute_node") — and the
    whole-batch accumulation step (:mod:`mmkit.train.whole_batch`) takes its loss gradients that way. This one
    counts the same operators with the same formulas (and the same decompositions) without the tracker;
    where torch's internals differ, it falls back to the plain mode.
    """
    from torch.utils import flop_counter as fc

    inner = getattr(fc, "_FlopCounterMode", None)
    if inner is None:
        return fc.FlopCounterMode(display=False)

    class TotalFlopCounter(fc.FlopCounterMode):
        def __enter__(self):
            self.flop_counts.clear()
            self.mode = inner(self)
            self.mode.__enter__()
            return self

        def __exit__(self, *args):
            mode, self.mode = self.mode, None
            return mode.__exit__(*args)

        def _count_flops(self, func_packet, out, args, kwargs):
            if func_packet in self.flop_registry:
                flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
                self.flop_counts["Global"][func_packet] += flops
            return out

    return TotalFlopCounter(display=False)


def count_flops(fn: Callable[[], Any]) -> int:
    """The FLOPs ``fn()`` runs, counted by ``torch.utils.flop_counter``'s formulas (matmuls, convolutions and
    attention; a backward run inside is counted too): :func:`flop_counter`."""
    counter = flop_counter()
    with counter:
        fn()
    return counter.get_total_flops()


def _inputs(batch: Any) -> dict[str, Tensor]:
    if hasattr(batch, "model_inputs"):
        return batch.model_inputs()
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if isinstance(v, Tensor)}
    return {"pixel_values": batch} if isinstance(batch, Tensor) else {}


def batch_key(batch: Any) -> tuple:
    """``(kind, ((field, shape), ...))``: batches with one key run the same FLOPs."""
    shapes = tuple((k, tuple(v.shape)) for k, v in sorted(_inputs(batch).items()))
    return getattr(batch, "kind", type(batch).__name__), shapes


def batch_tokens(batch: Any, patch_size: int | None) -> int:
    """Image patches plus text tokens of a batch, from its shapes (no device read): ``pixel_values``
    ``(B, C, H, W)`` gives ``B * (H // p) * (W // p)`` (``p = patch_size``; None: one token per pixel),
    ``input_ids`` or ``masked_input_ids`` ``(B, L)`` gives ``B * L`` (padding included)."""
    inputs = _inputs(batch)
    tokens = 0
    pixels = inputs.get("pixel_values")
    if pixels is not None and pixels.dim() == 4:
        p = patch_size or 1
        tokens += pixels.shape[0] * (pixels.shape[2] // p) * (pixels.shape[3] // p)
    text = inputs.get("input_ids", inputs.get("masked_input_ids"))
    if text is not None:
        tokens += text.numel()
    return tokens


class PerfMeter:
    """Per step: data wait (s), tokens and model FLOPs of the micro-batches it ran (see the module docs).

    Args:
        device, precision: the training device and precision (they pick the peak).
        config: the ``perf`` section (``peak_tflops``). patch_size: the image encoder's patch size (tokens).
    """

    def __init__(
        self, device: torch.device, precision: str, config: PerfConfig | None = None, patch_size: int | None = None
    ) -> None:
        self.peak = peak_flops(device, precision, (config or PerfConfig()).peak_tflops)
        self.patch_size = patch_size
        self.flops_by_key: dict[tuple, int] = {}
        self.wait = self.flops = 0.0
        self.tokens = 0

    def take(self) -> tuple[float, int, float]:
        """``(data wait s, tokens, FLOPs)`` since the last call (one step's)."""
        out = (self.wait, self.tokens, self.flops)
        self.wait = self.flops = 0.0
        self.tokens = 0
        return out

    def fetch(self, next_batch: Callable[[], Any]) -> Any:
        """``next_batch()``, its wait timed and its tokens counted."""
        t = time.perf_counter()
        batch = next_batch()
        self.wait += time.perf_counter() - t
        self.tokens += batch_tokens(batch, self.patch_size)
        return batch

    @contextmanager
    def counting(self, key: tuple) -> Iterator[None]:
        """Around the forward and backward of the batches of ``key``: counted the first time, reused after."""
        known = key in self.flops_by_key
        if known:
            yield
        else:
            counter = flop_counter()
            with counter:
                yield
            self.flops_by_key[key] = counter.get_total_flops()
        self.flops += self.flops_by_key[key]


def meter_context(meter: PerfMeter | None, *batches: Any):
    """``meter.counting`` around the forward and backward of ``batches`` (one micro-batch, or a step's
    micro-batches run together), or nothing without a meter."""
    if meter is None:
        return nullcontext()
    return meter.counting(batch_key(batches[0]) if len(batches) == 1 else tuple(map(batch_key, batches)))
