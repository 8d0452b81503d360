"""One full FLAVA pretraining step, mmkit against transformers' FlavaForPreTraining, side by side.

A step is what a FLAVA training update does when every source contributes: a paired batch
(contrastive + ITM + MMM), an image-only batch (MIM) and a text-only batch (MLM), each
forward and backward, then one AdamW update. Both models have the same architecture, the
same weights (converted), the same batch and the same objectives; they run alternately in
one process so that machine noise hits both alike. mmkit runs with the dVAE tokenizer in the
step (the same work as transformers) and with precomputed ("cached") tokenizer ids, each eagerly
(the exact masked positions) and compiled whole (``--compile step``: ``torch.compile(fullgraph=True)``
of each batch kind's forward, losses and backward, the masked objectives on their static-shape
budget; its own copy of the weights and optimiser, so both stay in lockstep).

Reported per model: median step time, samples/s (3 x batch samples per step), peak memory
of a step above the resident model and optimiser (measured in separate passes: on CPU RSS sampled
every 0.5 ms, with allocations over 64 KiB mmap-ed so that freed tensors leave the resident
set at once, and memory trimmed back to the OS before each step; on CUDA the allocator's peak),
model FLOPs of the step (counted with ``torch.utils.flop_counter``, attention in its matmul form;
the frozen tokenizer's forward is in the total and also reported alone; a compiled variant is
counted on its eager static-shape path, budget padding included) and the achieved FLOP/s as a
fraction of a large matmul timed in the same run; on CUDA also the MFU against the card's dense
bf16 peak (named in the output). ``--batches`` sweeps batch sizes (a CUDA out-of-memory drops that
model at that size) and reports each model at its own best batch.

    python benchmarks/flava_step.py --size tiny
    python benchmarks/flava_step.py --size full --batch 2 --steps 3
    python benchmarks/flava_step.py --size full --batches 32,64,128,256 --steps 5 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmkit.masking import BlockMaskGenerator, TokenMasker, itm_negatives
from mmkit.models import FLAVAConfig, flava_config_to_hf, flava_model_for_pretraining, flava_pretraining_from_hf
from mmkit.tokenizers import dalle_preprocess

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled in a thread."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def make_batches(cfg: FLAVAConfig, batch: int, text_len: int, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Paired, image-only and text-only batches, as mmkit's collators would make them."""
    g = torch.Generator().manual_seed(seed)
    grid = cfg.image.image_size // cfg.image.patch_size
    blocks = BlockMaskGenerator.flava(grid)
    tokens = TokenMasker(cfg.text.vocab_size, mask_token_id=103, special_token_ids=[101, 102])

    def text():
        ids = torch.randint(1000, cfg.text.vocab_size, (batch, text_len), generator=g)
        mask = torch.ones(batch, text_len, dtype=torch.long)
        lengths = torch.randint(text_len // 2, text_len + 1, (batch,), generator=g)
        for i, n in enumerate(lengths.tolist()):
            ids[i, 0], ids[i, n - 1] = 101, 102
            ids[i, n:], mask[i, n:] = 0, 0
        masked, labels = tokens(ids, mask, generator=g)
        return dict(input_ids=ids, attention_mask=mask, masked_input_ids=masked, mlm_labels=labels)

    def image():
        size = cfg.image.image_size
        return dict(
            pixel_values=torch.randn(batch, 3, size, size, generator=g),
            codebook_pixel_values=dalle_preprocess(
                torch.rand(batch, 3, cfg.codebook.image_size, cfg.codebook.image_size, generator=g)
            ),
            patch_mask=blocks.batch(batch, generator=g),
        )

    pair = {**image(), **text()}
    _, pair["itm_labels"] = itm_negatives(batch, 0.1, generator=g)
    text_only = text()
    text_only.pop("input_ids")
    return {"pair": pair, "image": image(), "text": text_only}


def hf_inputs(kind: str, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same batch in transformers' argument names (copied: transformers mutates some inputs)."""
    out = {}
    if kind in ("pair", "image"):
        out.update(
            pixel_values=b["pixel_values"],
            codebook_pixel_values=b["codebook_pixel_values"],
            bool_masked_pos=b["patch_mask"].clone(),
        )
    if kind in ("pair", "text"):
        out.update(
            input_ids_masked=b["masked_input_ids"],
            mlm_labels=b["mlm_labels"].clone(),
            attention_mask=b["attention_mask"],
            # transformers always runs an unmasked text pass too; feed it the masked ids for text-only
            input_ids=b.get("input_ids", b["masked_input_ids"]),
        )
    if kind == "pair":
        out["itm_labels"] = b["itm_labels"].clone()
    return out


def matmul_flops_per_s(n: int = 2048, reps: int = 5, device=None, dtype=torch.float32) -> float:
    """FLOP/s of an ``n x n`` matmul (8192 on a GPU) in ``dtype`` on ``device``: the reference rate."""
    device = device or torch.device("cpu")
    if device.type == "cuda":
        n = 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def count_flops(step: Callable[[], None]) -> int:
    """The FLOPs of ``step()``, counted as the training runtime counts them (:func:`mmkit.train.perf.count_flops`)."""
    from mmkit.train.perf import count_flops as runtime_count

    return runtime_count(step)


def build(cfg: FLAVAConfig):
    from transformers import FlavaConfig, FlavaForPreTraining

    torch.manual_seed(0)
    hf = FlavaForPreTraining(FlavaConfig(**flava_config_to_hf(cfg))).train()
    ours = flava_model_for_pretraining(cfg).train()
    ours.load_state_dict(flava_pretraining_from_hf(hf.state_dict(), cfg))
    return hf, ours


#: kernel families by a pattern of their names (first match wins), for the profile's breakdown on CUDA
KERNEL_FAMILIES = (
    ("attention", re.compile(r"flash|fmha|attention|sdpa|cudnn", re.I)),
    ("matmul", re.compile(r"gemm|sm90_|sm80_|cutlass|cublas|nvjet|_mm_|matmul|addmm|bmm", re.I)),
    ("optimizer", re.compile(r"adam|foreach|multi_tensor", re.I)),
    ("fused pointwise / norm (triton)", re.compile(r"triton", re.I)),
    ("copies and fills", re.compile(r"copy|memcpy|memset|fill|cat", re.I)),
)


def profile_table(step: Callable[[], None], rows: int = 12, cuda: bool = False) -> str:
    """Top operators of one step by self time: CPU time on the CPU; on CUDA the kernels by device time,
    then the step's wall time, how much of it the GPU was busy (the rest is launch overhead, host work and
    syncs: what CUDA graphs or a larger batch win back) and the busy time by kernel family."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    events = prof.key_averages()
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = events.table(sort_by=sort_by, row_limit=rows, max_name_column_width=64)
    if not cuda:
        return table
    kernels = [
        e
        for e in events
        if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
    ]
    busy = sum(e.self_device_time_total for e in kernels)
    families: dict[str, float] = {}
    for e in kernels:
        family = next((name for name, pattern in KERNEL_FAMILIES if pattern.search(e.key)), "other")
        families[family] = families.get(family, 0.0) + e.self_device_time_total
    lines = [f"step wall {wall_us / 1e3:.1f} ms, GPU busy {busy / 1e3:.1f} ms ({busy / wall_us:.0%})"]
    lines += [
        f"  {name}: {t / 1e3:.1f} ms ({t / max(busy, 1e-9):.0%} of busy)"
        for name, t in sorted(families.items(), key=lambda kv: -kv[1])
    ]
    return table + "\n" + "\n".join(lines)


def card_peak(device_name: str) -> tuple[str, float] | None:
    """``(card, dense bf16 FLOP/s)`` of a CUDA device name from the runtime's table
    (:data:`mmkit.train.perf.PEAK_TFLOPS`, which ``perf/mfu`` uses too), or None for a card not in it."""
    from mmkit.train.perf import PEAK_TFLOPS

    for key, peaks in PEAK_TFLOPS:
        if key in device_name and "bf16" in peaks:
            return ("H100 SXM" if key == "H100" else key), peaks["bf16"] * 1e12
    return None


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


@dataclass(frozen=True)
class Settings:
    """What one run measures, made once from the command line (:meth:`from_args`).

    ``compile``: ``none`` (eager mmkit), ``layers`` (each transformer layer compiled), ``step`` (the whole
    step, static shapes); ``compile_mode``: ``torch.compile``'s mode for ``step`` (e.g. ``reduce-overhead``
    for CUDA graphs); ``dynamic``: compile ``step`` with a symbolic batch size (one graph per batch kind
    for the whole sweep instead of one per size); ``sync_check``: after timing, run one more step of the
    first compiled variant under ``torch.cuda.set_sync_debug_mode("error")`` (CUDA only); ``image_budget``
    and ``text_budget``: fractions for the static-shape objectives (None: the model's); ``with_cached``: also
    time each mmkit variant on precomputed tokenizer ids.
    """

    size: str = "tiny"
    batches: tuple[int, ...] = (32,)
    text_len: int = 32
    steps: int = 20
    warmup: int = 1
    profile: bool = False
    device: str = "cpu"
    dtype: str = "fp32"
    backends: tuple[str, ...] = ()
    compile: tuple[str, ...] = ("none", "step")
    compile_mode: str | None = None
    dynamic: bool = False
    sync_check: bool = False
    memory: bool = True
    image_budget: float | None = None
    text_budget: float | None = None
    with_cached: bool = True

    @property
    def budgets(self) -> dict[str, float]:
        """``{"image": f, "text": f}``, only the budgets that were given."""
        return {k: v for k, v in (("image", self.image_budget), ("text", self.text_budget)) if v}

    @classmethod
    def from_args(cls, args: argparse.Namespace, size: str) -> Settings:
        """The settings of ``size`` (tiny or full) from :func:`parse_args`' result, with the size's defaults."""
        full = size == "full"
        return cls(
            size=size,
            batches=tuple(int(b) for b in args.batches.split(",") if b) or (args.batch or (2 if full else 32),),
            text_len=args.text_len or (40 if full else 32),
            steps=args.steps or (3 if full else 20),
            warmup=args.warmup,
            profile=args.profile,
            device=args.device,
            dtype=args.dtype,
            backends=tuple(b for b in args.backends.split(",") if b),
            compile=compile_modes(args.compile),
            compile_mode=args.compile_mode,
            dynamic=args.dynamic,
            sync_check=args.sync_check,
            memory=not args.no_memory,
            image_budget=args.image_budget,
            text_budget=args.text_budget,
            with_cached=not args.no_cached,
        )


@dataclass
class Bench:
    """The models of one run on their device: transformers' with its optimiser, mmkit's eager model (the
    reference of the compiled variants and the cached ids' tokenizer) and every timed mmkit variant."""

    cfg: FLAVAConfig
    dev: torch.device
    hf: torch.nn.Module
    opt_hf: torch.optim.Optimizer
    ours: torch.nn.Module
    models: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]
    autocast: contextlib.AbstractContextManager

    @property
    def cuda(self) -> bool:
        """Whether the run is on a CUDA device."""
        return self.dev.type == "cuda"


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Fused AdamW (one kernel over all parameters): every model gets the same optimiser."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1, fused=True)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _mmkit_variants(ours: torch.nn.Module, s: Settings) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
    """mmkit's eager model (unless ``none`` is not in ``s.compile``) and its variants: the same weights under
    each other attention backend, and each compiled form, every one a copy with its own optimiser."""
    models = {"mmkit": (ours, _optimizer(ours))}
    for backend in s.backends:
        model = copy.deepcopy(ours)
        try:
            model.model.set_attention_backend(backend)
        except RuntimeError as exc:  # e.g. xformers installed for another PyTorch: say so, time the rest
            print(f"skipping the {backend} variant: {exc}")
            continue
        models[f"{backend} attention"] = (model, _optimizer(model))
    for mode in s.compile:
        if mode == "none":
            continue
        model = copy.deepcopy(ours)
        if mode == "layers":
            for layer in model.shard_units():
                layer.compile()
        else:
            model.set_static_shapes(True, **{f"{k}_budget": v for k, v in s.budgets.items()}).compile(
                fullgraph=True, dynamic=None if s.dynamic else False, mode=s.compile_mode
            )
        models[f"compiled {mode}"] = (model, _optimizer(model))
    if "none" not in s.compile:
        del models["mmkit"]
    return models


def setup(s: Settings) -> Bench:
    """Both models at ``s.size`` with the same (converted) weights on ``s.device``, and mmkit's variants."""
    cfg = FLAVAConfig.tiny() if s.size == "tiny" else FLAVAConfig()
    cfg = cfg.replace(**{"codebook.allow_random": True})  # speed only: a random tokenizer costs what a trained one does
    hf, ours = build(cfg)
    dev = torch.device(s.device)
    hf, ours = hf.to(dev), ours.to(dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if s.dtype == "bf16" else contextlib.nullcontext()
    models = _mmkit_variants(ours, s)
    return Bench(cfg, dev, hf, _optimizer(hf), ours, models, autocast)


def _step_hf(bench: Bench, data: dict[str, dict[str, torch.Tensor]]) -> Callable[[], None]:
    """One transformers step: forward and backward of each batch kind, then the optimiser's update."""

    def step() -> None:
        for kind, b in data.items():
            with bench.autocast:
                loss = bench.hf(**hf_inputs(kind, b)).loss
            loss.backward()
        bench.opt_hf.step()
        bench.opt_hf.zero_grad(set_to_none=True)
        _sync(bench.dev)

    return step


def _step_ours(
    bench: Bench, data: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, synchronize: bool = True
) -> Callable[[], None]:
    """One step of an mmkit variant: forward and backward of each batch kind, then the optimiser's update."""

    def step() -> None:
        for b in data.values():
            with bench.autocast:
                loss = model(**b).loss
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if synchronize:
            _sync(bench.dev)

    return step


def _batch_data(bench: Bench, s: Settings, batch: int) -> tuple[dict, dict]:
    """The three batch kinds on the device, and a copy with the image tokenizer's ids precomputed."""
    made = make_batches(bench.cfg, batch, s.text_len)
    data = {k: {n: t.to(bench.dev) for n, t in b.items()} for k, b in made.items()}
    cached = copy.deepcopy(data)
    with torch.no_grad():
        for kind in ("pair", "image"):
            cached[kind]["image_token_ids"] = bench.ours.image_tokenizer(cached[kind].pop("codebook_pixel_values"))
    if s.dynamic:
        for b in (*data.values(), *cached.values()):
            for t in b.values():
                torch._dynamo.maybe_mark_dynamic(t, 0)
    return data, cached


def _step_variants(bench: Bench, data: dict, cached: dict, with_cached: bool) -> dict[str, Callable[[], None]]:
    """The timed steps by row name: transformers, then each mmkit variant (and on cached ids)."""
    variants: dict[str, Callable[[], None]] = {"transformers": _step_hf(bench, data)}
    for name, (model, opt) in bench.models.items():
        plain, with_ids = (
            ("mmkit", "mmkit (cached ids)") if name == "mmkit" else (f"mmkit ({name})", f"mmkit ({name}, cached ids)")
        )
        variants[plain] = _step_ours(bench, data, model, opt)
        if with_cached:
            variants[with_ids] = _step_ours(bench, cached, model, opt)
    return variants


def _count_gflops(bench: Bench, variants: dict[str, Callable[[], None]], result: dict, data: dict) -> float:
    """Each measured variant's GFLOP per step into ``result``, attention counted in its matmul form (mmkit's
    math backend = transformers' eager) and compiled variants on their eager (static-shape) path; returns the
    frozen tokenizer's GFLOP in a step."""
    for model, _ in bench.models.values():
        model.model.set_attention_backend("math")
    with torch.compiler.set_stance("force_eager"):
        for name, step in variants.items():
            if "failed" not in result[name]:
                result[name]["gflop"] = count_flops(step) / 1e9
    for name, (model, _) in bench.models.items():
        model.model.set_attention_backend(
            name.split()[0] if name.endswith(" attention") else bench.cfg.attention_backend
        )
    codebook_inputs = [data[k]["codebook_pixel_values"] for k in ("pair", "image")]
    return count_flops(lambda: [bench.ours.image_tokenizer(x) for x in codebook_inputs]) / 1e9


def _rates(result: dict, batch: int, peak_rate: float, card: tuple[str, float] | None, tokenizer_gflop: float) -> None:
    """Samples/s, the fraction of the matmul rate, the MFU (on a known card) and the tokenizer's share."""
    for name, r in result.items():
        if "failed" in r:
            continue
        r["samples_per_s"] = 3 * batch / r["step_s"]
        r["matmul_fraction"] = r["gflop"] * 1e9 / r["step_s"] / peak_rate
        if card is not None:
            r["mfu"] = r["gflop"] * 1e9 / r["step_s"] / card[1]
        r["tokenizer_gflop"] = 0.0 if "cached" in name else tokenizer_gflop


def _print_profiles(bench: Bench, s: Settings, batch: int, variants: dict, result: dict) -> None:
    for name in ("transformers", *(n for n in variants if n.startswith("mmkit") and "cached" not in n)):
        if "failed" not in result[name]:
            print(f"\nprofile of one {name} step ({s.size}, batch {batch}):")
            print(profile_table(variants[name], cuda=bench.cuda))


def _measure_batch(
    bench: Bench, s: Settings, batch: int, peak_rate: float, card: tuple[str, float] | None
) -> dict[str, Any]:
    """Every variant timed at one batch size (see :func:`report`); the compiled variants are checked against
    the eager model, and the sync check run, on the first batch size."""
    data, cached = _batch_data(bench, s, batch)
    variants = _step_variants(bench, data, cached, s.with_cached)
    first = batch == s.batches[0]
    if first:
        _check_compiled(bench.models, bench.ours, data, bench.autocast)
    result = _measure(variants, s.steps, s.warmup, bench.cuda, bench.dev, s.memory)
    # on the first batch, its graphs warm
    extra = {"sync_check": _sync_check(bench, data, s.dtype)} if first and s.sync_check else {}
    _rates(result, batch, peak_rate, card, _count_gflops(bench, variants, result, data))
    if s.profile:
        _print_profiles(bench, s, batch, variants, result)
    return dict(
        size=s.size,
        batch=batch,
        text_len=s.text_len,
        matmul_gflops=peak_rate / 1e9,
        card=card[0] if card else None,
        card_peak_tflops=card[1] / 1e12 if card else None,
        models=result,
        **extra,
    )


def run(s: Settings, on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Time every model at each batch size of ``s.batches``; one result dict per batch size (see :func:`report`),
    each also passed to ``on_result`` as soon as it is measured."""
    bench = setup(s)
    peak_rate = matmul_flops_per_s(device=bench.dev, dtype=torch.bfloat16 if s.dtype == "bf16" else torch.float32)
    card = card_peak(torch.cuda.get_device_name(bench.dev)) if bench.cuda else None
    results = []
    for batch in s.batches:
        results.append(_measure_batch(bench, s, batch, peak_rate, card))
        if on_result is not None:
            on_result(results[-1])
    return results


def _check_compiled(models: dict, eager: torch.nn.Module, data: dict, autocast) -> None:
    """Print how far each compiled variant's losses are from the eager model's on the same (first) batch,
    and any budget overflow, before any update (all copies still hold the same weights)."""
    for name, (model, _) in models.items():
        if not name.startswith("compiled"):
            continue
        diffs, overflow = [], 0
        for b in data.values():
            with autocast:
                ref, out = eager(**b), model(**b)  # with grad: the compiled forward is the training graph
            diffs += [float((out.losses[k] - v).abs()) for k, v in ref.losses.items()]
            overflow += sum(int(v) for v in out.overflow.values())
        print(
            f"{name}: max |loss - eager loss| over the objectives of the three kinds {max(diffs):.2e}, "
            f"masked positions beyond the budget {overflow}"
        )


def _measure(
    variants: dict[str, Callable[[], None]], steps: int, warmup: int, cuda: bool, dev: torch.device, memory: bool
) -> dict[str, dict[str, float]]:
    """Median step time and peak step memory of each variant, run alternately; a variant that runs out of
    CUDA memory is dropped (reported as OOM)."""
    failed: dict[str, str] = {}

    def attempt(name: str, fn: Callable[[], None]) -> bool:
        if name in failed:
            return False
        try:
            fn()
            return True
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc):
                raise
            failed[name] = "OOM"
            if cuda:
                torch.cuda.empty_cache()
            return False

    for _ in range(warmup):
        for name, step in variants.items():
            attempt(name, step)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(steps):
        for name, step in variants.items():
            t = time.perf_counter()
            if attempt(name, step):
                times[name].append(time.perf_counter() - t)
    # Memory in its own passes: every allocation over 64 KiB is mmap-ed, so freed tensors leave
    # the resident set at once and RSS follows live tensors rather than the allocator's cache.
    peaks: dict[str, list[float]] = {k: [float("nan")] for k in variants}
    if memory and _LIBC is not None and not cuda:
        _LIBC.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    for _ in range(2 if memory else 0):
        for name, step in variants.items():
            if cuda:  # the allocator's own peak above what is resident before the step
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
                if attempt(name, step):
                    peaks[name].append((torch.cuda.max_memory_allocated(dev) - base) / 2**20)
                continue
            with PeakRSS() as mem:
                step()
            peaks[name].append(mem.delta_mib)
    out: dict[str, dict[str, float]] = {}
    for name in variants:
        if name in failed or not times[name]:
            out[name] = {"failed": failed.get(name, "no step")}  # type: ignore[dict-item]
            continue
        out[name] = dict(step_s=statistics.median(times[name]), peak_mib=max(peaks[name][1:], default=float("nan")))
    return out


def _sync_check(bench: Bench, data: dict, dtype: str) -> list[str]:
    """Steps of the first compiled variant under ``torch.cuda.set_sync_debug_mode("error")`` (a host sync
    raises): the bare step (forward and backward of the pair, image and text batches, fused AdamW), then
    the same three batches as one non-logging :class:`~mmkit.train.TrainStep` (three micro-batches:
    autocast, clipping, the non-finite skip decided on the device by the fused AdamW's ``found_inf``, as
    the recipes do with ``optim.fused=true``). One verdict each: passed, or the first sync's place."""
    import itertools
    import tempfile
    import traceback

    from mmkit.train import Collectives, DistInfo, RunContext, StepOptions, TrainStep

    dev = bench.dev
    compiled = [(n, m) for n, m in bench.models.items() if n.startswith("compiled")]
    if dev.type != "cuda" or not compiled:
        return ["skipped (needs CUDA and a compiled variant)"]
    name, (model, opt) = compiled[0]
    ctx = RunContext(DistInfo(device=dev), Collectives(dev, 1), Path(tempfile.mkdtemp()), config=None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    precision = "bf16" if dtype == "bf16" else "fp32"
    options = StepOptions(precision, grad_accum=len(data), max_grad_norm=1.0, on_device=True)
    train_step = TrainStep(ctx, model, opt, scheduler, options)
    batches = itertools.cycle(data.values())

    def forward(m, b):
        out = m(**b)
        return out.loss, out.losses

    checks = {
        "step (forward + backward of 3 kinds, fused AdamW)": _step_ours(bench, data, model, opt, synchronize=False),
        "TrainStep (3 micro-batches, clip, finite check)": lambda: train_step(lambda: next(batches), forward, 1),
    }
    verdicts = []
    for what, fn in checks.items():
        fn()  # anything lazily set up on a first call happens outside the check
        torch.cuda.synchronize(dev)
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
            verdicts.append(f"{what}: passed ({name})")
        except RuntimeError as exc:
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/mmkit/" in f.filename]
            where = " <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in reversed(frames[-4:]))
            verdicts.append(f"{what}: FAILED ({name}): {str(exc).splitlines()[0]} at {where or '?'}")
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize(dev)
    return verdicts


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.3g}"


def report(result: dict[str, Any]) -> str:
    """One batch size's table (a markdown table; ``x transformers`` at the same batch)."""
    models, card = result["models"], result["card"]
    ref = models.get("transformers", {})
    lines = [
        f"## {result['size']}: batch {result['batch']} per source (3 x {result['batch']} samples per step), "
        f"text length {result['text_len']}",
        f"matmul reference in this run (same device and dtype): {result['matmul_gflops']:.1f} GFLOP/s"
        + (f"; MFU against the {card} dense bf16 peak, {result['card_peak_tflops']:.0f} TFLOP/s" if card else ""),
        "",
        "| model | step (s, median) | samples/s | x transformers | peak step memory (MiB) | GFLOP/step "
        "| of which tokenizer | achieved GFLOP/s | of matmul |" + (" MFU |" if card else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if card else ""),
    ]
    for name, r in models.items():
        if "failed" in r:
            lines.append(f"| {name} | {r['failed']} |" + " |" * (8 if card else 7))
            continue
        speedup = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}" if "samples_per_s" in ref else "-"
        lines.append(
            f"| {name} | {r['step_s']:.3f} | {_num(r['samples_per_s'])} | {speedup} | {r['peak_mib']:.0f} "
            f"| {r['gflop']:.1f} | {r['tokenizer_gflop']:.1f} | {r['gflop'] / r['step_s']:.1f} "
            f"| {r['matmul_fraction']:.0%} |" + (f" {r['mfu']:.1%} |" if card else "")
        )
    if "sync_check" in result:
        lines += ["", "sync check (torch.cuda.set_sync_debug_mode('error')):"]
        lines += [f"- {verdict}" for verdict in result["sync_check"]]
    return "\n".join(lines)


def report_best(results: list[dict[str, Any]]) -> str:
    """Each model at its own best batch size, and its ratio to transformers at transformers' best batch."""
    best: dict[str, tuple[float, int, dict]] = {}
    for result in results:
        for name, r in result["models"].items():
            if "samples_per_s" in r and r["samples_per_s"] > best.get(name, (0.0,))[0]:
                best[name] = (r["samples_per_s"], result["batch"], r)
    ref = best.get("transformers", (float("nan"),))[0]
    card = results[0]["card"]
    lines = [
        "## each model at its own best batch size",
        "",
        "| model | best batch | samples/s | x transformers (at its best) |" + (" MFU |" if card else ""),
        "|---|---|---|---|" + ("---|" if card else ""),
    ]
    for name, (rate, batch, r) in best.items():
        lines.append(f"| {name} | {batch} | {_num(rate)} | {rate / ref:.2f} |" + (f" {r['mfu']:.1%} |" if card else ""))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "full", "both"], default="tiny")
    parser.add_argument("--batch", type=int, default=None, help="samples per source (default: tiny 32, full 2)")
    parser.add_argument("--batches", default="", help="comma-separated batch sizes to sweep, e.g. 16,32,64,128,256")
    parser.add_argument("--text-len", type=int, default=None, help="text length (default: tiny 32, full 40)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per model (default: tiny 20, full 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also print the top operators of one step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast for both models")
    parser.add_argument(
        "--backends",
        default="",
        help="comma-separated extra attention backends to time for mmkit beside sdpa, e.g. xformers (CUDA only)",
    )
    parser.add_argument(
        "--compile",
        default="none,step",
        help="mmkit variants, comma-separated: none (eager), layers, step (whole step, fullgraph)",
    )
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode of the step variant, e.g. reduce-overhead (CUDA graphs), max-autotune",
    )
    parser.add_argument(
        "--dynamic",
        action="store_true",
        help="compile the step with a symbolic batch size: one graph per kind for a whole sweep",
    )
    parser.add_argument(
        "--sync-check",
        action="store_true",
        help="CUDA: one compiled step under torch.cuda.set_sync_debug_mode('error') at the end",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory passes")
    parser.add_argument("--image-budget", type=float, default=None, help="static-shape MIM/MMM budget (fraction)")
    parser.add_argument("--text-budget", type=float, default=None, help="static-shape MLM/MMM budget (fraction)")
    parser.add_argument("--no-cached", action="store_true", help="skip the mmkit variants on cached tokenizer ids")
    parser.add_argument("--json", default=None, help="also write every result to this JSON file")
    return parser


def compile_modes(text: str) -> tuple[str, ...]:
    """The ``--compile`` list as a tuple (``"none,step"`` -> ``("none", "step")``)."""
    return tuple(m for m in text.split(",") if m)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--compile`` checked."""
    parser = _parser()
    args = parser.parse_args(argv)
    modes = compile_modes(args.compile)
    if set(modes) - {"none", "layers", "step"} or not modes:
        parser.error(f"--compile takes none, layers and/or step, got {args.compile!r}")
    return args


def _print_machine(device: str) -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        card = card_peak(name)
        print(
            f"device: {name}"
            + (
                f" ({card[0]}, dense bf16 peak {card[1] / 1e12:.0f} TFLOP/s)"
                if card
                else " (no bf16 peak known for this card: no MFU column)"
            )
        )


def main() -> None:
    args = parse_args()
    _print_machine(args.device)
    everything = []

    def show(result: dict[str, Any]) -> None:
        print()
        print(report(result), flush=True)
        everything.append(result)
        if args.json:  # after every batch size, so that a run cut short keeps what it measured
            import json

            with open(args.json, "w") as f:
                json.dump(everything, f, indent=1)

    for size in ("tiny", "full") if args.size == "both" else (args.size,):
        results = run(Settings.from_args(args, size), on_result=show)
        if len(results) > 1:
            print()
            print(report_best(results))


if __name__ == "__main__":
    main()
