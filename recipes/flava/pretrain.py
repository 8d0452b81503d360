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
* distribution: ``distributed`` = ``ddp`` | ``fsdp`` (FSDP2) | ``none``; gloo on CPU, NCCL on GPU.
* precision: ``precision`` = ``fp32`` | ``bf16`` (autocast; LayerNorm and softmax stay fp32) |
  ``fp16`` (autocast + gradient scaling, CUDA); ``activation_checkpointing``.
* compilation: ``compile`` = ``none`` | ``layers`` (``torch.compile`` each transformer layer) | ``step``
  (the whole forward, losses and backward of each batch kind as one graph: the masked objectives
  predict a fixed budget of positions, see ``FLAVAForPreTraining.set_static_shapes``; one process
  only for now; evaluation runs eagerly on the exact masked positions).
* optimisation: AdamW (``optim.lr``, ``weight_decay`` — none on norms, biases, embeddings,
  tokens and ``logit_scale`` — ``betas``), linear warmup then cosine (``optim.warmup_steps``,
  ``optim.total_steps``), ``optim.grad_accum``, ``optim.max_grad_norm``; the image tokenizer is
  frozen and not in the optimiser.
* image tokenizer (MIM targets): ``model.codebook.checkpoint`` = a dVAE trained with
  ``recipes/dalle/train_tokenizer.py`` (its vocabulary and input size then set the codebook's) or a
  DALL-E encoder; shards with cached ids (``python -m mmkit.tokenizers.cache``) are used
  automatically (``data.cached_tokens``), checked against the configured tokenizer, size and crop;
  ``model.pretraining.mim_target`` = ``tokens`` | ``pixels`` (normalised-pixel regression, no tokenizer).
  A randomly initialised tokenizer (``tokens`` without a checkpoint) is refused at start: its ids carry
  almost nothing; ``model.codebook.allow_random=true`` trains on it anyway.
* checkpoints (``mmkit.train``): DCP every ``checkpoint.every`` steps, atomic, last ``checkpoint.keep``
  kept, ``checkpoint.resume`` = ``auto`` | ``none`` | a path; a resume refuses a changed model, data
  or batch size (naming the field) and applies a changed ``optim.*``; final weights exported as
  safetensors and in transformers' FLAVA layout (``<run_dir>/final``).
* faults: a non-finite loss or gradient skips the update on every rank (never checkpointed);
  ``max_nonfinite`` in a row stop the run; SIGTERM saves a checkpoint and exits cleanly.
* logging: progress bar (rank 0); every ``log_every`` steps per-objective losses, lr, logit
  scale, grad norm, samples/s and memory to ``metrics.jsonl`` and TensorBoard; each objective's own
  gradient norm every ``grad_norms_every`` steps (``grad_norm/<objective>``); at the end
  ``losses.png`` and ``summary.txt``.
* evaluation: every ``eval_every`` steps (and at the start and end), held-out losses of every
  objective and zero-shot image<->text retrieval R@1/5 on ``eval_samples`` held-out pairs, and the
  mean pairwise cosine of the held-out image and text embeddings (``health/*``); one warning, in
  plain words with the keys to try, when a tower has collapsed or the contrastive loss is still at
  chance after ``health.stuck_after`` steps (``health.collapse_cosine``, ``health.chance_margin``,
  ``health.enabled``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

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
    make_stream_loader,
    read_token_info,
    recipe_data_paths,
    resolve_shards,
)
from mmkit.eval import HealthConfig, HealthMonitor, retrieval_recall
from mmkit.masking import BlockMaskGenerator, TokenMasker
from mmkit.models import (
    RANDOM_CODEBOOK,
    FLAVAConfig,
    FLAVAForPreTraining,
    flava_model_for_pretraining,
    init_towers,
    random_codebook,
    resolve_codebook_config,
    resolve_tower_configs,
)
from mmkit.tokenizers import TextTokenizer, tokenizer_fingerprint, tokenizer_for_run
from mmkit.train import (
    PRECISIONS,
    CheckpointConfig,
    MetricsLogger,
    OptimConfig,
    autocast,
    debug_enabled,
    full_state_dict,
    loop_options,
    memory_mib,
    objective_grad_norms,
    parallelize,
    plot_run,
    prepare_training,
    read_scalar,
    recipe_arg_parser,
    run_cli,
    run_training,
    start_run,
    summarize_run,
    train_loop,
    unwrap,
)
from mmkit.utils import ConfigError, at_least, choice, file_lock, fraction
from mmkit.utils import load_config as load_recipe_config


@dataclass
class DataConfig:
    dataset: str = choice("shapes", "files")
    train_pairs: list[str] = field(default_factory=list)
    val_pairs: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    tokenizer: str | None = None  # vocab.txt / tokenizer.json / directory; None: train on the text data
    vocab_size: int = at_least(1, 1000)
    max_length: int = at_least(1, 32)
    pair_prob: float = fraction(0.70)
    image_prob: float = fraction(0.15)
    text_prob: float = fraction(0.15)
    batch_size: int = at_least(1, 32)  # per rank
    num_workers: int = at_least(0, 1)
    itm_negative_prob: float = fraction(0.1)
    random_crop: bool = False
    max_bad_fraction: float = fraction(0.01)
    cached_tokens: bool = True  # use tokenizer ids cached in the shards when every sample has them
    # Tar shards are streamed (read front to back: any size, local or s3:// gs:// http(s)://, memory
    # of one shuffle window per worker) unless streaming=false (index mode: every header read at start).
    streaming: bool = True
    shuffle_buffer: int = at_least(1, 1000)  # streaming: samples per shuffle window per data worker
    # One resize chain per image and uint8 until the device (ImageTransformConfig.fast): less CPU per
    # sample in the workers; off by default because the released FLAVA resizes the tokenizer input apart.
    fast_images: bool = False
    # worker: PIL in the data workers; device: JPEGs decoded on the training device (nvJPEG on CUDA), the
    # workers reading only headers (implies fast_images); for when the workers cannot keep up
    image_decode: str = choice("worker", "device")
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options, e.g. {endpoint_url: ...}


@dataclass
class PretrainConfig:
    run_dir: str = "runs/flava"
    seed: int = 0
    preset: str = choice("full", "tiny")
    model: dict[str, Any] = field(default_factory=dict)  # FLAVAConfig overrides
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(  # the paper's AdamW: lr 1e-3, wd 0.1, 10k warmup, 150k steps
        default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=10000, total_steps=150000)
    )
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: str = choice("ddp", "fsdp", "none")
    precision: str = choice(*PRECISIONS)
    activation_checkpointing: bool = False
    # none | layers | step (a Literal, so that the old true/false fail at load naming the three values)
    compile: Literal["none", "layers", "step"] = "none"
    log_every: int = at_least(1, 10)
    # per-objective gradient norms (grad_norm/<objective>) on the first paired batch from every N-th step:
    # one extra backward per objective there; 0 = off. Not under distributed=fsdp or compile != none.
    grad_norms_every: int = at_least(0, 100)
    eval_every: int = at_least(1, 1000)
    eval_samples: int = at_least(1, 512)
    eval_at_start: bool = True
    health: HealthConfig = field(default_factory=HealthConfig)  # when an evaluation calls the run stuck
    max_nonfinite: int = at_least(1, 5)
    progress: bool = True


# What a checkpoint's run must share with the resuming one (anything else may change, e.g. optim.lr).
FROZEN_DATA = ("dataset", "train_pairs", "val_pairs", "images", "text", "tokenizer", "vocab_size", "max_length",
               "batch_size", "num_workers", "pair_prob", "image_prob", "text_prob", "itm_negative_prob",
               "random_crop", "cached_tokens", "streaming", "shuffle_buffer", "fast_images",
               "image_decode")  # fmt: skip
FROZEN = ("seed", "preset", "model", "optim.grad_accum", *(f"data.{k}" for k in FROZEN_DATA))


def frozen_fields(cfg) -> tuple[str, ...]:
    """:data:`FROZEN`, except that streamed data may change its number of workers on resume (the rest
    of each begun epoch is dealt to the new workers)."""
    return tuple(f for f in FROZEN if not (cfg.data.streaming and f == "data.num_workers"))


def load_config(path: str | None, overrides: list[str]) -> PretrainConfig:
    """YAML file, then ``key=value`` overrides; unknown keys and bad values raise, naming them."""
    cfg = load_recipe_config(PretrainConfig, path, overrides)
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
            "pretraining.mim_target", "model.pretraining.mim_target")  # fmt: skip
        raise ConfigError(f"invalid config: model.codebook: {problem}, or model.codebook.allow_random=true to train "
                          "on it anyway")  # fmt: skip
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
    """The built-in data's image tokenizer, made once on first use beside the data (``<data>-dvae/``):
    ``recipes/dalle/configs/shapes_tiny.yaml`` trained in one process (seed 0, ~2 minutes on 2 CPU cores),
    then the built-in training pairs and images with its ids cached (``python -m mmkit.tokenizers.cache``),
    so that pretraining reads the ids instead of running the tokenizer in the step. Every rank may call
    this: one makes it under a file lock, the others wait. ``steps`` shortens the training (tests).

    Returns:
        ``(tokenizer folder, cached training pair shards, cached image shards)``.
    """
    from mmkit.tokenizers.cache import main as cache_ids

    root = Path(paths.root).parent / f"{Path(paths.root).name}-dvae"
    config = RECIPES / "dalle/configs/shapes_tiny.yaml"
    spec = f"{config.name} {hash_file(config)}"
    done = root / "DONE"

    def listing() -> tuple[Path, list[Path], list[Path]]:
        return root / "final", sorted((root / "pairs").glob("*.tar")), sorted((root / "images").glob("*.tar"))

    if done.is_file() and done.read_text() == spec:
        return listing()
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        if done.is_file() and done.read_text() == spec:
            return listing()
        print(f"making the built-in image tokenizer (once, in {root}): {config.name}", file=sys.stderr, flush=True)
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
        env.update(OMP_NUM_THREADS=str(os.cpu_count() or 1))
        pictures = json.dumps([str(p) for p in (*paths.train_pairs, *paths.images)])  # what data.dataset=shapes reads
        cmd = [sys.executable, str(RECIPES / "dalle/train_tokenizer.py"), "--config", str(config),
               f"run_dir={root / 'run'}", "distributed=none", "progress=false", "checkpoint.resume=none",
               "data.dataset=files", f"data.images={pictures}",
               f"data.val_images={json.dumps([str(p) for p in paths.val_pairs])}"]  # fmt: skip
        if steps is not None:
            cmd += [f"optim.total_steps={steps}", f"objective.temperature_steps={steps}", "optim.warmup_steps=1",
                    f"objective.kl_warmup_steps={steps}", f"checkpoint.every={steps}", f"eval_every={steps}",
                    f"image_every={steps}"]  # fmt: skip
        done_run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done_run.returncode:
            raise RuntimeError(f"training the built-in image tokenizer failed:\n{done_run.stderr[-3000:]}")
        shutil.rmtree(root / "final", ignore_errors=True)  # a half-made one from an interrupted first use
        os.replace(root / "run" / "final", root / "final")
        for name, shards in (("pairs", paths.train_pairs), ("images", paths.images)):
            cache_ids(["--shards", *map(str, shards), "--tokenizer", str(root / "final"), "--out", str(root / name),
                       "--device", "cpu"])  # fmt: skip
        done.write_text(spec)
    return listing()


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")  # fmt: skip


def hash_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class FLAVAPretrainRecipe:
    """setup -> train (evaluate, checkpoints) -> export; see the module docstring."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self._grad_norms_due = False  # a grad_norms_every step began; measured on its next paired batch
        self._grad_norms: dict[str, torch.Tensor] = {}

    # -- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self.ctx = ctx = start_run(cfg, cfg.run_dir, cfg.seed)
        self.run_dir = ctx.run_dir
        self.tokenizer = self._tokenizer(self._data_paths())
        self.model_cfg = model_config(cfg, self.tokenizer.vocab_size, self.codebook)
        self._setup_data()
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.raw_model: FLAVAForPreTraining = flava_model_for_pretraining(self.model_cfg)
        self._init_towers()
        self.raw_model.to(ctx.device)
        self._check_cached_tokens(self.raw_model)
        bf16_params = cfg.precision == "bf16" and cfg.distributed == "fsdp"
        self.model = parallelize(self.raw_model, ctx.info, cfg.distributed, cfg.activation_checkpointing,
                                 cfg.compile, bf16_params=bf16_params)  # fmt: skip
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

    def _init_towers(self) -> None:
        """``model.image.init_from`` / ``model.text.init_from``: copy CLIP/SigLIP towers in, report what was
        taken and what is new (``<run_dir>/tower_report.txt``). A resumed run then loads its checkpoint."""
        mcfg = self.model_cfg
        if mcfg.text.init_from and mcfg.text.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"the text tower of {mcfg.text.init_from} has {mcfg.text.vocab_size} ids but the tokenizer has "
                f"{self.tokenizer.vocab_size}: set data.tokenizer to the tokenizer the tower was trained with"
            )
        reports = init_towers(self.raw_model.model, mcfg)
        if reports and self.ctx.is_main:
            text = "\n".join(str(r) for r in reports)
            (self.run_dir / "tower_report.txt").write_text(text + "\n")
            print(text, flush=True)

    def _data_paths(self) -> tuple[list, list, list, list]:
        """(train pairs, val pairs, images, text) of the built-in dataset or the config; with the built-in
        tokenizer (``model.codebook.checkpoint=builtin``) the built-in shards holding its ids."""
        d = self.cfg.data
        self.paths = recipe_data_paths(d.dataset, d.train_pairs, d.val_pairs, d.images, d.text)
        self.codebook = None
        mcfg = model_config(self.cfg)
        if mcfg.codebook.checkpoint == BUILTIN_TOKENIZER and mcfg.pretraining.mim_target == "tokens":
            from mmkit.data import shapes_dataset

            self.codebook, pairs, images = builtin_tokenizer(shapes_dataset())
            if d.dataset == "shapes" and d.cached_tokens:
                self.paths = (pairs, self.paths[1], images, self.paths[3])
        return self.paths

    def _tokenizer(self, paths) -> TextTokenizer:
        d, ctx = self.cfg.data, self.ctx
        return tokenizer_for_run(d.tokenizer, paths[3], d.vocab_size, d.max_length, self.run_dir,
                                 is_main=ctx.is_main, barrier=ctx.comm.barrier)  # fmt: skip

    def _setup_data(self) -> None:
        cfg, d, mcfg, info = self.cfg, self.cfg.data, self.model_cfg, self.ctx.info
        train_pairs, self.val_pairs, images, text = self.paths
        pixels = mcfg.pretraining.mim_target == "pixels"  # pixel-regression MIM needs no tokenizer input
        self.transform = FLAVAImageTransform(ImageTransformConfig(image_size=mcfg.image.image_size,
            codebook_image_size=0 if pixels else mcfg.codebook.image_size, random_crop=d.random_crop,
            fast=d.fast_images, decode=d.image_decode))  # fmt: skip
        self.block_masker = BlockMaskGenerator.flava(mcfg.image.image_size // mcfg.image.patch_size)
        tok = self.tokenizer
        self.token_masker = TokenMasker(tok.vocab_size, tok.mask_token_id, tok.special_token_ids, tok.pad_token_id)
        self.cached_tokens: dict[str, dict] = {}
        common = dict(rank=info.rank, world_size=info.world_size, seed=cfg.seed, num_workers=d.num_workers)
        pair_collate = PairCollator(self.block_masker, self.token_masker, d.itm_negative_prob)
        loaders = {"pairs": (self._image_loader(train_pairs, "pair", "pairs", pair_collate), d.pair_prob)}
        if images and d.image_prob > 0:
            loaders["images"] = (self._image_loader(images, "image", "images", ImageCollator(self.block_masker)),
                                 d.image_prob)  # fmt: skip
        if text and d.text_prob > 0:
            text_collate = TextCollator(self.token_masker)
            if d.streaming:
                loader = make_stream_loader(text, "text", text_collate, d.batch_size, name="text", tokenizer=tok,
                                            buffer_size=d.shuffle_buffer, storage_options=d.storage_options or None,
                                            **common)  # fmt: skip
            else:
                ds = FLAVADataset(TextLines(text, name="text"), "text", tokenizer=tok, seed=cfg.seed)
                loader = make_loader(ds, text_collate, d.batch_size, **common)
            loaders["text"] = (loader, d.text_prob)
        self.stream = MixedBatches(loaders, seed=cfg.seed, max_bad_fraction=d.max_bad_fraction)

    def _image_loader(self, patterns: list[str], kind: str, name: str, collate):
        """Streamed (``data.streaming``) or indexed tar shards of ``kind`` batches."""
        d, info = self.cfg.data, self.ctx.info
        common = dict(rank=info.rank, world_size=info.world_size, seed=self.cfg.seed, num_workers=d.num_workers)
        tok = self.tokenizer if kind == "pair" else None
        if d.streaming:
            options = d.storage_options or None
            shards = resolve_shards(patterns, options)
            wants_ids = d.cached_tokens and self.model_cfg.pretraining.mim_target == "tokens"
            cached = self._cached_tokens(name, read_token_info(shards[0], options) if wants_ids else None)
            return make_stream_loader(shards, kind, collate, d.batch_size, name=name, tokenizer=tok,
                                      image_transform=self._transform(cached), image_tokens=cached,
                                      buffer_size=d.shuffle_buffer, storage_options=options, **common)  # fmt: skip
        source = TarShards(patterns, require_text=kind == "pair", name=name)
        cached = self._cached_tokens(name, source.token_info)
        dataset = FLAVADataset(source, kind, self._transform(cached), tok, seed=self.cfg.seed, image_tokens=cached)
        return make_loader(dataset, collate, d.batch_size, **common)

    def _transform(self, cached: bool) -> FLAVAImageTransform:
        """With cached ids the encoder image needs no tokenizer input."""
        return FLAVAImageTransform(replace(self.transform.config, codebook_image_size=0)) if cached else self.transform

    def _cached_tokens(self, name: str, token_info: dict | None) -> bool:
        """Whether ``name``'s shards carry tokenizer ids (``python -m mmkit.tokenizers.cache``) to use instead
        of the codebook; they are checked against the model once it exists. Streamed shards are judged by
        their first shard; a later sample without ids is a skipped record."""
        d = self.cfg.data
        cached = token_info is not None and d.cached_tokens and self.model_cfg.pretraining.mim_target == "tokens"
        if cached and d.random_crop:
            raise ValueError(
                f"{name}: cached token ids were made from a centre crop; with data.random_crop=true the "
                "encoder image would show another crop than its targets. Set data.random_crop=false or "
                "data.cached_tokens=false (tokenize in the loop)"
            )
        if cached:
            self.cached_tokens[name] = token_info
        return cached

    def _check_cached_tokens(self, model: FLAVAForPreTraining) -> None:
        """Cached ids must come from this run's tokenizer, input size and patch grid."""
        if not self.cached_tokens:
            return
        if model.image_tokenizer is None:
            raise ValueError("cached token ids need the tokenizer they came from: set model.codebook.checkpoint")
        cb, img = self.model_cfg.codebook, self.model_cfg.image
        grid, mine = img.image_size // img.patch_size, tokenizer_fingerprint(model.image_tokenizer.encoder)
        for name, info in self.cached_tokens.items():
            problems = [
                f"tokenizer {info.get('fingerprint')} != configured {mine} (model.codebook.checkpoint={cb.checkpoint})"
                if info.get("fingerprint") != mine else None,
                f"input size {info.get('image_size')} != codebook.image_size {cb.image_size}"
                if info.get("image_size") != cb.image_size else None,
                f"token grid {info.get('grid')} != patch grid {[grid, grid]}"
                if list(info.get("grid", [])) != [grid, grid] else None,
            ]  # fmt: skip
            if any(problems):
                raise ValueError(
                    f"the cached token ids in {name} do not fit this run: {'; '.join(p for p in problems if p)}. "
                    "Re-run python -m mmkit.tokenizers.cache with the configured tokenizer, "
                    "or set data.cached_tokens=false"
                )
        self.ctx.print(f"cached tokenizer ids in {', '.join(self.cached_tokens)}: the codebook is skipped there")

    # -- training -----------------------------------------------------------------------------
    def train(self) -> None:
        cfg = self.cfg
        if not self.resumed and cfg.eval_at_start:
            self.metrics.log(0, self.evaluate(), split="eval")
        done = train_loop(
            self.ctx, self.state, self._train_step,
            on_log=self._log, on_eval=lambda step: self.metrics.log(step, self.evaluate(), split="eval"),
            desc="pretrain", **loop_options(cfg),
        )  # fmt: skip
        if done:
            self.metrics.log(self.state.step, self.evaluate(), split="eval")
            self.export()

    def _train_step(self, step: int):
        every = self.cfg.grad_norms_every
        if every and step % every == 0 and self._grad_norms_supported():
            self._grad_norms_due = True
        return self.step(self._next_batch, self._forward, step)

    def _grad_norms_supported(self) -> bool:
        cfg = self.cfg
        return cfg.distributed != "fsdp" and cfg.compile == "none"

    def _forward(self, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training forward; on a due step's paired batch it also measures each objective's gradient
        norm (weighted as in the total, before clipping; this rank's batch) for the next log record."""
        out = model(**batch.model_inputs())
        if self._grad_norms_due and out.kind == "pair":
            self._grad_norms_due = False
            weights = asdict(self.model_cfg.pretraining.weights)
            norms = objective_grad_norms(out.losses, self.raw_model.parameters(), weights)
            self._grad_norms = {f"grad_norm/{k}": v for k, v in norms.items()}
        return out.loss, out.losses

    def _next_batch(self) -> FLAVABatch:
        """The next batch on the device (``data.fast_images``: normalised there; ``data.image_decode=device``:
        its JPEGs decoded there)."""
        return self.transform.finish(next(self.stream).to(self.ctx.device))

    def _log(self, step: int, record: dict[str, float], outcome) -> None:
        record.update(lr=self.step.scheduler.get_last_lr()[0],
                      logit_scale=read_scalar(self.raw_model.model.logit_scale), memory_mib=memory_mib(self.ctx.device),
                      nonfinite_total=self.state.counters.nonfinite_total)  # fmt: skip
        norms = self._grad_norms
        if norms:  # measured on a paired batch since the last record
            record.update(zip(norms, torch.stack(list(norms.values())).tolist(), strict=True))
            self._grad_norms = {}
        self.metrics.log(step, record)

    # -- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out losses of every objective and retrieval R@1/5 (the same data on every rank); eager, on
        the exact masked positions, whatever ``compile`` is (no graphs compiled for evaluation batches)."""
        model = unwrap(self.model)
        model.eval()
        self.raw_model.contrastive.gather = False
        static, self.raw_model.static_shapes = self.raw_model.static_shapes, False
        try:
            with torch.compiler.set_stance("force_eager"):
                return self._evaluate(model)
        finally:
            self.raw_model.contrastive.gather = True
            self.raw_model.static_shapes = static
            model.train()

    @functools.cached_property
    def _val_dataset(self) -> FLAVADataset:
        """The held-out pairs, indexed once (not at every evaluation)."""
        return FLAVADataset(TarShards(self.val_pairs, name="val"), "pair", self.transform, self.tokenizer, seed=1)

    def _evaluate(self, model) -> dict[str, float]:
        d, ds = self.cfg.data, self._val_dataset
        source = ds.source
        n = min(self.cfg.eval_samples, len(ds))
        weights = self.model_cfg.pretraining.weights
        collators = [PairCollator(self.block_masker, self.token_masker, d.itm_negative_prob, seed=1)]
        if weights.active("mim"):  # an image-only batch trains MIM only, a text-only one MLM only
            collators.append(ImageCollator(self.block_masker, seed=2))
        if weights.active("mlm"):
            collators.append(TextCollator(self.token_masker, seed=3))
        sums, counts, img_emb, txt_emb, skipped = {}, {}, [], [], []
        for start in range(0, n, d.batch_size):
            samples = [ds[(0, 0, i)] for i in range(start, min(n, start + d.batch_size))]
            skipped += [s for s in samples if not isinstance(s, dict)]
            samples = [s for s in samples if isinstance(s, dict)]
            if not samples:  # every pair of this batch is corrupt: nothing to collate
                continue
            for collate in collators:
                batch = self.transform.finish(collate(samples).to(self.ctx.device))
                with autocast(self.cfg.precision, self.ctx.device):
                    out = model(**batch.model_inputs())
                for k, v in out.losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(samples)
                    counts[k] = counts.get(k, 0) + len(samples)
                if batch.kind == "pair":  # retrieval over the matched pairs (clean inputs)
                    matched = batch.itm_labels.bool()
                    img_emb.append(out.image_embedding[matched].float().cpu())
                    txt_emb.append(out.text_embedding[matched].float().cpu())
        if not counts:
            where = ", ".join(str(p) for p in source.paths[:3]) + (" ..." if len(source.paths) > 3 else "")
            raise ValueError(
                f"none of the first {n} held-out pairs of source {source.name!r} ({where}) could be read "
                f"({len(skipped)} skipped): check data.val_pairs; latest: "
                + "; ".join(f"{s.key} ({s.reason})" for s in skipped[-3:])
            )
        img, txt = torch.cat(img_emb), torch.cat(txt_emb)
        metrics = {f"loss/{k}": sums[k] / counts[k] for k in sums}
        if len(img):  # retrieval needs matched pairs (every read pair may have drawn an ITM negative)
            metrics.update({f"retrieval/{k}": v for k, v in retrieval_recall(img, txt, ks=(1, 5)).items()})
            metrics["retrieval/chance_r1"] = 1.0 / len(img)
        if len(img) > 1:  # collapsed towers, a contrastive loss still at chance: warned once (health.*)
            loss = metrics.get("loss/global_contrastive")
            metrics.update(self.health(self.state.step, img, txt, loss, min(d.batch_size, n)))
        return metrics

    # -- export -------------------------------------------------------------------------------
    def export(self) -> None:
        """Final weights: ``final/model.safetensors`` (mmkit names) and ``final/hf`` (transformers, when its
        FLAVA can express the model: not with CLIP towers' input LayerNorm, for example)."""
        from safetensors.torch import save_file

        from mmkit.convert import save_hf_checkpoint
        from mmkit.models import hf_unsupported

        tensors = full_state_dict(self.model)
        if self.ctx.is_main:
            out = self.run_dir / "final"
            out.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(out / "model.safetensors"))
            (out / "config.json").write_text(json.dumps(self.model_cfg.to_dict(), indent=2))
            unsupported = hf_unsupported(self.model_cfg)
            if unsupported:  # e.g. CLIP towers: an input LayerNorm transformers' FLAVA has no place for
                print(f"no final/hf: transformers' FLAVA cannot express {', '.join(unsupported)}", flush=True)
            else:
                fresh = flava_model_for_pretraining(self.model_cfg)
                fresh.load_state_dict(tensors)
                save_hf_checkpoint(fresh, out / "hf")
            self.tokenizer.save(out / "tokenizer")
            plot_run(self.run_dir)
            nonfinite = self.state.counters.nonfinite_total
            summary = summarize_run(self.run_dir) + f"\nnon-finite steps skipped: {nonfinite}\n"
            (self.run_dir / "summary.txt").write_text(summary)
            print(summary, flush=True)
        self.ctx.comm.barrier()


def main(argv: list[str] | None = None) -> int:
    parser = recipe_arg_parser(__doc__)
    parser.add_argument("--plot", metavar="RUN_DIR", help="plot and summarise a finished run, then exit")
    args = parser.parse_intermixed_args(argv)

    def run() -> int:
        if args.plot:
            print(f"wrote {plot_run(args.plot)}")
            print(summarize_run(args.plot))
            return 0
        return run_training(FLAVAPretrainRecipe(load_config(args.config, args.overrides)))

    return run_cli(run, debug_enabled(args))


if __name__ == "__main__":
    sys.exit(main())
