"""CLIP or SigLIP pretraining on image-text pairs, on the same runtime and data stack as FLAVA's.

    torchrun --standalone --nproc_per_node=2 recipes/clip/pretrain.py --config recipes/clip/configs/demo.yaml
    python recipes/clip/pretrain.py --config recipes/clip/configs/demo.yaml model_type=siglip run_dir=runs/siglip

Features and the config keys that control them:

* model: ``model_type`` = ``clip`` (Radford et al. 2021: softmax contrastive loss over the global
  batch) | ``siglip`` (Zhai et al. 2023: pairwise sigmoid loss, texts passed around the ranks);
  ``preset`` = ``tiny`` | ``full`` (the released ViT-B/16 sizes) plus ``model.*`` overrides of
  :class:`~mmkit.models.CLIPConfig` / :class:`~mmkit.models.SigLIPConfig` (e.g.
  ``model.image.patch_dropout=0.5``: FLIP's patch dropout). The config fits itself to the tokenizer
  (:meth:`~mmkit.models.DualEncoderConfig.for_tokenizer`): its vocabulary, ``[SEP]`` as CLIP's end of
  text; SigLIP pads every caption to ``data.max_length``, which becomes its text encoder's positions.
  Another dual encoder is another entry of ``CONFIGS``: a config class and its transformers key map.
* data (:class:`~mmkit.pretrain.PairDataConfig`): the built-in dataset (``data.dataset: shapes``) or your
  pairs (``data.train_pairs``, ``data.val_pairs``: tar shard patterns, local or ``s3://`` / ``gs://`` /
  ``http(s)://`` with ``data.storage_options``); streamed by default (``data.streaming``,
  ``data.shuffle_buffer``), indexed with ``data.streaming=false`` (local files); tokenizer from
  ``data.tokenizer`` or trained on ``data.text`` (``data.vocab_size``); ``data.image_decode=device``
  decodes JPEGs on the training device (nvJPEG on CUDA) instead of in the data workers.
* runtime (:class:`~mmkit.pretrain.RunConfig`, shared with FLAVA): ``distributed`` = ``ddp`` | ``fsdp`` |
  ``none``, ``precision``, ``activation_checkpointing``, ``compile`` = ``none`` | ``layers`` | ``step``,
  AdamW + warmup-cosine (``optim.*``), atomic DCP checkpoints with exact resume (``checkpoint.*``;
  elastic with streamed data), non-finite steps skipped, SIGTERM saves.
* batch: ``data.batch_size`` pairs per rank and micro-batch; ``optim.grad_accum=K`` accumulates K micro-batches
  whose contrastive loss sees all K x batch_size x ranks pairs, as one step on a K-times larger batch (two passes,
  ``mmkit.train.whole_batch``: one micro-batch's activation memory, about one extra tower forward each; dropout
  and patch dropout replay). A paper-sized batch on few GPUs: 32768 = 8 ranks x 256 x ``optim.grad_accum=16``.
  ``optim.contrastive_per_micro_batch=true``: each micro-batch's loss on its own rows (no extra forward).
* evaluation: every ``eval_every`` steps (and at the start and end) the held-out loss and image<->text
  retrieval R@1/5 on ``eval_samples`` held-out pairs, and the mean pairwise cosine of the held-out
  embeddings (``health/*``), with one plain-words warning when a tower has collapsed or CLIP's loss is
  still at chance after ``health.stuck_after`` steps (``health.*``, as in FLAVA's recipe).
* export: ``<run_dir>/final`` (``model.safetensors`` + ``config.json``, read by
  ``recipes/flava/evaluate.py`` and :func:`mmkit.models.load_dual_encoder`), ``final/hf`` (transformers'
  ``CLIPModel`` / ``SiglipModel``) and ``final/tokenizer``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from mmkit.data import ContrastivePairCollator, ImageTransform, ImageTransformConfig
from mmkit.models import (
    CLIPConfig,
    DualEncoderConfig,
    SigLIPConfig,
    dual_encoder_for_pretraining,
    dual_encoder_model,
    export_config,
    save_dual_encoder_hf,
)
from mmkit.pretrain import DataPaths, PairDataConfig, PretrainOptimConfig, PretrainRecipe, RecipeData, RunConfig
from mmkit.train import read_scalar, run_recipe
from mmkit.utils import at_least, choice
from mmkit.utils import load_config as load_recipe_config

CONFIGS = {"clip": CLIPConfig, "siglip": SigLIPConfig}


@dataclass
class DataConfig(PairDataConfig):
    batch_size: int = at_least(1, 64)  # per rank


@dataclass
class ClipPretrainConfig(RunConfig):
    run_dir: str = "runs/clip"
    data: DataConfig = field(default_factory=DataConfig)
    optim: PretrainOptimConfig = field(  # OpenCLIP's ViT-B/16 recipe: lr 5e-4, wd 0.2, 10k warmup
        default_factory=lambda: PretrainOptimConfig(lr=5e-4, weight_decay=0.2, warmup_steps=10000, total_steps=100000)
    )
    model_type: str = choice(*CONFIGS)
    preset: str = choice("full", "tiny")
    model: dict[str, Any] = field(default_factory=dict)  # CLIPConfig / SigLIPConfig overrides


def load_config(path: str | None, overrides: list[str]) -> ClipPretrainConfig:
    """YAML file, then ``key=value`` overrides; unknown keys and bad values raise, naming them."""
    cfg = load_recipe_config(ClipPretrainConfig, path, overrides)
    base = model_config(cfg)  # the model overrides and data.max_length checked before any data is built
    base.for_tokenizer(base.text.vocab_size, base.text.eos_token_id, cfg.data.max_length)
    return cfg


def model_config(cfg: ClipPretrainConfig) -> DualEncoderConfig:
    """The preset with the ``model.*`` overrides."""
    cls = CONFIGS[cfg.model_type]
    return (cls.tiny() if cfg.preset == "tiny" else cls()).replace(**cfg.model)


class ClipPretrainRecipe(PretrainRecipe):
    """setup -> train (evaluate, checkpoints) -> export (:class:`~mmkit.pretrain.PretrainRecipe`)."""

    parallel_options = {"find_unused_parameters": False}  # noqa: RUF012

    @property
    def desc(self) -> str:
        return f"pretrain {self.cfg.model_type}"

    def model_config(self, paths: DataPaths) -> DualEncoderConfig:
        tok = self.tokenizer
        return model_config(self.cfg).for_tokenizer(tok.vocab_size, tok.token_id("[SEP]"), self.cfg.data.max_length)

    def image_transform(self) -> ImageTransform:
        d = self.cfg.data
        return ImageTransform(
            ImageTransformConfig(self.model_cfg.image.image_size, 0, random_crop=d.random_crop, decode=d.image_decode)
        )

    def loaders(self, paths: DataPaths) -> RecipeData:
        length = self.model_cfg.text_length or self.train_text_length  # SigLIP's pooler needs one length
        collate = ContrastivePairCollator(self.tokenizer.pad_token_id, length)
        pairs = self.source_loader(self.source(paths.train_pairs, "pair", "pairs"), collate)
        return RecipeData({"pairs": (pairs, 1.0)}, eval_collators=lambda: [collate])

    def build_model(self, data: RecipeData) -> torch.nn.Module:
        return dual_encoder_for_pretraining(self.model_cfg).to(self.ctx.device)

    def log_extra(self, record: dict[str, float]) -> None:
        bias = self.raw_model.model.logit_bias
        if bias is not None:
            record["logit_bias"] = read_scalar(bias)

    def exported_config(self) -> dict[str, Any]:
        return export_config(self.model_cfg)

    def exported_state(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The dual encoder's weights (the loss holds none)."""
        return {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}

    def hf_exporter(self):
        return dual_encoder_model, save_dual_encoder_hf


def main(argv: list[str] | None = None) -> int:
    return run_recipe(ClipPretrainRecipe, load_config, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
