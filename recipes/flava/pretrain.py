"""FLAVA pretraining (Singh et al., CVPR 2022), single process or distributed.

    torchrun --standalone --nproc_per_node=2 recipes/flava/pretrain.py --config recipes/flava/configs/demo.yaml
    python recipes/flava/pretrain.py --config recipes/flava/configs/demo.yaml optim.total_steps=100
    python recipes/flava/pretrain.py --plot runs/demo        # plot + summary of a finished run

Features and the config keys that control them:

* model: ``preset`` (``tiny`` | ``full``) plus ``model.*`` overrides of :class:`FLAVAConfig`
  (``model.init_std``: the weights' initial std, by default ``0.02 * sqrt(768 / width)``);
  the text vocabulary follows the tokenizer. ``model.image.init_from`` / ``model.text.init_from``:
  start that encoder from a CLIP or SigLIP checkpoint's tower (its architecture and weights;
  ``<run_dir>/tower_report.txt`` names what was taken and what is new).
* data: the built-in dataset (``data.dataset: shapes``) or your files (``data.train_pairs``,
  ``data.val_pairs``, ``data.images``, ``data.text``: tar patterns / text files); tokenizer from
  ``data.tokenizer`` or trained on the text data (``data.vocab_size``); each step draws one
  source with ``data.pair_prob`` / ``image_prob`` / ``text_prob``; ``data.batch_size`` per rank,
  ``data.num_workers``; bad records skipped up to ``data.max_bad_fraction``. Tar shards and text
  files are streamed (``data.streaming``, default): local paths or ``s3://`` / ``gs://`` / ``http(s)://``
  URLs (``data.storage_options`` for ``fsspec``), a ``data.shuffle_buffer``-sample window per
  worker, exact resume; ``data.streaming=false`` indexes them instead (every header read at start).
  Less CPU per sample in the workers: ``data.fast_images`` (one resize chain, uint8 until the
  device) and ``data.image_decode=device`` (JPEGs decoded on the training device, nvJPEG on CUDA).
* runtime (:class:`~mmkit.pretrain.RunConfig`, shared with CLIP): ``distributed`` = ``ddp`` | ``fsdp``
  (FSDP2) | ``none``; ``precision`` = ``fp32`` | ``bf16`` | ``fp16``; ``activation_checkpointing``;
  ``compile`` = ``none`` | ``layers`` | ``step`` (the whole step as one graph: the masked objectives
  predict a fixed budget of positions, ``FLAVAForPreTraining.set_static_shapes``; under FSDP2 the model
  is then one sharded unit, see ``mmkit.train.distributed``);
  ``meta_init`` (built on the meta device, each FSDP2 rank materialising only its shard); AdamW with
  linear warmup then cosine (``optim.*``; the image tokenizer is frozen, not optimised).
* gradient accumulation, ``optim.grad_accum=K``: the global contrastive loss sees every paired micro-batch of the
  step (K x ``data.batch_size`` x ranks pairs, as a K-times larger batch; two passes, ``mmkit.train.whole_batch``);
  ITM, MMM, MIM and MLM stay per micro-batch (per-sample losses; ITM swaps captions within its micro-batch), each
  micro-batch drawing its own source. ``optim.contrastive_per_micro_batch=true``: contrastive per micro-batch too.
* image tokenizer (MIM targets): ``model.codebook.checkpoint`` = a dVAE trained with
  ``recipes/dalle/train_tokenizer.py`` (its vocabulary and input size then set the codebook's) or a
  DALL-E encoder; shards with cached ids (``python -m mmkit.data.token_cache``) are used
  automatically (``data.cached_tokens``), checked against the configured tokenizer, size and crop;
  ``model.pretraining.mim_target`` = ``tokens`` | ``pixels`` (normalised-pixel regression, no tokenizer).
  A randomly initialised tokenizer (``tokens`` without a checkpoint) is refused at start: its ids carry
  almost nothing; ``model.codebook.allow_random=true`` trains on it anyway.
* checkpoints, faults, logging (``mmkit.train``): atomic DCP checkpoints with exact resume (a resume
  refuses a changed model or data, naming the field); non-finite steps skipped on every rank; SIGTERM
  saves; ``metrics.jsonl`` and TensorBoard every ``log_every`` steps, each objective's own gradient
  norm every ``grad_norms_every`` (``grad_norm/<objective>``); ``losses.png`` and ``summary.txt`` at the end;
  final weights as safetensors and in transformers' FLAVA layout (``<run_dir>/final``).
* evaluation: every ``eval_every`` steps (and at the start and end), held-out losses of every
  objective, image<->text retrieval R@1/5 on ``eval_samples`` held-out pairs and the towers' health
  (``health/*``: one plain-words warning when a tower has collapsed or the contrastive loss is still
  at chance after ``health.stuck_after`` steps).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from mmkit.data import (
    ImageCollator,
    ImageTransform,
    ImageTransformConfig,
    PairCollator,
    TextCollator,
    TrainingSource,
    shapes_dataset,
)
from mmkit.masking import BlockMaskGenerator, TokenMasker
from mmkit.models import (
    RANDOM_CODEBOOK,
    FLAVAConfig,
    FLAVAForPreTraining,
    flava_hf_unsupported,
    flava_model_for_pretraining,
    init_towers,
    materialize_flava,
    random_codebook,
    resolve_codebook_config,
    resolve_tower_configs,
    trains_on,
)
from mmkit.pretrain import (
    DataPaths,
    PairDataConfig,
    PretrainOptimConfig,
    PretrainRecipe,
    RecipeData,
    RunConfig,
    frozen_fields,
    make_builtin_tokenizer,
)
from mmkit.tokenizers import check_cached_ids
from mmkit.train import GradNormProbe, run_recipe
from mmkit.utils import ConfigError, InputError, at_least, choice, fraction
from mmkit.utils import load_config as load_recipe_config


@dataclass
class DataConfig(PairDataConfig):
    images: list[str] = field(default_factory=list)  # image-only tar shards (MIM)
    pair_prob: float = fraction(0.70)  # each step draws one source with these probabilities
    image_prob: float = fraction(0.15)
    text_prob: float = fraction(0.15)
    itm_negative_prob: float = fraction(0.1)
    cached_tokens: bool = True  # use tokenizer ids cached in the shards when every sample has them
    # One resize chain per image and uint8 until the device (ImageTransformConfig.fast): less CPU per
    # sample in the workers; off by default because the released FLAVA resizes the tokenizer input apart.
    fast_images: bool = False


@dataclass
class PretrainConfig(RunConfig):
    run_dir: str = "runs/flava"
    data: DataConfig = field(default_factory=DataConfig)
    optim: PretrainOptimConfig = field(  # the paper's AdamW: lr 1e-3, wd 0.1, 10k warmup, 150k steps
        default_factory=lambda: PretrainOptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=10000, total_steps=150000)
    )
    preset: str = choice("full", "tiny")
    model: dict[str, Any] = field(default_factory=dict)  # FLAVAConfig overrides
    # per-objective gradient norms (grad_norm/<objective>) on the first paired batch from every N-th step:
    # one extra backward per objective there; 0 = off. Not under distributed=fsdp or compile != none; with the
    # whole-batch contrastive loss of grad_accum > 1, global_contrastive's is not measured (it has no one batch).
    grad_norms_every: int = at_least(0, 100)

    resumable: ClassVar[tuple[str, ...]] = ("grad_norms_every",)


#: what a checkpoint's run must share with the resuming one under the default config (mmkit.pretrain's rule)
FROZEN = frozen_fields(PretrainConfig())


def load_config(path: str | None, overrides: list[str]) -> PretrainConfig:
    """YAML file, then ``key=value`` overrides; unknown keys and bad values raise, naming them."""
    cfg = load_recipe_config(PretrainConfig, path, overrides)
    towers = [
        f"model.{side}.init_from"
        for side in ("image", "text")
        if cfg.model.get(f"{side}.init_from") or (cfg.model.get(side) or {}).get("init_from")
    ]
    if cfg.meta_init and towers:  # said before the towers are read
        raise ConfigError(
            f"invalid config: meta_init=true cannot start encoders from towers ({', '.join(towers)}): "
            "towers are copied into a whole model; set meta_init=false"
        )
    mcfg = model_config(cfg)  # validates the model overrides now, not after the data is built
    builtin = mcfg.codebook.checkpoint == BUILTIN_TOKENIZER and mcfg.pretraining.mim_target == "tokens"
    if builtin and cfg.data.dataset != "shapes":
        raise ConfigError(
            "invalid config: model.codebook.checkpoint=builtin is the tokenizer of the built-in shapes pictures, "
            f"not of data.dataset={cfg.data.dataset!r}: set model.codebook.checkpoint to a dVAE trained on your "
            "images (recipes/dalle/train_tokenizer.py) or model.pretraining.mim_target=pixels"
        )
    if random_codebook(mcfg):
        problem = RANDOM_CODEBOOK.replace("codebook.checkpoint", "model.codebook.checkpoint").replace(
            "pretraining.mim_target", "model.pretraining.mim_target"
        )
        raise ConfigError(
            f"invalid config: model.codebook: {problem}, or model.codebook.allow_random=true to train on it anyway"
        )
    unsupported = flava_hf_unsupported(mcfg)
    if unsupported:  # said before training, not discovered at export
        print(
            f"note: no final/hf at the end: transformers' FLAVA cannot express {', '.join(unsupported)}",
            file=sys.stderr,
        )
    return cfg


def model_config(cfg: PretrainConfig, vocab_size: int | None = None, codebook: Path | None = None) -> FLAVAConfig:
    """The run's :class:`FLAVAConfig`; ``codebook`` replaces ``model.codebook.checkpoint=builtin`` (which is
    left unresolved when None: the built-in tokenizer may not exist yet when the config is checked)."""
    base = FLAVAConfig.tiny() if cfg.preset == "tiny" else FLAVAConfig()
    out = base.replace(**cfg.model)
    if vocab_size is not None:
        out = out.replace(**{"text.vocab_size": vocab_size})
    out = resolve_tower_configs(out)  # model.image.init_from / model.text.init_from: the tower's architecture
    if out.codebook.checkpoint == BUILTIN_TOKENIZER:
        if codebook is None:
            return out
        out = out.replace(**{"codebook.checkpoint": str(codebook)})
    return resolve_codebook_config(out)  # a trained tokenizer sets the codebook sizes and input size


#: ``model.codebook.checkpoint`` naming the dVAE trained on the built-in pictures (:func:`builtin_tokenizer`)
BUILTIN_TOKENIZER = "builtin"
RECIPES = Path(__file__).resolve().parents[1]


def builtin_tokenizer(paths, steps: int | None = None) -> tuple[Path, list[Path], list[Path]]:
    """The built-in pictures' tokenizer (``recipes/dalle/configs/shapes_tiny.yaml``, ~2 minutes on 2 CPU
    cores the first time) and the built-in shards with its ids (:func:`~mmkit.pretrain.make_builtin_tokenizer`)."""
    dalle = RECIPES / "dalle"
    return make_builtin_tokenizer(paths, dalle / "train_tokenizer.py", dalle / "configs/shapes_tiny.yaml", steps)


@dataclass(frozen=True)
class FLAVADataPaths(DataPaths):
    codebook: Path | None = None  # the built-in image tokenizer (model.codebook.checkpoint=builtin), made with the data


class FLAVAPretrainRecipe(PretrainRecipe):
    """setup -> train (evaluate, checkpoints) -> export (:class:`~mmkit.pretrain.PretrainRecipe`)."""

    def data_paths(self) -> FLAVADataPaths:
        """With ``model.codebook.checkpoint=builtin``: that tokenizer and the built-in shards holding its ids."""
        paths, mcfg = super().data_paths(), model_config(self.cfg)
        if mcfg.codebook.checkpoint != BUILTIN_TOKENIZER or mcfg.pretraining.mim_target != "tokens":
            return FLAVADataPaths(paths.train_pairs, paths.val_pairs, paths.images, paths.text)
        codebook, pairs, images = builtin_tokenizer(shapes_dataset())
        if self.cfg.data.dataset == "shapes" and self.cfg.data.cached_tokens:
            paths = replace(paths, train_pairs=pairs, images=images)
        return FLAVADataPaths(paths.train_pairs, paths.val_pairs, paths.images, paths.text, codebook)

    def model_config(self, paths: FLAVADataPaths) -> FLAVAConfig:
        return model_config(self.cfg, self.tokenizer.vocab_size, paths.codebook)

    def image_transform(self) -> ImageTransform:
        d, mcfg = self.cfg.data, self.model_cfg
        pixels = mcfg.pretraining.mim_target == "pixels"  # pixel-regression MIM needs no tokenizer input
        return ImageTransform(
            ImageTransformConfig(
                image_size=mcfg.image.image_size,
                codebook_image_size=0 if pixels else mcfg.codebook.image_size,
                random_crop=d.random_crop,
                fast=d.fast_images,
                decode=d.image_decode,
            )
        )

    def loaders(self, paths: DataPaths) -> RecipeData:
        d, mcfg, tok = self.cfg.data, self.model_cfg, self.tokenizer
        blocks = BlockMaskGenerator.flava(mcfg.image.image_size // mcfg.image.patch_size)
        tokens = TokenMasker(tok.vocab_size, tok.mask_token_id, tok.special_token_ids, tok.pad_token_id)
        pairs = PairCollator(blocks, tokens, d.itm_negative_prob, self.train_text_length)
        image_sources = [(paths.train_pairs, "pair", "pairs", pairs, d.pair_prob)]
        if paths.images and d.image_prob > 0:
            image_sources.append((paths.images, "image", "images", ImageCollator(blocks), d.image_prob))
        loaders, cached = {}, {}
        for patterns, kind, name, collate, prob in image_sources:
            loader, cached[name] = self._image_loader(self.source(patterns, kind, name), collate)
            loaders[name] = (loader, prob)
        if paths.text and d.text_prob > 0:
            collate = TextCollator(tokens, self.train_text_length)
            loaders["text"] = (self.source_loader(self.source(paths.text, "text", "text"), collate), d.text_prob)
        cached = {name: info for name, info in cached.items() if info is not None}
        return RecipeData(loaders, partial(self._eval_collators, blocks, tokens), cached)

    def _image_loader(self, source: TrainingSource, collate) -> tuple[Any, dict | None]:
        """``(loader, cached ids' settings or None)``: the shards' cached tokenizer ids where ``data.cached_tokens``."""
        d = self.cfg.data
        wanted = d.cached_tokens and self.model_cfg.pretraining.mim_target == "tokens"
        info = source.cached_ids(d.random_crop) if wanted else None
        if info is None:
            return self.source_loader(source, collate), None
        transform = ImageTransform(replace(self.transform.config, codebook_image_size=0))
        return self.source_loader(source, collate, transform, image_tokens=True), info

    def _eval_collators(self, blocks: BlockMaskGenerator, tokens: TokenMasker) -> list:
        """Pairs through every objective; image-only and text-only batches for MIM and MLM when they train."""
        d, weights = self.cfg.data, self.model_cfg.pretraining.weights
        out = [PairCollator(blocks, tokens, d.itm_negative_prob, seed=1)]
        out += [ImageCollator(blocks, seed=2)] if trains_on("image", weights) else []
        return out + ([TextCollator(tokens, seed=3)] if trains_on("text", weights) else [])

    def build_model(self, data: RecipeData) -> FLAVAForPreTraining:
        model, mcfg = flava_model_for_pretraining(self.model_cfg), self.model_cfg
        if mcfg.text.init_from and mcfg.text.vocab_size != self.tokenizer.vocab_size:
            raise InputError(
                f"the text tower of {mcfg.text.init_from} has {mcfg.text.vocab_size} ids but the tokenizer has "
                f"{self.tokenizer.vocab_size}: set data.tokenizer to the tokenizer the tower was trained with"
            )
        reports = init_towers(model.model, mcfg)  # model.*.init_from: CLIP/SigLIP towers copied in, reported
        if reports and self.ctx.is_main:
            (self.run_dir / "tower_report.txt").write_text("\n".join(map(str, reports)) + "\n")
            print("\n".join(map(str, reports)), flush=True)
        grid = mcfg.image.image_size // mcfg.image.patch_size
        check_cached_ids(data.cached_tokens, model.image_tokenizer, mcfg.codebook.image_size, grid)
        if data.cached_tokens:
            self.ctx.print(f"cached tokenizer ids in {', '.join(data.cached_tokens)}: the codebook is skipped there")
        cfg, weights = self.cfg, mcfg.pretraining.weights.as_dict()  # not under FSDP2 hooks or a compiled step
        self.grad_norms = GradNormProbe(
            cfg.grad_norms_every, weights, enabled=cfg.distributed != "fsdp" and cfg.compile == "none"
        )
        return model if self.cfg.meta_init else model.to(self.ctx.device)

    def materialize(self, model: FLAVAForPreTraining) -> None:
        materialize_flava(model, self.ctx.device)

    # -- each objective's gradient norm on the first paired batch of every grad_norms_every-th step ------
    def train_step(self, step: int):
        self.grad_norms.start(step)
        return super().train_step(step)

    def on_output(self, out) -> None:
        self.grad_norms.measure(out.kind, out.losses, self.raw_model.parameters())

    def log_extra(self, record: dict[str, float]) -> None:
        record.update(self.grad_norms.pop())

    def exported_config(self) -> dict[str, Any]:
        return self.model_cfg.to_dict()

    def hf_exporter(self):
        """Where transformers' FLAVA can express the model (not CLIP towers' input LayerNorm, for example)."""
        from mmkit.models import save_flava_hf

        return None if flava_hf_unsupported(self.model_cfg) else (flava_model_for_pretraining, save_flava_hf)


def main(argv: list[str] | None = None) -> int:
    return run_recipe(FLAVAPretrainRecipe, load_config, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
