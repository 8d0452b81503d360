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
  held-out pairs). Tar shards are streamed (``data.streaming``, default; local or ``s3://`` /
  ``gs://`` / ``http(s)://`` with ``data.storage_options``; a ``data.shuffle_buffer`` window per
  worker); folders, or ``data.streaming=false``, are indexed. Either way loading is deterministic
  and exactly resumable.
* model: ``model.*`` = encoder/decoder sizes (``hidden_size``, ``vocab_size``, ``num_groups``,
  ``blocks_per_group``, ``init_size``).
* objective (DALL-E, Ramesh et al. 2021): Gumbel-softmax relaxation, temperature cosine-annealed from
  ``objective.temperature_start`` to ``objective.temperature_end`` over ``objective.temperature_steps``
  (``objective.straight_through`` decodes hard codes); KL to the uniform prior with weight raised
  from 0 to ``objective.kl_weight`` over ``objective.kl_warmup_steps``; reconstruction
  ``objective.recon_loss`` = ``logit_laplace`` (DALL-E's likelihood) or ``gaussian`` (squared error
  over ``2 objective.pixel_sigma**2``: the simpler loss, which trains much faster at small scale).
* runtime (``mmkit.train``, shared with pretraining): AdamW, warmup + cosine, clipping and
  accumulation (``optim.*``), ``precision`` = ``fp32`` | ``bf16`` | ``fp16``, ``distributed`` =
  ``ddp`` | ``fsdp`` | ``none``, non-finite steps skipped and bounded by ``max_nonfinite``.
* logging (rank 0): loss, NLL and KL, temperature, KL weight, reconstruction MSE with hard codes,
  codebook perplexity / used fraction / dead codes over each ``log_every`` window (all ranks'
  codes), to ``metrics.jsonl`` + TensorBoard; held-out MSE and usage every ``eval_every``; an image
  grid PNG (originals above, reconstructions from hard codes below) every ``image_every`` steps
  and at the end (``recon_stepNNNNNNNN.png``).
* checkpoints: DCP every ``checkpoint.every`` steps, atomic, ``checkpoint.resume`` = ``auto`` |
  ``none`` | a path (a changed model, data or batch size is refused, naming the field); SIGTERM
  saves and exits; the export ``<run_dir>/final`` (``mmkit.tokenizers.save_dvae``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmkit.data import (
    ImageFolder,
    ImageTransform,
    ImageTransformConfig,
    LoaderOptions,
    MixedBatches,
    SampleDataset,
    Source,
    TarShards,
    decode_image,
    expand_paths,
    make_loader,
    make_stream_loader,
    shapes_dataset,
)
from mmkit.tokenizers import (
    DalleDecoder,
    DalleEncoder,
    DiscreteVAE,
    codebook_usage,
    gumbel_temperature,
    kl_weight_schedule,
    save_dvae,
)
from mmkit.train import (
    PRECISIONS,
    CheckpointConfig,
    LogConfig,
    MetricsLogger,
    OptimConfig,
    PerfConfig,
    PerfMeter,
    TrainingRecipe,
    full_parameters,
    full_state_dict,
    loop_options,
    parallelize,
    plot_run,
    prepare_training,
    run_recipe,
    start_run,
    train_loop,
)
from mmkit.utils import (
    MAX_SAMPLE_BYTES,
    InputError,
    at_least,
    choice,
    config_to_dict,
    fraction,
    load_strict,
    positive,
    set_sample_limit,
)
from mmkit.utils import load_config as load_recipe_config


@dataclass
class DataConfig:
    dataset: str = choice("shapes", "files")  # "shapes" (built-in) or "files"
    images: list[str] = field(default_factory=list)  # tar patterns or image folders (dataset=files)
    val_images: list[str] = field(default_factory=list)  # default: the shapes held-out pairs
    image_size: int = at_least(1, 32)
    random_crop: bool = False
    batch_size: int = at_least(1, 64)  # per rank
    num_workers: int = at_least(0, 1)
    max_bad_fraction: float = fraction(0.01)
    max_sample_bytes: int = at_least(1, MAX_SAMPLE_BYTES)  # the largest sample file read; larger: named skips
    streaming: bool = True  # tar shards read front to back (local or s3:// gs:// http(s)://); false: indexed
    shuffle_buffer: int = at_least(1, 1000)  # streaming: samples per shuffle window per data worker
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options, e.g. {endpoint_url: ...}


@dataclass
class ModelConfig:
    hidden_size: int = at_least(1, 32)
    vocab_size: int = at_least(2, 512)
    num_groups: int = at_least(1, 4)
    blocks_per_group: int = at_least(1, 1)
    init_size: int = at_least(1, 32)
    channels_last: bool = True  # NHWC convolutions: 1.6x faster steps on this CPU (benchmarks/RESULTS.md)


@dataclass
class ObjectiveConfig:
    recon_loss: str = choice("logit_laplace", "gaussian")  # DALL-E's; "gaussian": squared error / (2 sigma^2)
    pixel_sigma: float = positive(0.1)
    temperature_start: float = positive(1.0)
    temperature_end: float = positive(1 / 16)
    temperature_steps: int = at_least(1, 2000)
    kl_weight: float = at_least(0, 6.6)
    kl_warmup_steps: int = at_least(0, 500)
    straight_through: bool = False  # decode hard codes in training (gradients through the relaxation)


@dataclass
class TokenizerTrainConfig:
    run_dir: str = "runs/dvae"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=100, total_steps=2000))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: str = choice("ddp", "fsdp", "none")
    precision: str = choice(*PRECISIONS)
    log_every: int = at_least(1, 50)
    eval_every: int = at_least(1, 500)
    eval_samples: int = at_least(1, 512)
    image_every: int = at_least(1, 500)
    max_nonfinite: int = at_least(1, 5)
    progress: bool = True
    log: LogConfig = field(default_factory=LogConfig)  # Weights & Biases (log.wandb) beside metrics.jsonl
    perf: PerfConfig = field(default_factory=PerfConfig)  # the device peak perf/mfu is measured against


