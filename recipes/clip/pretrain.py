"""CLIP or SigLIP pretraining on image-text pairs, on the same runtime and data stack as FLAVA's.

    torchrun --standalone --nproc_per_node=2 recipes/clip/pretrain.py --config recipes/clip/configs/demo.yaml
    python recipes/clip/pretrain.py --config recipes/clip/configs/demo.yaml model_type=siglip run_dir=runs/siglip

Features and the config keys that control them:

* model: ``model_type`` = ``clip`` (Radford et al. 2021: softmax contrastive loss over the global
  batch) | ``siglip`` (Zhai et al. 2023: pairwise sigmoid loss, texts passed around the ranks);
  ``preset`` = ``tiny`` | ``full`` (the released ViT-B/16 sizes) plus ``model.*`` overrides of
  :class:`~mmkit.models.CLIPConfig` / :class:`~mmkit.models.SigLIPConfig` (e.g.
  ``model.image.patch_dropout=0.5``: FLIP's patch dropout). The text vocabulary follows the
  tokenizer; CLIP's end-of-text token is the tokenizer's ``[SEP]``; SigLIP pads every caption to
  ``data.max_length``, which becomes its text encoder's number of positions.
* data: the built-in dataset (``data.dataset: shapes``) or your pairs (``data.train_pairs``,
  ``data.val_pairs``: tar shard patterns, local or ``s3://`` / ``gs://`` / ``http(s)://`` with
  ``data.storage_options``); streamed by default (``data.streaming``, ``data.shuffle_buffer``),
  indexed with ``data.streaming=false``; tokenizer from ``data.tokenizer`` or trained on
  ``data.text`` (``data.vocab_size``); ``data.image_decode=device`` decodes JPEGs on the training
  device (nvJPEG on CUDA) instead of in the data workers.
* runtime (``mmkit.train``, shared with FLAVA): ``distributed`` = ``ddp`` | ``fsdp`` | ``none``,
  ``precision``, ``activation_checkpointing``, ``compile``, AdamW + warmup-cosine (``optim.*``),
  atomic DCP checkpoints with exact resume (``checkpoint.*``; elastic with streamed data), non-finite
  steps skipped, SIGTERM saves.
* evaluation: every ``eval_every`` steps (and at the start and end) the held-out loss and image<->text
  retrieval R@1/5 on ``eval_samples`` held-out pairs, and the mean pairwise cosine of the held-out
  embeddings (``health/*``), with one plain-words warning when a tower has collapsed or CLIP's loss is
  still at chance after ``health.stuck_after`` steps (``health.*``, as in FLAVA's recipe).
* export: ``<run_dir>/final`` (``model.safetensors`` + ``config.json``, read by
  ``recipes/flava/evaluate.py`` and :func:`mmkit.models.load_dual_encoder`), ``final/hf`` (transformers'
  ``CLIPModel`` / ``SiglipModel``) and ``final/tokenizer``.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from mmkit.convert import save_dual_encoder_hf
from mmkit.data import (
    ContrastivePairCollator,
    FLAVABatch,
    FLAVADataset,
    FLAVAImageTransform,
    ImageTransformConfig,
    MixedBatches,
    TarShards,
    make_loader,
    make_stream_loader,
    recipe_data_paths,
    resolve_shards,
)
from mmkit.eval import HealthConfig, HealthMonitor, retrieval_recall
from mmkit.models import (
    CLIPConfig,
    DualEncoderConfig,
    DualEncoderForPreTraining,
    SigLIPConfig,
    dual_encoder_for_pretraining,
    dual_encoder_model,
    export_config,
)
from mmkit.tokenizers import TextTokenizer, tokenizer_for_run
from mmkit.train import (
    PRECISIONS,
    CheckpointConfig,
    MetricsLogger,
    OptimConfig,
    autocast,
    full_state_dict,
    loop_options,
    memory_mib,
    parallelize,
    plot_run,
    prepare_training,
    read_scalar,
    run_recipe,
    start_run,
    summarize_run,
    train_loop,
    unwrap,
)
from mmkit.utils import at_least, choice, fraction
from mmkit.utils import load_config as load_recipe_config

CONFIGS = {"clip": CLIPConfig, "siglip": SigLIPConfig}


@dataclass
class DataConfig:
    dataset: str = choice("shapes", "files")
    train_pairs: list[str] = field(default_factory=list)
    val_pairs: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # text to train a tokenizer on (default: none)
    tokenizer: str | None = None  # vocab.txt / tokenizer.json / directory; None: train one on data.text
    vocab_size: int = at_least(1, 1000)
    max_length: int = at_least(1, 32)
    batch_size: int = at_least(1, 64)  # per rank
    num_workers: int = at_least(0, 1)
    random_crop: bool = False
    max_bad_fraction: float = fraction(0.01)
    streaming: bool = True
    shuffle_buffer: int = at_least(1, 1000)
    storage_options: dict[str, Any] = field(default_factory=dict)
    # worker: PIL in the data workers; device: JPEGs decoded on the training device (nvJPEG on CUDA)
    image_decode: str = choice("worker", "device")


@dataclass
class ClipPretrainConfig:
    run_dir: str = "runs/clip"
    seed: int = 0
    model_type: str = choice("clip", "siglip")
    preset: str = choice("full", "tiny")
    model: dict[str, Any] = field(default_factory=dict)  # CLIPConfig / SigLIPConfig overrides
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(  # OpenCLIP's ViT-B/16 recipe: lr 5e-4, wd 0.2, 10k warmup
        default_factory=lambda: OptimConfig(lr=5e-4, weight_decay=0.2, warmup_steps=10000, total_steps=100000)
    )
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: str = choice("ddp", "fsdp", "none")
    precision: str = choice(*PRECISIONS)
    activation_checkpointing: bool = False
    compile: bool = False
    log_every: int = at_least(1, 10)
    eval_every: int = at_least(1, 1000)
    eval_samples: int = at_least(1, 512)
    eval_at_start: bool = True
    health: HealthConfig = field(default_factory=HealthConfig)  # when an evaluation calls the run stuck
    max_nonfinite: int = at_least(1, 5)
    progress: bool = True


FROZEN_DATA = ("dataset", "train_pairs", "val_pairs", "text", "tokenizer", "vocab_size", "max_length",
               "batch_size", "num_workers", "random_crop", "streaming", "shuffle_buffer", "image_decode")  # fmt: skip
FROZEN = ("seed", "model_type", "preset", "model", "optim.grad_accum", *(f"data.{k}" for k in FROZEN_DATA))


def frozen_fields(cfg: ClipPretrainConfig) -> tuple[str, ...]:
    """:data:`FROZEN`; streamed data may change its number of workers on resume."""
    return tuple(f for f in FROZEN if not (cfg.data.streaming and f == "data.num_workers"))


def load_config(path: str | None, overrides: list[str]) -> ClipPretrainConfig:
    """YAML file, then ``key=value`` overrides; unknown keys and bad values raise, naming them."""
    cfg = load_recipe_config(ClipPretrainConfig, path, overrides)
    model_config(cfg)  # validates the model overrides before any data is built
    return cfg


def model_config(cfg: ClipPretrainConfig, tokenizer: TextTokenizer | None = None) -> DualEncoderConfig:
    """The preset, the ``model.*`` overrides, and the tokenizer's vocabulary (and ``[SEP]`` as CLIP's end of text)."""
    cls = CONFIGS[cfg.model_type]
    out = (cls.tiny() if cfg.preset == "tiny" else cls()).replace(**cfg.model)
    if tokenizer is not None:
        text: dict[str, Any] = {"vocab_size": tokenizer.vocab_size}
        if out.text.pooler == "eot":
            text["eos_token_id"] = tokenizer.token_id("[SEP]")
        if out.text.pooler == "last":  # SigLIP pools the last position: every text is padded to full length
            text["max_positions"] = cfg.data.max_length
        out = out.replace(text=text)
    if cfg.data.max_length > out.text.max_positions:
        raise ValueError(
            f"data.max_length={cfg.data.max_length} exceeds the text encoder's {out.text.max_positions} positions"
        )
    return out


class ClipPretrainRecipe:
    """setup -> train (evaluate, checkpoints) -> export; see the module docstring."""

    def __init__(self, cfg: ClipPretrainConfig) -> None:
        self.cfg = cfg

    def setup(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        self.ctx = ctx = start_run(cfg, cfg.run_dir, cfg.seed)
        self.run_dir = ctx.run_dir
        self.train_pairs, self.val_pairs, _, text = recipe_data_paths(d.dataset, d.train_pairs, d.val_pairs, [], d.text)
        self.tokenizer = tokenizer_for_run(d.tokenizer, text, d.vocab_size, d.max_length, self.run_dir,
                                           is_main=ctx.is_main, barrier=ctx.comm.barrier)  # fmt: skip
        self.model_cfg = model_config(cfg, self.tokenizer)
        text_cfg = self.model_cfg.text
        pad_to = text_cfg.max_positions if text_cfg.pooler == "last" else None  # SigLIP: one fixed length
        self.collate = ContrastivePairCollator(self.tokenizer.pad_token_id, pad_to)
        image = ImageTransformConfig(self.model_cfg.image.image_size, 0, random_crop=d.random_crop,
                                     decode=d.image_decode)  # fmt: skip
        self.transform = FLAVAImageTransform(image)
        self.stream = MixedBatches({"pairs": (self._loader(), 1.0)}, seed=cfg.seed,
                                   max_bad_fraction=d.max_bad_fraction)  # fmt: skip
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.raw_model: DualEncoderForPreTraining = dual_encoder_for_pretraining(self.model_cfg).to(ctx.device)
        self.model = parallelize(self.raw_model, ctx.info, cfg.distributed, cfg.activation_checkpointing,
                                 cfg.compile, bf16_params=cfg.precision == "bf16" and cfg.distributed == "fsdp",
                                 find_unused_parameters=False)  # fmt: skip
        self.step, self.state = prepare_training(
            ctx, self.model, self.raw_model, optim=cfg.optim, precision=cfg.precision, checkpoint=cfg.checkpoint,
            components={"data": self.stream}, frozen=frozen_fields(cfg),
            after_update=self.raw_model.model.clamp_logit_scale,
        )  # fmt: skip
        self.resumed = self.state.resume()
        self.metrics = MetricsLogger(self.run_dir, enabled=ctx.is_main)
        self.health = HealthMonitor(cfg.health, warn=self._warn, warmup_steps=cfg.optim.warmup_steps)

    def _warn(self, line: str) -> None:
        if self.ctx.is_main:
            print(line, file=sys.stderr, flush=True)

    def _loader(self):
        d, info = self.cfg.data, self.ctx.info
        common = dict(rank=info.rank, world_size=info.world_size, seed=self.cfg.seed, num_workers=d.num_workers)
        if d.streaming:
            options = d.storage_options or None
            return make_stream_loader(resolve_shards(self.train_pairs, options), "pair", self.collate, d.batch_size,
                                      name="pairs", tokenizer=self.tokenizer, image_transform=self.transform,
                                      buffer_size=d.shuffle_buffer, storage_options=options, **common)  # fmt: skip
        source = TarShards(self.train_pairs, require_text=True, name="pairs")
        dataset = FLAVADataset(source, "pair", self.transform, self.tokenizer, seed=self.cfg.seed)
        return make_loader(dataset, self.collate, d.batch_size, **common)

    # -- training -----------------------------------------------------------------------------
    def train(self) -> None:
        cfg = self.cfg
        if not self.resumed and cfg.eval_at_start:
            self.metrics.log(0, self.evaluate(), split="eval")
        done = train_loop(
            self.ctx, self.state, lambda step: self.step(self._next_batch, _forward, step),
            on_log=self._log, on_eval=lambda step: self.metrics.log(step, self.evaluate(), split="eval"),
            desc=f"pretrain {cfg.model_type}", **loop_options(cfg),
        )  # fmt: skip
        if done:
            self.metrics.log(self.state.step, self.evaluate(), split="eval")
            self.export()

    def _next_batch(self) -> FLAVABatch:
        """The next batch on the device (``data.image_decode=device``: its JPEGs decoded there)."""
        return self.transform.finish(next(self.stream).to(self.ctx.device))

    def _log(self, step: int, record: dict[str, float], outcome) -> None:
        model = self.raw_model.model
        record.update(lr=self.step.scheduler.get_last_lr()[0], logit_scale=read_scalar(model.logit_scale),
                      memory_mib=memory_mib(self.ctx.device),
                      nonfinite_total=self.state.counters.nonfinite_total)  # fmt: skip
        if model.logit_bias is not None:
            record["logit_bias"] = read_scalar(model.logit_bias)
        self.metrics.log(step, record)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss and retrieval R@1/5 over the first ``eval_samples`` held-out pairs (every rank
        the same data, so the loss scores within this rank's batch)."""
        model = unwrap(self.model)
        model.eval()
        self.raw_model.set_cross_rank(False)
        try:
            return self._evaluate(model)
        finally:
            self.raw_model.set_cross_rank(True)
            model.train()

    @functools.cached_property
    def _val_dataset(self) -> FLAVADataset:
        """The held-out pairs, indexed once (not at every evaluation)."""
        return FLAVADataset(TarShards(self.val_pairs, name="val"), "pair", self.transform, self.tokenizer, seed=1)

    def _evaluate(self, model) -> dict[str, float]:
        d, ds = self.cfg.data, self._val_dataset
        n = min(self.cfg.eval_samples, len(ds))
        loss_sum, count, images, texts = 0.0, 0, [], []
        for start in range(0, n, d.batch_size):
            samples = [s for s in (ds[(0, 0, i)] for i in range(start, min(n, start + d.batch_size)))
                       if isinstance(s, dict)]  # fmt: skip
            if not samples:
                continue
            batch = self.transform.finish(self.collate(samples).to(self.ctx.device))
            with autocast(self.cfg.precision, self.ctx.device):
                out = model(**batch.model_inputs())
            loss_sum, count = loss_sum + float(out.loss) * len(samples), count + len(samples)
            images.append(out.image_embedding.float().cpu())
            texts.append(out.text_embedding.float().cpu())
        if not count:
            raise ValueError(f"none of the first {n} held-out pairs could be read: check data.val_pairs")
        img, txt = torch.cat(images), torch.cat(texts)
        metrics = {"loss/contrastive": loss_sum / count, "retrieval/chance_r1": 1.0 / len(img)}
        metrics.update({f"retrieval/{k}": v for k, v in retrieval_recall(img, txt, ks=(1, 5)).items()})
        softmax = self.raw_model.loss_kind == "softmax"  # SigLIP's sigmoid loss has no ln(batch) chance level
        if len(img) > 1:
            loss = metrics["loss/contrastive"] if softmax else None
            metrics.update(self.health(self.state.step, img, txt, loss, min(d.batch_size, n)))
        return metrics

    def export(self) -> None:
        """``final/model.safetensors`` + ``config.json`` (mmkit), ``final/hf`` (transformers), ``final/tokenizer``."""
        from safetensors.torch import save_file

        tensors = full_state_dict(self.model)
        if self.ctx.is_main:
            out = self.run_dir / "final"
            out.mkdir(parents=True, exist_ok=True)
            state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
            save_file(state, str(out / "model.safetensors"))
            (out / "config.json").write_text(json.dumps(export_config(self.model_cfg), indent=2))
            fresh = dual_encoder_model(self.model_cfg)
            fresh.load_state_dict(state)
            save_dual_encoder_hf(fresh, out / "hf")
            self.tokenizer.save(out / "tokenizer")
            plot_run(self.run_dir)
            skipped = self.state.counters.nonfinite_total
            summary = summarize_run(self.run_dir) + f"\nnon-finite steps skipped: {skipped}\n"
            (self.run_dir / "summary.txt").write_text(summary)
            print(summary, flush=True)
        self.ctx.comm.barrier()


def _forward(model, batch: FLAVABatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = model(**batch.model_inputs())
    return out.loss, out.losses


def main(argv: list[str] | None = None) -> int:
    return run_recipe(ClipPretrainRecipe, load_config, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
