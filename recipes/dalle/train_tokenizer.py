"""Train your own image tokenizer: a DALL-E-style discrete VAE (mmkit.tokenizers.DiscreteVAE).

    python recipes/dalle/train_tokenizer.py --config recipes/dalle/configs/shapes.yaml
    torchrun --standalone --nproc_per_node=2 recipes/dalle/train_tokenizer.py --config ... key=value

Then pretrain FLAVA on its tokens (vocabulary and codebook input size follow the tokenizer):

    torchrun ... recipes/flava/pretrain.py --config recipes/flava/configs/demo.yaml \\
        model.codebook.checkpoint=runs/dvae-shapes/final

Features and their config keys:

* data: ``data.dataset`` = ``shapes`` (the built-in pictures: paired and unpaired images) or
  ``files`` (``data.images``: tar shard patterns or image folders); ``data.image_size`` (the
  tokenizer is convolutional: train at the size it will tokenize, e.g. 112 for FLAVA at 224²);
  ``data.random_crop``; held-out images for evaluation (``data.val_images``, default the shapes
  held-out pairs). Loading is deterministic and exactly resumable (``mmkit.data.make_loader``).
* model: ``model.*`` = encoder/decoder sizes (``hidden_size``, ``vocab_size``, ``num_groups``,
  ``blocks_per_group``, ``init_size``).
* objective (DALL-E, Ramesh et al. 2021): Gumbel-softmax relaxation, temperature cosine-annealed from
  ``objective.temperature_start`` to ``objective.temperature_end`` over ``objective.temperature_steps``
  (``objective.straight_through`` decodes hard codes); KL to the uniform prior with weight raised
  from 0 to ``objective.kl_weight`` over ``objective.kl_warmup_steps``; reconstruction
  ``objective.recon_loss`` = ``logit_laplace`` (DALL-E's likelihood) or ``gaussian`` (squared error
  over ``2 objective.pixel_sigma**2``: the simpler loss, which trains much faster at small scale).
* optimisation: AdamW (``optim.*``), warmup + cosine, gradient clipping; DDP across ranks.
* logging (rank 0): loss, NLL and KL, temperature, KL weight, reconstruction MSE with hard codes,
  codebook perplexity / used fraction / dead codes over each ``log_every`` window (all ranks'
  codes), to ``metrics.jsonl`` + TensorBoard; held-out MSE and usage every ``eval_every``; an image
  grid PNG (originals above, reconstructions from hard codes below) every ``image_every`` steps
  and at the end (``recon_stepNNNNNNNN.png``).
* checkpoints: DCP every ``checkpoint.every`` steps, atomic, ``checkpoint.resume=auto``;
  SIGTERM saves and exits; the export ``<run_dir>/final`` (``mmkit.tokenizers.save_dvae``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from mmkit.data import (
    FLAVAImageTransform,
    ImageFolder,
    ImageTransformConfig,
    TarShards,
    expand_paths,
    make_loader,
    shapes_dataset,
)
from mmkit.data.loader import FLAVADataset
from mmkit.data.sources import Source, decode_image
from mmkit.tokenizers import DalleDecoder, DalleEncoder, DiscreteVAE, codebook_usage, save_dvae
from mmkit.tokenizers.dvae import gumbel_temperature, kl_weight_schedule
from mmkit.train import (
    CheckpointConfig,
    CheckpointManager,
    MetricsLogger,
    adamw_param_groups,
    parallelize,
    plot_run,
    rng_state,
    run_recipe,
    set_rng_state,
    setup_distributed,
    warmup_cosine_scheduler,
)
from mmkit.utils import config_to_dict
from mmkit.utils import load_config as load_recipe_config

logger = logging.getLogger("mmkit.train_tokenizer")


@dataclass
class DataConfig:
    dataset: str = "shapes"  # "shapes" (built-in) or "files"
    images: list[str] = field(default_factory=list)  # tar patterns or image folders (dataset=files)
    val_images: list[str] = field(default_factory=list)  # default: the shapes held-out pairs
    image_size: int = 32
    random_crop: bool = False
    batch_size: int = 64  # per rank
    num_workers: int = 1


@dataclass
class ModelConfig:
    hidden_size: int = 32
    vocab_size: int = 512
    num_groups: int = 4
    blocks_per_group: int = 1
    init_size: int = 32
    channels_last: bool = True  # NHWC convolutions: 1.6x faster steps on this CPU (benchmarks/RESULTS.md)


@dataclass
class ObjectiveConfig:
    recon_loss: str = "logit_laplace"  # DALL-E's; "gaussian": squared error / (2 pixel_sigma^2)
    pixel_sigma: float = 0.1
    temperature_start: float = 1.0
    temperature_end: float = 1 / 16
    temperature_steps: int = 2000
    kl_weight: float = 6.6
    kl_warmup_steps: int = 500
    straight_through: bool = False  # decode hard codes in training (gradients through the relaxation)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    total_steps: int = 2000
    max_grad_norm: float | None = 1.0


@dataclass
class TokenizerTrainConfig:
    run_dir: str = "runs/dvae"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: str = "ddp"
    log_every: int = 50
    eval_every: int = 500
    eval_samples: int = 512
    image_every: int = 500
    progress: bool = True


def load_config(path: str | None, overrides: list[str]) -> TokenizerTrainConfig:
    """YAML file, then ``key=value`` overrides; unknown keys raise naming the nearest one."""
    cfg = load_recipe_config(TokenizerTrainConfig, path, overrides)
    if cfg.data.dataset not in ("shapes", "files"):
        raise ValueError(f"data.dataset must be 'shapes' or 'files', got {cfg.data.dataset!r}")
    if cfg.objective.recon_loss not in ("logit_laplace", "gaussian"):
        raise ValueError(
            f"objective.recon_loss must be 'logit_laplace' or 'gaussian', got {cfg.objective.recon_loss!r}"
        )
    if cfg.data.dataset == "files" and not cfg.data.images:
        raise ValueError("data.dataset=files needs data.images (tar shard patterns or image folders)")
    down = 2 ** (cfg.model.num_groups - 1)
    if cfg.data.image_size % down:
        raise ValueError(f"data.image_size {cfg.data.image_size} must be a multiple of the downsampling {down}")
    return cfg


def image_source(paths: list[str], name: str) -> Source:
    """Tar shard patterns, or image folders (one folder only; a list of folders is not supported)."""
    folders = [p for p in paths if Path(p).is_dir()]
    if folders:
        if len(paths) != 1:
            raise ValueError(f"give one image folder or tar patterns, not a mix: {paths}")
        return ImageFolder(folders[0], name=name)
    return TarShards(expand_paths(paths), name=name)


def stack_pixels(samples: list[dict[str, Any]], generator: torch.Generator | None = None) -> torch.Tensor:
    """Collator: the dVAE pixels of each sample, ``(B, 3, S, S)``."""
    return torch.stack([s["codebook_image"] for s in samples])


class TokenizerRecipe:
    def __init__(self, cfg: TokenizerTrainConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.step = 0
        self.stop_requested = False
        self.skipped_total = 0

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, d, m = self.cfg, self.cfg.data, self.cfg.model
        self.info = setup_distributed()
        torch.manual_seed(cfg.seed)
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        if d.dataset == "shapes":
            paths = shapes_dataset()
            train = TarShards([*paths.train_pairs, *paths.images], name="images")
            val = TarShards(paths.val_pairs, name="val")
        else:
            train = image_source(d.images, "images")
            val = image_source(d.val_images, "val") if d.val_images else None
        tcfg = ImageTransformConfig(image_size=d.image_size, codebook_image_size=d.image_size,
                                    random_crop=d.random_crop)  # fmt: skip
        self.transform = FLAVAImageTransform(tcfg)
        dataset = FLAVADataset(train, "image", self.transform, seed=cfg.seed)
        self.loader = make_loader(dataset, stack_pixels, d.batch_size, rank=self.info.rank,
                                  world_size=self.info.world_size, seed=cfg.seed,
                                  num_workers=d.num_workers)  # fmt: skip
        self.stream = iter(self.loader)
        self.val_pixels = self._val_pixels(val) if val is not None else None
        sizes = dict(hidden_size=m.hidden_size, vocab_size=m.vocab_size, num_groups=m.num_groups,
                     blocks_per_group=m.blocks_per_group)  # fmt: skip
        model = DiscreteVAE(DalleEncoder(**sizes), DalleDecoder(**sizes, init_size=m.init_size))
        self.memory_format = torch.channels_last if m.channels_last else torch.contiguous_format
        self.raw_model = model.to(self.info.device, memory_format=self.memory_format)
        self.model = parallelize(self.raw_model, self.info, cfg.distributed)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(adamw_param_groups(self.raw_model, o.weight_decay), lr=o.lr)
        self.scheduler = warmup_cosine_scheduler(self.optimizer, o.warmup_steps, o.total_steps)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.checkpoint.keep)
        self.metrics = MetricsLogger(self.run_dir, enabled=self.info.is_main)
        self.window = torch.zeros(m.vocab_size, dtype=torch.long)  # code counts of this log window
        self._maybe_resume()
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _val_pixels(self, source: Source) -> torch.Tensor:
        n = min(self.cfg.eval_samples, len(source))
        center = FLAVAImageTransform(ImageTransformConfig(self.cfg.data.image_size, self.cfg.data.image_size))
        return torch.stack([center(decode_image(source[i]))["codebook_image"] for i in range(n)])

    def _maybe_resume(self) -> None:
        r = self.cfg.checkpoint.resume
        path = self.ckpt.latest() if r == "auto" else (Path(r) if r not in ("none", "") else None)
        if path is None:
            return
        extra = self.ckpt.load(path, self.model, self.optimizer)
        self.scheduler.load_state_dict(extra["scheduler"])
        self.loader.load_state_dict(extra["data"])
        self.stream = iter(self.loader)
        set_rng_state(extra["rng"])
        self.window = extra["window"]
        self.step = extra["step"]
        if self.info.is_main:
            print(f"resumed from {path} (step {self.step})", flush=True)

    def save_checkpoint(self) -> Path:
        extra = {"scheduler": self.scheduler.state_dict(), "data": self.loader.state_dict(), "rng": rng_state(),
                 "window": self.window}  # fmt: skip
        return self.ckpt.save(self.step, self.model, self.optimizer, extra)

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    def _any_rank(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.info.device)
        if self.info.world_size > 1:
            dist.all_reduce(t)
        return bool(t.item() > 0)

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out reconstruction MSE (``[0, 1]`` pixels, hard codes) and codebook usage."""
        if self.val_pixels is None:
            return {}
        model = self.raw_model
        mse, ids = 0.0, []
        for s in range(0, len(self.val_pixels), 256):
            x = self.val_pixels[s : s + 256].to(self.info.device)
            ids.append(model.encoder(x).argmax(1).cpu())
            recon = model.decode_ids(ids[-1].to(self.info.device))
            mse += ((recon - _to_unit(x)) ** 2).mean(dim=(1, 2, 3)).sum().item()
        usage = codebook_usage(torch.cat(ids), model.vocab_size)
        return {"loss/recon_mse": mse / len(self.val_pixels), **{f"usage/{k}": v for k, v in usage.items()}}

    @torch.no_grad()
    def save_grid(self) -> Path | None:
        """Originals (top row) above their reconstructions from hard codes (bottom row)."""
        if not self.info.is_main or self.val_pixels is None:
            return None
        from torchvision.utils import save_image

        x = self.val_pixels[:8].to(self.info.device)
        recon = self.raw_model.reconstruct(x)
        path = self.run_dir / f"recon_step{self.step:08d}.png"
        save_image(torch.cat([_to_unit(x), recon]).cpu(), str(path), nrow=len(x), padding=2)
        return path

    # -- training -----------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        cfg, o, sch = self.cfg, self.cfg.optim, self.cfg.objective
        if self.step == 0:
            start = self.evaluate()
            self.metrics.log(0, start, split="eval")
            self.save_grid()
        progress = tqdm(total=o.total_steps, initial=self.step, desc="dvae", disable=not (self.info.is_main
                        and cfg.progress), mininterval=1.0 if sys.stderr.isatty() else 30.0)  # fmt: skip
        self.model.train()
        while self.step < o.total_steps:
            batch, skipped = next(self.stream)
            if skipped:  # unreadable images: counted, named, never silently dropped
                self.skipped_total += len(skipped)
                for s in skipped[:3]:
                    logger.warning("skipped %s/%s: %s", s.source, s.key, s.reason)
            if batch is None:
                continue
            x = batch.to(self.info.device, memory_format=self.memory_format)
            tau = gumbel_temperature(self.step, sch.temperature_start, sch.temperature_end, sch.temperature_steps)
            beta = kl_weight_schedule(self.step, sch.kl_weight, sch.kl_warmup_steps)
            out = self.model(x, temperature=tau, kl_weight=beta, straight_through=sch.straight_through,
                             recon_loss=sch.recon_loss, pixel_sigma=sch.pixel_sigma)  # fmt: skip
            out.loss.backward()
            params = [p for p in self.raw_model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm or float("inf"))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            progress.update(1)
            self.window += torch.bincount(out.ids.flatten().cpu(), minlength=self.window.numel())
            if self.step % cfg.log_every == 0:
                self._log_train(out, x, tau, beta, float(grad_norm))
                progress.set_postfix(loss=f"{out.loss.item():.4f}", refresh=False)
            if self.step % cfg.eval_every == 0 and self.step < o.total_steps:
                self.metrics.log(self.step, self.evaluate(), split="eval")
            if self.step % cfg.image_every == 0 and self.step < o.total_steps:
                self.save_grid()
            if self.step % cfg.checkpoint.every == 0:
                self.save_checkpoint()
            if os.environ.get("MMKIT_FAULT_KILL_AT_STEP") == str(self.step):  # fault injection for tests
                os.kill(os.getpid(), signal.SIGKILL)
            if self._any_rank(self.stop_requested):
                if self.step % cfg.checkpoint.every:
                    self.save_checkpoint()
                if self.info.is_main:
                    print(f"SIGTERM: checkpoint saved at step {self.step}, exiting", flush=True)
                return {}
        progress.close()
        final = self.evaluate()
        self.metrics.log(self.step, final, split="eval")
        self.save_grid()
        if self.info.is_main:
            save_dvae(self.raw_model, self.run_dir / "final", image_size=cfg.data.image_size)
            plot_run(self.run_dir)
            print(f"final: {final}\nexported {self.run_dir / 'final'}", flush=True)
        if self.info.world_size > 1:
            dist.barrier()
        return final

    def _log_train(self, out, x: torch.Tensor, tau: float, beta: float, grad_norm: float) -> None:
        window = self.window.to(self.info.device)
        if self.info.world_size > 1:
            dist.all_reduce(window)
        counts = window.cpu()
        with torch.no_grad():
            recon = self.raw_model.decode_ids(out.ids)
            mse = ((recon - _to_unit(x)) ** 2).mean().item()
        ids = torch.repeat_interleave(torch.arange(counts.numel()), counts)
        usage = codebook_usage(ids, counts.numel())
        subpixels = x[0].numel()
        self.metrics.log(self.step, {
            "loss/total": out.loss.item(), "loss/nll_per_subpixel": out.nll.item() / subpixels,
            "loss/kl_per_token": out.kl.item() / out.ids[0].numel(), "loss/recon_mse": mse,
            "temperature": tau, "kl_weight": beta, "data/skipped_total": self.skipped_total,
            "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0],
            **{f"usage/{k}": v for k, v in usage.items()}})  # fmt: skip
        self.window.zero_()


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """dVAE pixels (``0.8 x + 0.1``) back to ``[0, 1]``."""
    return ((x - 0.1) / 0.8).clamp(0, 1)


def main(argv: list[str] | None = None) -> int:
    return run_recipe(TokenizerRecipe, load_config, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