FROZEN = (
    "seed",
    "model",
    "optim.grad_accum",
    *(
        f"data.{k}"
        for k in (
            "dataset",
            "images",
            "image_size",
            "random_crop",
            "batch_size",
            "num_workers",
            "streaming",
            "shuffle_buffer",
        )
    ),
)


def frozen_fields(cfg) -> tuple[str, ...]:
    """:data:`FROZEN`, except that streamed data may change its number of workers on resume (the rest
    of each begun epoch is dealt to the new workers)."""
    return tuple(f for f in FROZEN if not (cfg.data.streaming and f == "data.num_workers"))


def load_config(path: str | None, overrides: list[str]) -> TokenizerTrainConfig:
    """YAML file, then ``key=value`` overrides; unknown keys and bad values raise, naming them."""
    cfg = load_recipe_config(TokenizerTrainConfig, path, overrides, dict_fields=())
    if cfg.data.dataset == "files" and not cfg.data.images:
        raise InputError("data.dataset=files needs data.images (tar shard patterns or image folders)")
    down = 2 ** (cfg.model.num_groups - 1)
    if cfg.data.image_size % down:
        raise InputError(f"data.image_size {cfg.data.image_size} must be a multiple of the downsampling {down}")
    return cfg


def image_source(paths: list[str], name: str) -> Source:
    """Tar shard patterns, or image folders (one folder only; a list of folders is not supported)."""
    folders = [p for p in paths if Path(p).is_dir()]
    if folders:
        if len(paths) != 1:
            raise InputError(f"give one image folder or tar patterns, not a mix: {paths}")
        return ImageFolder(folders[0], name=name)
    return TarShards(expand_paths(paths), require_text=False, name=name)


def stack_pixels(samples: list[dict[str, Any]], generator: torch.Generator | None = None) -> torch.Tensor:
    """Collator: the dVAE pixels of each sample, ``(B, 3, S, S)``."""
    return torch.stack([s["codebook_image"] for s in samples])


@dataclass
class CodeCounts:
    """How often each code was chosen since the last log step (a checkpointed component)."""

    counts: torch.Tensor

    def state_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts.copy_(state["counts"])


