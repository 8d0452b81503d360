"""FLAVA pretraining (Singh et al., CVPR 2022), single process or distributed.

    torchrun --standalone --nproc_per_node=2 recipes/flava/pretrain.py --config recipes/flava/configs/demo.yaml
    python recipes/flava/pretrain.py --config recipes/flava/configs/demo.yaml optim.total_steps=100
    python recipes/flava/pretrain.py --plot runs/demo        # plot + summary of a finished run

Features and the config keys that control them:

* model: ``preset`` (``tiny`` | ``full``) plus ``model.*`` overrides of :class:`FLAVAConfig`;
  the text vocabulary follows the tokenizer.
* data: the built-in dataset (``data.dataset: shapes``) or your files (``data.train_pairs``,
  ``data.val_pairs``, ``data.images``, ``data.text``: tar patterns / text files); tokenizer from
  ``data.tokenizer`` or trained on the text data (``data.vocab_size``); each step draws one
  source with ``data.pair_prob`` / ``image_prob`` / ``text_prob``; ``data.batch_size`` per rank,
  ``data.num_workers``; bad records skipped up to ``data.max_bad_fraction``.
* distribution: ``distributed`` = ``ddp`` | ``fsdp`` (FSDP2) | ``none``; gloo on CPU, NCCL on GPU.
* precision: ``precision`` = ``fp32`` | ``bf16`` (autocast; LayerNorm and softmax stay fp32) |
  ``fp16`` (autocast + gradient scaling, CUDA); ``activation_checkpointing``; ``compile``.
* optimisation: AdamW (``optim.lr``, ``weight_decay`` — none on norms, biases, embeddings,
  tokens and ``logit_scale`` — ``betas``), linear warmup then cosine (``optim.warmup_steps``,
  ``optim.total_steps``), ``optim.grad_accum``, ``optim.max_grad_norm``; the image tokenizer is
  frozen and not in the optimiser.
* image tokenizer (MIM targets): ``model.codebook.checkpoint`` = a dVAE trained with
  ``recipes/dalle/train_tokenizer.py`` (its vocabulary and input size then set the codebook's) or a
  DALL-E encoder; shards with cached ids (``python -m mmkit.tokenizers.cache``) are used
  automatically (``data.cached_tokens``), checked against the configured tokenizer, size and crop;
  ``model.pretraining.mim_target`` = ``tokens`` | ``pixels`` (normalised-pixel regression, no tokenizer).
* checkpoints: DCP every ``checkpoint.every`` steps, atomic, last ``checkpoint.keep`` kept,
  ``checkpoint.resume`` = ``auto`` | ``none`` | a path; final weights exported as safetensors and
  in transformers' FLAVA layout (``<run_dir>/final``).
* faults: a non-finite loss or gradient skips the update; ``max_nonfinite`` in a row stop the
  run; SIGTERM saves a checkpoint and exits cleanly.
* logging: progress bar (rank 0); every ``log_every`` steps per-objective losses, lr, logit
  scale, grad norm, samples/s and memory to ``metrics.jsonl`` and TensorBoard; at the end
  ``losses.png`` and ``summary.txt``.
* evaluation: every ``eval_every`` steps (and at the start and end), held-out losses of every
  objective and zero-shot image<->text retrieval R@1/5 on ``eval_samples`` held-out pairs.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from mmkit.data import (
    FLAVABatch,
    FLAVADataset,
    FLAVAImageTransform,
    ImageCollator,
    ImageTransformConfig,
    MixedBatches,
    PairCollator,
    TarShards,
    TextCollator,
    TextLines,
    make_loader,
    shapes_dataset,
)
from mmkit.eval import retrieval_recall
from mmkit.masking import BlockMaskGenerator, TokenMasker
from mmkit.models import FLAVAConfig, FLAVAForPreTraining, flava_model_for_pretraining, resolve_codebook_config
from mmkit.tokenizers import TextTokenizer, tokenizer_fingerprint, train_wordpiece
from mmkit.train import (
    CheckpointConfig,
    CheckpointManager,
    MetricsLogger,
    adamw_param_groups,
    parallelize,
    plot_run,
    recipe_arg_parser,
    rng_state,
    run_training,
    set_rng_state,
    setup_distributed,
    summarize_run,
    warmup_cosine_scheduler,
)
from mmkit.utils import config_to_dict
from mmkit.utils import load_config as load_recipe_config


@dataclass
class DataConfig:
    dataset: str = "shapes"  # "shapes" (built-in) or "files"
    train_pairs: list[str] = field(default_factory=list)
    val_pairs: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    tokenizer: str | None = None  # vocab.txt / tokenizer.json / directory; None: train on the text data
    vocab_size: int = 1000
    max_length: int = 32
    pair_prob: float = 0.70
    image_prob: float = 0.15
    text_prob: float = 0.15
    batch_size: int = 32  # per rank
    num_workers: int = 1
    itm_negative_prob: float = 0.1
    random_crop: bool = False
    max_bad_fraction: float = 0.01
    cached_tokens: bool = True  # use tokenizer ids cached in the shards when every sample has them


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 10000
    total_steps: int = 150000
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0


@dataclass
class PretrainConfig:
    run_dir: str = "runs/flava"
    seed: int = 0
    preset: str = "full"  # "tiny" | "full"
    model: dict[str, Any] = field(default_factory=dict)  # FLAVAConfig overrides
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: str = "ddp"
    precision: str = "fp32"
    activation_checkpointing: bool = False
    compile: bool = False
    log_every: int = 10
    eval_every: int = 1000
    eval_samples: int = 512
    eval_at_start: bool = True
    max_nonfinite: int = 5
    progress: bool = True


def load_config(path: str | None, overrides: list[str]) -> PretrainConfig:
    """YAML file, then ``key=value`` overrides (values parsed as YAML); unknown keys raise."""
    cfg = load_recipe_config(PretrainConfig, path, overrides)
    if cfg.preset not in ("tiny", "full"):
        raise ValueError(f"preset must be 'tiny' or 'full', got {cfg.preset!r}")
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {cfg.precision!r}")
    model_config(cfg)  # validates the model overrides now, not after the data is built
    return cfg


def model_config(cfg: PretrainConfig, vocab_size: int | None = None) -> FLAVAConfig:
    base = FLAVAConfig.tiny() if cfg.preset == "tiny" else FLAVAConfig()
    out = base.replace(**cfg.model)
    if vocab_size is not None:
        out = out.replace(**{"text.vocab_size": vocab_size})
    return resolve_codebook_config(out)  # a trained tokenizer sets the codebook sizes and input size


class FLAVAPretrainRecipe:
    """setup -> train (with evaluate and save_checkpoint) -> export; see the module docstring."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.step = 0
        self.stop_requested = False
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self.info = setup_distributed()
        torch.manual_seed(cfg.seed)
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        self._barrier()
        self._setup_data()
        self.model_cfg = model_config(cfg, self.tokenizer.vocab_size)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        model = flava_model_for_pretraining(self.model_cfg).to(self.info.device)
        self.raw_model: FLAVAForPreTraining = model
        self._check_cached_tokens(model)
        self.model = parallelize(
            model,
            self.info,
            cfg.distributed,
            activation_checkpointing=cfg.activation_checkpointing,
            compile=cfg.compile,
            bf16_params=cfg.precision == "bf16" and cfg.distributed == "fsdp",
        )
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            adamw_param_groups(self.raw_model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps
        )
        self.scheduler = warmup_cosine_scheduler(self.optimizer, o.warmup_steps, o.total_steps, o.min_lr_ratio)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.checkpoint.keep)
        self.metrics = MetricsLogger(self.run_dir, enabled=self.info.is_main)
        self._maybe_resume()
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _check_cached_tokens(self, model: FLAVAForPreTraining) -> None:
        """Cached ids must come from this run's tokenizer, input size and patch grid."""
        if not self.cached_tokens:
            return
        if model.image_tokenizer is None:
            raise ValueError("cached token ids need the tokenizer they came from: set model.codebook.checkpoint")
        cb, img = self.model_cfg.codebook, self.model_cfg.image
        grid = img.image_size // img.patch_size
        mine = tokenizer_fingerprint(model.image_tokenizer.encoder)
        for name, info in self.cached_tokens.items():
            problems = []
            if info.get("fingerprint") != mine:
                problems.append(f"tokenizer {info.get('fingerprint')} != configured {mine} "
                                f"(model.codebook.checkpoint={cb.checkpoint})")  # fmt: skip
            if info.get("image_size") != cb.image_size:
                problems.append(f"input size {info.get('image_size')} != codebook.image_size {cb.image_size}")
            if list(info.get("grid", [])) != [grid, grid]:
                problems.append(f"token grid {info.get('grid')} != patch grid {[grid, grid]}")
            if problems:
                raise ValueError(
                    f"the cached token ids in {name} do not fit this run: {'; '.join(problems)}. Re-run "
                    "python -m mmkit.tokenizers.cache with the configured tokenizer, or set data.cached_tokens=false"
                )
        if self.info.is_main:
            print(f"cached tokenizer ids in {', '.join(self.cached_tokens)}: the codebook is skipped there", flush=True)

    def _barrier(self) -> None:
        if self.info.world_size > 1:
            dist.barrier()

    def _setup_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        if d.dataset == "shapes":
            paths = None
            if self.info.is_main:
                paths = shapes_dataset()
            self._barrier()
            paths = shapes_dataset()  # generated by rank 0, listed by everyone
            train_pairs, val_pairs, images, text = paths.train_pairs, paths.val_pairs, paths.images, paths.text
        elif d.dataset == "files":
            train_pairs, val_pairs, images, text = d.train_pairs, d.val_pairs, d.images, d.text
            if not train_pairs:
                raise ValueError("data.dataset=files needs data.train_pairs (tar shard patterns)")
        else:
            raise ValueError(f"data.dataset must be 'shapes' or 'files', got {d.dataset!r}")
        if d.tokenizer:
            self.tokenizer = TextTokenizer.from_pretrained(d.tokenizer, max_length=d.max_length)
        else:
            tok_dir = self.run_dir / "tokenizer"
            if self.info.is_main and not (tok_dir / "tokenizer.json").exists():
                sources = text or []
                if not sources:
                    raise ValueError("no data.tokenizer and no text files to train one on: set data.tokenizer")
                train_wordpiece(sources, d.vocab_size, min_frequency=1, max_length=d.max_length).save(tok_dir)
            self._barrier()
            self.tokenizer = TextTokenizer.from_pretrained(tok_dir, max_length=d.max_length)
        mcfg = model_config(cfg, self.tokenizer.vocab_size)
        grid = mcfg.image.image_size // mcfg.image.patch_size
        transform = FLAVAImageTransform(
            ImageTransformConfig(
                image_size=mcfg.image.image_size,
                # pixel-regression MIM needs no tokenizer input
                codebook_image_size=0 if mcfg.pretraining.mim_target == "pixels" else mcfg.codebook.image_size,
                random_crop=d.random_crop,
            )
        )
        # Shards with cached tokenizer ids (python -m mmkit.tokenizers.cache) skip the codebook: the
        # encoder image then needs no tokenizer input, and the ids are checked once the model exists.
        no_codebook = FLAVAImageTransform(replace(transform.config, codebook_image_size=0))
        self.cached_tokens: dict[str, dict] = {}

        def image_dataset(source: TarShards, kind: str) -> FLAVADataset:
            cached = source.token_info is not None and d.cached_tokens and mcfg.pretraining.mim_target == "tokens"
            if cached:
                if d.random_crop:
                    raise ValueError(
                        f"{source.name}: cached token ids were made from a centre crop; with data.random_crop=true "
                        "the encoder image would show another crop than its targets. Set data.random_crop=false "
                        "or data.cached_tokens=false (tokenize in the loop)"
                    )
                self.cached_tokens[source.name] = source.token_info
            return FLAVADataset(source, kind, no_codebook if cached else transform, tok if kind == "pair" else None,
                                seed=cfg.seed, image_tokens=cached)  # fmt: skip

        self.block_masker = BlockMaskGenerator.flava(grid)
        tok = self.tokenizer
        self.token_masker = TokenMasker(tok.vocab_size, tok.mask_token_id, tok.special_token_ids, tok.pad_token_id)
        self.transform = transform
        info = self.info
        common = dict(rank=info.rank, world_size=info.world_size, seed=cfg.seed, num_workers=d.num_workers)
        loaders = {}
        pair_ds = image_dataset(TarShards(train_pairs, name="pairs"), "pair")
        pair_collate = PairCollator(self.block_masker, self.token_masker, d.itm_negative_prob)
        loaders["pairs"] = (make_loader(pair_ds, pair_collate, d.batch_size, **common), d.pair_prob)
        if images and d.image_prob > 0:
            ds = image_dataset(TarShards(images, require_text=False, name="images"), "image")
            loaders["images"] = (
                make_loader(ds, ImageCollator(self.block_masker), d.batch_size, **common),
                d.image_prob,
            )
        if text and d.text_prob > 0:
            ds = FLAVADataset(TextLines(text, name="text"), "text", tokenizer=tok, seed=cfg.seed)
            loaders["text"] = (make_loader(ds, TextCollator(self.token_masker), d.batch_size, **common), d.text_prob)
        self.stream = MixedBatches(loaders, seed=cfg.seed, max_bad_fraction=d.max_bad_fraction)
        self.val_pairs = val_pairs

    def _maybe_resume(self) -> None:
        r = self.cfg.checkpoint.resume
        path = None
        if r == "auto":
            path = self.ckpt.latest()
        elif r not in ("none", "", None):
            path = Path(r)
        if path is None:
            return
        extra = self.ckpt.load(path, self.model, self.optimizer)
        self.scheduler.load_state_dict(extra["scheduler"])
        self.stream.load_state_dict(extra["data"])
        set_rng_state(extra["rng"])
        self.step = extra["step"]
        self.nonfinite_total = extra.get("nonfinite_total", 0)
        if self.info.is_main:
            print(f"resumed from {path} at step {self.step}", flush=True)

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    # -- checkpointing ---------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        extra = {
            "scheduler": self.scheduler.state_dict(),
            "data": self.stream.state_dict(),
            "rng": rng_state(),
            "nonfinite_total": self.nonfinite_total,
        }
        return self.ckpt.save(self.step, self.model, self.optimizer, extra)

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out losses of every objective and retrieval R@1/5 (the same data on every rank)."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        was_training = model.training
        model.eval()
        self.raw_model.contrastive.gather = False
        try:
            return self._evaluate(model)
        finally:
            self.raw_model.contrastive.gather = True
            model.train(was_training)

    def _evaluate(self, model) -> dict[str, float]:
        d = self.cfg.data
        ds = FLAVADataset(TarShards(self.val_pairs, name="val"), "pair", self.transform, self.tokenizer, seed=1)
        n = min(self.cfg.eval_samples, len(ds))
        pair_collate = PairCollator(self.block_masker, self.token_masker, d.itm_negative_prob, seed=1)
        image_collate, text_collate = ImageCollator(self.block_masker, seed=2), TextCollator(self.token_masker, seed=3)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        img_emb, txt_emb = [], []
        for start in range(0, n, d.batch_size):
            samples = [ds[(0, 0, i)] for i in range(start, min(n, start + d.batch_size))]
            samples = [s for s in samples if isinstance(s, dict)]
            for collate in (pair_collate, image_collate, text_collate):
                batch = collate(samples).to(self.info.device)
                with self._autocast():
                    out = model(**batch.model_inputs())
                for k, v in out.losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(samples)
                    counts[k] = counts.get(k, 0) + len(samples)
                if batch.kind == "pair":  # retrieval over the matched pairs (clean inputs)
                    matched = batch.itm_labels.bool()
                    img_emb.append(out.image_embedding[matched].float().cpu())
                    txt_emb.append(out.text_embedding[matched].float().cpu())
        metrics = {f"loss/{k}": sums[k] / counts[k] for k in sums}
        recall = retrieval_recall(torch.cat(img_emb), torch.cat(txt_emb), ks=(1, 5))
        metrics.update({f"retrieval/{k}": v for k, v in recall.items()})
        metrics["retrieval/chance_r1"] = 1.0 / len(torch.cat(img_emb))
        return metrics

    # -- training -----------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
        return torch.autocast(self.info.device.type, dtype=dtype)

    def _stop_everywhere(self) -> bool:
        flag = torch.tensor([1.0 if self.stop_requested else 0.0])
        if self.info.world_size > 1:
            dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def train(self) -> None:
        cfg = self.cfg
        o = cfg.optim
        if self.step == 0 and cfg.eval_at_start:
            self.metrics.log(0, self.evaluate(), split="eval")
        progress = None
        if self.info.is_main and cfg.progress:
            from tqdm import tqdm

            # in a log file (not a terminal) redraw rarely, so logs stay readable
            interval = 0.1 if sys.stderr.isatty() else 30.0
            progress = tqdm(total=o.total_steps, initial=self.step, desc="pretrain", dynamic_ncols=True,
                            mininterval=interval)  # fmt: skip
        window: dict[str, list[float]] = {}
        samples_in_window, t_window = 0, time.perf_counter()
        self.model.train()
        while self.step < o.total_steps:
            losses_this_step: dict[str, float] = {}
            total = 0.0
            for micro in range(o.grad_accum):
                batch: FLAVABatch = next(self.stream).to(self.info.device)
                sync = micro == o.grad_accum - 1 or not hasattr(self.model, "no_sync")
                with nullcontext() if sync else self.model.no_sync(), self._autocast():
                    out = self.model(**batch.model_inputs())
                    loss = out.loss / o.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                total += float(loss.detach())
                for k, v in out.losses.items():
                    losses_this_step[k] = float(v.detach())
                samples_in_window += len(batch)
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            params = [p for p in self.raw_model.parameters() if p.requires_grad]
            max_norm = o.max_grad_norm if o.max_grad_norm else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            grad_norm = float(grad_norm)
            finite = math.isfinite(grad_norm) and math.isfinite(total)
            if self.info.world_size > 1:  # every rank must take the same decision
                flag = torch.tensor([0.0 if finite else 1.0])
                dist.all_reduce(flag)
                finite = flag.item() == 0
            if finite:
                if self.scaler:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.raw_model.model.clamp_logit_scale()
                self.nonfinite_in_row = 0
            else:
                self.nonfinite_in_row += 1
                self.nonfinite_total += 1
                print(f"step {self.step}: non-finite loss or gradient, update skipped", file=sys.stderr, flush=True)
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            for k, v in losses_this_step.items():
                window.setdefault(k, []).append(v)
            window.setdefault("total", []).append(total)
            if self.nonfinite_in_row >= cfg.max_nonfinite:
                raise RuntimeError(
                    f"{self.nonfinite_in_row} non-finite steps in a row (last at step {self.step}); "
                    f"stopping. The last good checkpoint is {self.ckpt.latest()}. Lower optim.lr or check the data."
                )
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{total:.3f}", kind=batch.source)
            if self.step % cfg.log_every == 0 or self.step == o.total_steps:
                dt = time.perf_counter() - t_window
                rec = {f"loss/{k}": sum(v) / len(v) for k, v in window.items()}
                rec.update(
                    lr=self.scheduler.get_last_lr()[0],
                    logit_scale=_scalar(self.raw_model.model.logit_scale),
                    grad_norm=grad_norm,
                    samples_per_s=samples_in_window * self.info.world_size / max(dt, 1e-9),
                    memory_mib=_memory_mib(self.info.device),
                    nonfinite_total=self.nonfinite_total,
                )
                self.metrics.log(self.step, rec)
                window, samples_in_window, t_window = {}, 0, time.perf_counter()
            t_pause = time.perf_counter()  # evaluation and checkpoints do not count against samples/s
            if self.step % cfg.eval_every == 0 and self.step < o.total_steps:
                self.metrics.log(self.step, self.evaluate(), split="eval")
            if self.step % cfg.checkpoint.every == 0 or self.step == o.total_steps:
                self.save_checkpoint()
            t_window += time.perf_counter() - t_pause
            if os.environ.get("MMKIT_FAULT_KILL_AT_STEP") == str(self.step):  # fault injection for tests
                os.kill(os.getpid(), signal.SIGKILL)
            if self._stop_everywhere():
                if self.step % cfg.checkpoint.every != 0:
                    self.save_checkpoint()
                if self.info.is_main:
                    print(f"SIGTERM: checkpoint saved at step {self.step}, exiting", flush=True)
                if progress is not None:
                    progress.close()
                return
        if progress is not None:
            progress.close()
        self.metrics.log(self.step, self.evaluate(), split="eval")
        self.export()

    # -- export -------------------------------------------------------------------------------
    def export(self) -> None:
        """Final weights: ``final/model.safetensors`` (mmkit names) and ``final/hf`` (transformers)."""
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from mmkit.convert import save_hf_checkpoint

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.info.is_main:
            out = self.run_dir / "final"
            out.mkdir(parents=True, exist_ok=True)
            tensors = {k: v.detach().contiguous().cpu() for k, v in full.items()}
            save_file(tensors, str(out / "model.safetensors"))
            (out / "config.json").write_text(json.dumps(self.model_cfg.to_dict(), indent=2))
            fresh = flava_model_for_pretraining(self.model_cfg)
            fresh.load_state_dict(tensors)
            save_hf_checkpoint(fresh, out / "hf")
            self.tokenizer.save(out / "tokenizer")
            plot_run(self.run_dir)
            summary = summarize_run(self.run_dir) + f"\nnon-finite steps skipped: {self.nonfinite_total}\n"
            (self.run_dir / "summary.txt").write_text(summary)
            print(summary, flush=True)
        self._barrier()


def _scalar(t: torch.Tensor) -> float:
    t = t.detach()
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)


def _memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = recipe_arg_parser(__doc__)
    parser.add_argument("--plot", metavar="RUN_DIR", help="plot and summarise a finished run, then exit")
    args = parser.parse_args(argv)
    if args.plot:
        print(f"wrote {plot_run(args.plot)}")
        print(summarize_run(args.plot))
        return 0
    return run_training(FLAVAPretrainRecipe(load_config(args.config, args.overrides)))


if __name__ == "__main__":
    sys.exit(main())
