"""One full FLAVA pretraining step, mmkit against transformers' FlavaForPreTraining, side by side.

A step is what a FLAVA training update does when every source contributes: a paired batch
(contrastive + ITM + MMM), an image-only batch (MIM) and a text-only batch (MLM), each
forward and backward, then one AdamW update. Both models have the same architecture, the
same weights (converted), the same batch and the same objectives; they run alternately in
one process so that machine noise hits both alike. mmkit runs twice: with the dVAE
tokenizer in the step (the same work as transformers) and with precomputed ("cached")
tokenizer ids.

Reported per model: median step time, samples/s (3 x batch samples per step), peak memory
of a step above the resident model and optimiser (measured in separate passes: RSS sampled
every 0.5 ms, with allocations over 64 KiB mmap-ed so that freed tensors leave the resident
set at once, and memory trimmed back to the OS before each step), model FLOPs of the step (counted with
``torch.utils.flop_counter``, attention in its matmul form) and the achieved FLOP/s as a
fraction of a large fp32 matmul timed in the same run.

    python benchmarks/flava_step.py --size tiny
    python benchmarks/flava_step.py --size full --batch 2 --steps 3
    python benchmarks/flava_step.py --size full --batch 32 --steps 10 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable

import torch

from mmkit.convert import config_to_hf, flava_pretraining_from_hf
from mmkit.masking import BlockMaskGenerator, TokenMasker, itm_negatives
from mmkit.models import FLAVAConfig, flava_model_for_pretraining
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
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def build(cfg: FLAVAConfig):
    from transformers import FlavaConfig, FlavaForPreTraining

    torch.manual_seed(0)
    hf = FlavaForPreTraining(FlavaConfig(**config_to_hf(cfg))).train()
    ours = flava_model_for_pretraining(cfg).train()
    ours.load_state_dict(flava_pretraining_from_hf(hf.state_dict(), cfg))
    return hf, ours


def profile_table(step: Callable[[], None], rows: int = 12) -> str:
    """Top operators of one step by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)


def run(
    size: str,
    batch: int,
    text_len: int,
    steps: int,
    warmup: int,
    profile: bool = False,
    device: str = "cpu",
    dtype: str = "fp32",
    backends: tuple[str, ...] = (),
) -> dict[str, dict[str, float]]:
    cfg = FLAVAConfig.tiny() if size == "tiny" else FLAVAConfig()
    hf, ours = build(cfg)
    dev = torch.device(device)
    hf, ours = hf.to(dev), ours.to(dev)
    batches = {k: {n: t.to(dev) for n, t in b.items()} for k, b in make_batches(cfg, batch, text_len).items()}
    cached = copy.deepcopy(batches)
    for kind in ("pair", "image"):
        cached[kind]["image_token_ids"] = ours.image_tokenizer(cached[kind].pop("codebook_pixel_values"))
    cuda = dev.type == "cuda"
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def optimizer(model):
        # fused: one kernel over all parameters (both models get the same optimiser)
        return torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1, fused=True
        )

    opt_hf, opt_ours = optimizer(hf), optimizer(ours)
    others = {}  # the same weights under another attention backend, each with its own optimiser
    for backend in backends:
        model = copy.deepcopy(ours)
        try:
            model.model.set_attention_backend(backend)
        except RuntimeError as exc:  # e.g. xformers installed for another PyTorch: say so, time the rest
            print(f"skipping the {backend} variant: {exc}")
            continue
        others[backend] = (model, optimizer(model))

    def step_hf():
        for kind, b in batches.items():
            with autocast:
                loss = hf(**hf_inputs(kind, b)).loss
            loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)
        sync()

    def step_ours(data, model=ours, opt=opt_ours):
        def step():
            for b in data.values():
                with autocast:
                    loss = model(**b).loss
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()

        return step

    variants = {
        "transformers": step_hf,
        "mmkit": step_ours(batches),
        "mmkit (cached ids)": step_ours(cached),
    }
    for backend, (model, opt) in others.items():
        variants[f"mmkit ({backend} attention)"] = step_ours(batches, model, opt)
    for _ in range(warmup):
        for step in variants.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(steps):
        for name, step in variants.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    # Memory in its own passes: every allocation over 64 KiB is mmap-ed, so freed tensors leave
    # the resident set at once and RSS follows live tensors rather than the allocator's cache.
    peaks: dict[str, list[float]] = {k: [] for k in variants}
    if _LIBC is not None and not cuda:
        _LIBC.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    for _ in range(2):
        for name, step in variants.items():
            if cuda:  # the allocator's own peak above what is resident before the step
                torch.cuda.reset_peak_memory_stats(dev)
                base = torch.cuda.memory_allocated(dev)
                step()
                peaks[name].append((torch.cuda.max_memory_allocated(dev) - base) / 2**20)
                continue
            with PeakRSS() as mem:
                step()
            peaks[name].append(mem.delta_mib)

    # FLOPs: attention counted in its matmul form (mmkit's math backend = transformers' eager).
    for model in [ours] + [m for m, _ in others.values()]:
        model.model.set_attention_backend("math")
    flops = {name: count_flops(step) for name, step in variants.items()}
    ours.model.set_attention_backend(cfg.attention_backend)
    for backend, (model, _) in others.items():
        model.model.set_attention_backend(backend)
    if profile:
        for name in ("transformers", "mmkit"):
            print(f"\nprofile of one {name} step ({size}):")
            print(profile_table(variants[name]))
    peak_rate = matmul_flops_per_s(device=dev, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    samples = 3 * batch
    result = {}
    for name in variants:
        t = statistics.median(times[name])
        result[name] = dict(
            step_s=t,
            samples_per_s=samples / t,
            peak_mib=max(peaks[name]),
            gflop=flops[name] / 1e9,
            matmul_fraction=flops[name] / t / peak_rate,
        )
    result["_matmul_gflops"] = {"value": peak_rate / 1e9}
    return result


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.3g}"


def report(size: str, batch: int, text_len: int, result: dict) -> str:
    rate = result.pop("_matmul_gflops")["value"]
    ref = result["transformers"]
    lines = [
        f"## {size}: batch {batch} per source (3 x {batch} samples per step), text length {text_len}",
        f"matmul reference in this run (same device and dtype): {rate:.1f} GFLOP/s",
        "",
        "| model | step (s, median) | samples/s | x transformers | peak step memory (MiB) | GFLOP/step "
        "| achieved GFLOP/s | of matmul |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result.items():
        speedup = r["samples_per_s"] / ref["samples_per_s"]
        lines.append(
            f"| {name} | {r['step_s']:.3f} | {_num(r['samples_per_s'])} | {speedup:.2f} | {r['peak_mib']:.0f} "
            f"| {r['gflop']:.1f} | {r['gflop'] / r['step_s']:.1f} | {r['matmul_fraction']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "full", "both"], default="tiny")
    parser.add_argument("--batch", type=int, default=None, help="samples per source (default: tiny 32, full 2)")
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
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name(args.device)}")
    for size in ("tiny", "full") if args.size == "both" else (args.size,):
        full = size == "full"
        batch = args.batch or (2 if full else 32)
        text_len = args.text_len or (40 if full else 32)
        steps = args.steps or (3 if full else 20)
        backends = tuple(b for b in args.backends.split(",") if b)
        result = run(size, batch, text_len, steps, args.warmup, args.profile, args.device, args.dtype, backends)
        print()
        print(report(size, batch, text_len, result))


if __name__ == "__main__":
    main()