class TokenizerRecipe(TrainingRecipe):
    def __init__(self, cfg: TokenizerTrainConfig) -> None:
        self.cfg = cfg

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, m = self.cfg, self.cfg.model
        set_sample_limit(cfg.data.max_sample_bytes)  # before any loader worker forks: they read with it
        self.ctx = ctx = start_run(cfg, cfg.run_dir, cfg.seed)
        self.run_dir = ctx.run_dir
        val = self._setup_data()
        self.val_pixels = self._val_pixels(val) if val is not None else None
        model = self.new_model()
        self.memory_format = torch.channels_last if m.channels_last else torch.contiguous_format
        # FSDP2 shards contiguous parameters only: under it the weights stay contiguous (the
        # all-gathered copies are contiguous anyway) and only the activations run NHWC.
        sharded = cfg.distributed == "fsdp" and ctx.info.world_size > 1
        self.raw_model = model.to(ctx.device, memory_format=torch.contiguous_format if sharded else self.memory_format)
        self.model = parallelize(self.raw_model, ctx.info, cfg.distributed, find_unused_parameters=False)
        self.codes = CodeCounts(torch.zeros(m.vocab_size, dtype=torch.long, device=ctx.device))
        self.step, self.state = prepare_training(
            ctx,
            self.model,
            self.raw_model,
            optim=cfg.optim,
            precision=cfg.precision,
            checkpoint=cfg.checkpoint,
            components={"data": self.stream, "codes": self.codes},
            frozen=frozen_fields(cfg),
            perf=PerfMeter(ctx.device, cfg.precision, cfg.perf, patch_size=2 ** (m.num_groups - 1)),  # a token's pixels
        )
        self.resumed = self.state.resume()
        self.metrics = ctx.closing(
            MetricsLogger(self.run_dir, enabled=ctx.is_main, log=cfg.log, config=config_to_dict(cfg))
        )

    def new_model(self) -> DiscreteVAE:
        m = self.cfg.model
        sizes = dict(
            hidden_size=m.hidden_size,
            vocab_size=m.vocab_size,
            num_groups=m.num_groups,
            blocks_per_group=m.blocks_per_group,
        )
        return DiscreteVAE(DalleEncoder(**sizes), DalleDecoder(**sizes, init_size=m.init_size))

    def _setup_data(self) -> Source | None:
        """The training stream; returns the held-out source (or None)."""
        cfg, d, info = self.cfg, self.cfg.data, self.ctx.info
        if d.dataset == "shapes":
            paths = shapes_dataset()
            train, val = [*map(str, paths.train_pairs), *map(str, paths.images)], TarShards(paths.val_pairs, name="val")
        else:
            train = d.images
            val = image_source(d.val_images, "val") if d.val_images else None
        tcfg = ImageTransformConfig(d.image_size, d.image_size, random_crop=d.random_crop)
        options = LoaderOptions.from_config(d, info, cfg.seed)
        folder = len(train) == 1 and "://" not in train[0] and Path(train[0]).is_dir()
        if d.streaming and not folder:
            loader = make_stream_loader(
                train, "image", stack_pixels, options, name="images", image_transform=ImageTransform(tcfg)
            )
        else:
            dataset = SampleDataset(image_source(train, "images"), "image", ImageTransform(tcfg), seed=cfg.seed)
            loader = make_loader(dataset, stack_pixels, options)
        self.stream = self.ctx.closing(
            MixedBatches({"images": (loader, 1.0)}, seed=cfg.seed, max_bad_fraction=d.max_bad_fraction)
        )
        return val

    def _val_pixels(self, source: Source) -> torch.Tensor:
        n = min(self.cfg.eval_samples, len(source))
        center = ImageTransform(ImageTransformConfig(self.cfg.data.image_size, self.cfg.data.image_size))
        return torch.stack([center(decode_image(source[i]))["codebook_image"] for i in range(n)])

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out reconstruction MSE (``[0, 1]`` pixels, hard codes) and codebook usage."""
        if self.val_pixels is None:
            return {}
        mse, ids = 0.0, []
        with full_parameters(self.model):
            for s in range(0, len(self.val_pixels), 256):
                x = self.val_pixels[s : s + 256].to(self.ctx.device)
                ids.append(self.raw_model.encoder(x).argmax(1).cpu())
                recon = self.raw_model.decode_ids(ids[-1].to(self.ctx.device))
                mse += ((recon - _to_unit(x)) ** 2).mean(dim=(1, 2, 3)).sum().item()
        model = self.raw_model
        usage = codebook_usage(torch.cat(ids), model.vocab_size)
        return {"loss/recon_mse": mse / len(self.val_pixels), **{f"usage/{k}": v for k, v in usage.items()}}

    @torch.no_grad()
    def save_grid(self, step: int) -> Path | None:
        """Originals (top row) above their reconstructions from hard codes (bottom row); every rank
        calls it (the weights are gathered under FSDP2), the main one writes."""
        if self.val_pixels is None:
            return None
        from torchvision.utils import save_image

        x = self.val_pixels[:8].to(self.ctx.device)
        with full_parameters(self.model):
            recon = self.raw_model.reconstruct(x) if self.ctx.is_main else None
        if recon is None:
            return None
        path = self.run_dir / f"recon_step{step:08d}.png"
        save_image(torch.cat([_to_unit(x), recon]).cpu(), str(path), nrow=len(x), padding=2)
        return path

    # -- training -----------------------------------------------------------------------------
    def train(self) -> dict[str, float]:
        cfg = self.cfg
        if not self.resumed:
            self.metrics.log(0, self.evaluate(), split="eval")
            self.save_grid(0)
        done = train_loop(
            self.ctx,
            self.state,
            lambda step: self.step(self._next_batch, self._forward_at(step - 1), step),
            loop_options(cfg, "dvae"),
            on_log=self._log,
            on_eval=self._on_eval,
        )
        if not done:
            return {}
        final = self.evaluate()
        self.metrics.log(self.state.step, final, split="eval")
        self.save_grid(self.state.step)
        weights = full_state_dict(self.model)  # every rank: a collective under FSDP2
        if self.ctx.is_main:
            export = self.new_model()
            load_strict(export, weights, "the run's final weights", target="dVAE")
            save_dvae(export, self.run_dir / "final", image_size=cfg.data.image_size)
            plot_run(self.run_dir)
            print(f"final: {final}\nexported {self.run_dir / 'final'}", flush=True)
        return final  # the ranks wait for rank 0's export in close(completed=True)

    def _next_batch(self) -> torch.Tensor:
        return next(self.stream).to(self.ctx.device, memory_format=self.memory_format)

    def _forward_at(self, index: int):
        """The forward of the ``index``-th update (0-based): the schedules' temperature and KL weight."""
        o = self.cfg.objective
        tau = gumbel_temperature(index, o.temperature_start, o.temperature_end, o.temperature_steps)
        beta = kl_weight_schedule(index, o.kl_weight, o.kl_warmup_steps)

        def forward(model, x: torch.Tensor):
            out = model(
                x,
                temperature=tau,
                kl_weight=beta,
                straight_through=o.straight_through,
                recon_loss=o.recon_loss,
                pixel_sigma=o.pixel_sigma,
            )
            self.codes.counts += torch.bincount(out.ids.flatten(), minlength=self.codes.counts.numel())
            self.last = (x, out.ids.detach(), tau, beta)
            subpixels, tokens = x[0].numel(), out.ids[0].numel()
            return out.loss, {"nll_per_subpixel": out.nll / subpixels, "kl_per_token": out.kl / tokens}

        return forward

    def _log(self, step: int, record: dict[str, float], outcome) -> None:
        x, ids, tau, beta = self.last
        counts = self.ctx.comm.all_reduce(self.codes.counts).cpu()
        with torch.no_grad(), full_parameters(self.model):
            mse = ((self.raw_model.decode_ids(ids) - _to_unit(x)) ** 2).mean().item()
        usage = codebook_usage(torch.repeat_interleave(torch.arange(counts.numel()), counts), counts.numel())
        record.update(
            {
                "loss/recon_mse": mse,
                "temperature": tau,
                "kl_weight": beta,
                "lr": self.step.scheduler.get_last_lr()[0],
                "data/skipped_total": sum(self.stream.skipped.values()),
                **{f"usage/{k}": v for k, v in usage.items()},
            }
        )
        self.metrics.log(step, record)
        self.codes.counts.zero_()

    def _on_eval(self, step: int) -> None:
        self.metrics.log(step, self.evaluate(), split="eval")
        if step % self.cfg.image_every == 0:
            self.save_grid(step)


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """dVAE pixels (``0.8 x + 0.1``) back to ``[0, 1]``."""
    return ((x - 0.1) / 0.8).clamp(0, 1)


def main(argv: list[str] | None = None) -> int:
    return run_recipe(TokenizerRecipe, load_config, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
