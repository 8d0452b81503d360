"""The pretraining recipe skeleton: setup -> train (evaluations, checkpoints) -> export, once for every model.

A recipe subclasses :class:`PretrainRecipe` and provides what is its model's own:

* :meth:`~PretrainRecipe.model_config` (from ``cfg``, the run's tokenizer and the :class:`DataPaths`),
* :meth:`~PretrainRecipe.image_transform` and :meth:`~PretrainRecipe.loaders` (its sources and their mix, and
  how held-out pairs become batches: one :class:`RecipeData`),
* :meth:`~PretrainRecipe.build_model` (the pretraining module on ``ctx.device``, checked against the
  :class:`RecipeData`),
* :meth:`~PretrainRecipe.exported_config`, :meth:`~PretrainRecipe.exported_state` and
  :meth:`~PretrainRecipe.hf_exporter` (what it exports; the files, the tokenizer, the plot and the
  summary are written here).

Each hook returns what it makes and :meth:`~PretrainRecipe.setup` hands it to the hooks that need it, top to
bottom: ``data_paths() -> paths``, ``model_config(paths)``, ``image_transform()``, ``loaders(paths) -> data``,
``build_model(data)``.

The skeleton does the rest the same way for every model: holding the run directory, the tokenizer,
one start line per data source (:class:`~mmkit.data.TrainingSource`), parallelising (DDP / FSDP2,
activation checkpointing, ``torch.compile``), the optimiser and exact resume (``mmkit.train``), the
training loop, logging, held-out evaluation (losses, image<->text retrieval, tower health) and the
export tail. A pretraining model implements :class:`~mmkit.train.Parallelizable` (its ``gathering_losses``
are sized here to the per-rank batch), must return an output with ``loss``, ``losses``,
``image_embedding`` and ``text_embedding``, keep its dual encoder in ``.model`` (with
``logit_scale`` and ``clamp_logit_scale``), have ``set_cross_rank(enabled)`` and may name in
``chance_loss`` the loss whose chance level is ``ln(batch)`` (the health check's reference). For
gradient accumulation whose contrastive loss sees the whole accumulated batch
(:meth:`~PretrainRecipe.whole_batch_forward`) it also has ``loss_parameters()``,
``whole_batch_loss(rows, params)`` and the forward's ``embed_only`` / ``embedding_grads`` passes
(``contrastive_rows`` and ``gradient_term`` in its output).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmkit.data import LoaderOptions, MixedBatches, SampleDataset, TrainingSource, heldout_source, recipe_data_paths
from mmkit.eval import HealthMonitor, retrieval_recall
from mmkit.models import EmbeddingGrads
from mmkit.pretrain.config import RunConfig, frozen_fields, whole_batch
from mmkit.tokenizers import TextTokenizer, tokenizer_for_run
from mmkit.train import (
    MetricsLogger,
    PerfMeter,
    TrainingRecipe,
    WholeBatchForward,
    autocast,
    full_state_dict,
    loop_options,
    memory_mib,
    parallelize,
    plot_run,
    prepare_training,
    read_scalar,
    require_parallelizable,
    start_run,
    summarize_run,
    train_loop,
    unwrap,
)
from mmkit.utils import InputError, config_to_dict, load_strict, set_sample_limit

__all__ = ["DataPaths", "PretrainRecipe", "RecipeData", "whole_batch_forward"]


@dataclass(frozen=True)
class DataPaths:
    """The run's data files (:meth:`PretrainRecipe.data_paths`): tar shard patterns, URLs or text files.
    A recipe may subclass it to carry a file that belongs with its data (FLAVA: the built-in image tokenizer)."""

    train_pairs: list
    val_pairs: list
    images: list = field(default_factory=list)  # image-only shards
    text: list = field(default_factory=list)  # text-only files (and the tokenizer's training text)


@dataclass
class RecipeData:
    """What :meth:`PretrainRecipe.loaders` makes.

    Args:
        loaders: ``{source name: (loader, probability)}`` for :class:`~mmkit.data.MixedBatches`.
        eval_collators: makes the collators held-out pairs are scored through (the first makes paired batches),
            called afresh for every held-out batch: each evaluation masks and pairs the same samples alike, so
            evaluations at different steps score the same inputs.
        cached_tokens: ``{source name: what its cached image-tokenizer ids were made with}`` for the sources read
            with them (:meth:`~mmkit.data.TrainingSource.cached_ids`): the model's tokenizer is checked against
            them in :meth:`PretrainRecipe.build_model`.
    """

    loaders: dict[str, tuple[Any, float]]
    eval_collators: Callable[[], list[Callable]]
    cached_tokens: dict[str, dict] = field(default_factory=dict)


class PretrainRecipe(TrainingRecipe):
    """The shared skeleton of a pretraining recipe (see the module docs for what a subclass provides).

    Attributes set by :meth:`setup`, in this order: ``ctx`` (the run context), ``run_dir``, ``paths``
    (:class:`DataPaths`), ``tokenizer``, ``model_cfg``, ``transform``, ``loader_options``
    (:class:`~mmkit.data.LoaderOptions`), ``sources`` (name ->
    :class:`~mmkit.data.TrainingSource`, filled by :meth:`source`), ``data`` (:class:`RecipeData`), ``stream``,
    ``raw_model`` / ``model`` (before and after parallelising), ``step``, ``state``, ``resumed``, ``metrics``,
    ``health``. A hook may read those set before it is called; what one hook makes for another it returns.
    """

    #: the progress bar's label
    desc = "pretrain"
    #: extra :func:`~mmkit.train.parallelize` arguments
    parallel_options: dict[str, Any] = {}  # noqa: RUF012 (read only)

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    # -- what a recipe provides ------------------------------------------------------------------
    def data_paths(self) -> DataPaths:
        """The built-in set's files or the configured patterns."""
        d = self.cfg.data
        return DataPaths(*recipe_data_paths(d.dataset, d.train_pairs, d.val_pairs, getattr(d, "images", []), d.text))

    def model_config(self, paths: DataPaths) -> Any:
        """The model's config (``self.tokenizer`` is set: its vocabulary belongs in it)."""
        raise NotImplementedError

    def image_transform(self):
        """The image transform of training and held-out samples (``self.model_cfg`` is set)."""
        raise NotImplementedError

    def loaders(self, paths: DataPaths) -> RecipeData:
        """The training loaders and their mix, and the held-out collators; make each source with :meth:`source`
        and its loader with :meth:`source_loader`."""
        raise NotImplementedError

    def build_model(self, data: RecipeData) -> nn.Module:
        """The pretraining model on ``self.ctx.device`` (the RNG is seeded alike on every rank), checked against
        ``data`` where it must agree (cached tokenizer ids); with ``meta_init`` it is called under
        ``torch.device("meta")`` and must leave the model there."""
        raise NotImplementedError

    def materialize(self, model: nn.Module) -> None:
        """Give a model built on the meta device (and wrapped: under FSDP2 each rank holds its shard)
        storage on ``self.ctx.device`` and its initial values. A recipe that supports ``meta_init``
        overrides this."""
        raise InputError(f"meta_init=true: {type(self).__name__} cannot build its model on the meta device")

    def exported_config(self) -> dict[str, Any]:
        """``final/config.json``: what rebuilds the exported model."""
        raise NotImplementedError

    def exported_state(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``final/model.safetensors`` from the full state dict of the trained module (default: all of it)."""
        return tensors

    def hf_exporter(self) -> tuple[Callable[[Any], nn.Module], Callable[[nn.Module, Path], Any]] | None:
        """``(build the exported module from model_cfg, write a module in transformers' layout)`` for
        ``final/hf``, or None where transformers cannot express the model."""
        return None

    def log_extra(self, record: dict[str, float]) -> None:
        """Add the recipe's own values to a training log record."""

    def forward(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training forward: ``(loss, per-objective losses)``."""
        out = model(**batch.model_inputs())
        self.on_output(out)
        return out.loss, out.losses

    def on_output(self, out: Any) -> None:
        """Look at a training forward's output while its graph is alive (FLAVA: per-objective gradient norms)."""

    def whole_batch_forward(self) -> WholeBatchForward:
        """The step's forward when the contrastive loss sees the whole accumulated batch (:func:`whole_batch`)."""
        return whole_batch_forward(self.raw_model, self.forward, self.on_output)

    @property
    def train_text_length(self) -> int | None:
        """The length training captions are padded to: ``data.max_length`` under ``compile: step`` (one
        text shape, one graph per batch kind: a new length would compile again), else the batch's longest."""
        return self.cfg.data.max_length if self.cfg.compile == "step" else None

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        accum = cfg.optim.grad_accum if whole_batch(cfg) else 1  # refuses compile=step with the two passes
        set_sample_limit(d.max_sample_bytes)  # before any loader worker forks: they read with it
        self.ctx = ctx = start_run(cfg, cfg.run_dir, cfg.seed)
        self.run_dir = ctx.run_dir
        self.paths = paths = self.data_paths()
        self.tokenizer: TextTokenizer = tokenizer_for_run(
            d.tokenizer,
            paths.text,
            d.vocab_size,
            d.max_length,
            self.run_dir,
            is_main=ctx.is_main,
            barrier=ctx.comm.barrier,
            storage_options=d.storage_options or None,
        )
        self.model_cfg = self.model_config(paths)
        self.transform = self.image_transform()
        self.sources: dict[str, TrainingSource] = {}
        self.loader_options = LoaderOptions.from_config(d, ctx.info, cfg.seed)  # made once, read by every loader
        self.data = data = self.loaders(paths)
        self.stream = ctx.closing(MixedBatches(data.loaders, seed=cfg.seed, max_bad_fraction=d.max_bad_fraction))
        self.val_dataset = self._heldout(paths.val_pairs)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        with torch.device("meta") if cfg.meta_init else contextlib.nullcontext():
            self.raw_model = self.build_model(data)
        for loss in require_parallelizable(self.raw_model, "a pretraining model").gathering_losses():
            loss.rows_per_rank = d.batch_size * accum  # gathered padded: no host sync; compiles into a step on N ranks
        self.model = parallelize(
            self.raw_model,
            ctx.info,
            cfg.distributed,
            cfg.activation_checkpointing,
            cfg.compile,
            bf16_params=cfg.precision == "bf16" and cfg.distributed == "fsdp",
            **self.parallel_options,
        )
        if cfg.meta_init:
            self.materialize(self.raw_model)
        self.step, self.state = prepare_training(
            ctx,
            self.model,
            self.raw_model,
            optim=cfg.optim,
            precision=cfg.precision,
            checkpoint=cfg.checkpoint,
            components={"data": self.stream},
            frozen=frozen_fields(cfg),
            after_update=self.raw_model.model.clamp_logit_scale,
            perf=PerfMeter(ctx.device, cfg.precision, cfg.perf, patch_size=self.model_cfg.image.patch_size),
        )
        self.train_forward = self.whole_batch_forward() if accum > 1 else self.forward
        self.resumed = self.state.resume()
        self.metrics = ctx.closing(
            MetricsLogger(self.run_dir, enabled=ctx.is_main, log=cfg.log, config=config_to_dict(cfg))
        )
        self.health = HealthMonitor(cfg.health, warn=self.warn, warmup_steps=cfg.optim.warmup_steps)

    def warn(self, line: str) -> None:
        """One line on stderr, from rank 0."""
        if self.ctx.is_main:
            print(line, file=sys.stderr, flush=True)

    def source(self, patterns: list, kind: str, name: str) -> TrainingSource:
        """A training source of this run's data settings, resolved now and told in one line."""
        d = self.cfg.data
        source = TrainingSource(patterns, kind, name, streaming=d.streaming, storage_options=d.storage_options)
        self.sources[name] = source
        self.ctx.print(source.describe())
        return source

    def source_loader(self, source: TrainingSource, collate: Callable, transform=None, image_tokens: bool = False):
        """``source``'s loader with this run's loader options (batch size, workers, seed, rank) and tokenizer."""
        return source.loader(
            collate,
            self.loader_options,
            tokenizer=self.tokenizer,
            image_transform=transform or self.transform,
            image_tokens=image_tokens,
        )

    def _heldout(self, val_pairs: list) -> SampleDataset:
        """The held-out pairs (the first ``eval_samples``; behind a URL read once), told in one line."""
        d, n = self.cfg.data, self.cfg.eval_samples
        source = heldout_source(val_pairs, n, d.storage_options or None, name="val")
        shards = len(source.paths)
        self.ctx.print(
            f"data val: {shards} tar shard{'s' * (shards != 1)}, the first {min(n, len(source))} "
            f"samples held out for evaluation, from {', '.join(map(str, val_pairs[:2]))}"
            f"{' ...' if len(val_pairs) > 2 else ''}"
        )
        return SampleDataset(source, "pair", self.transform, self.tokenizer, seed=1)

    # -- training ----------------------------------------------------------------------------------
    def train(self) -> None:
        cfg = self.cfg
        if not self.resumed and cfg.eval_at_start:
            self.metrics.log(0, self.evaluate(), split="eval")
        done = train_loop(
            self.ctx,
            self.state,
            self.train_step,
            loop_options(cfg, self.desc),
            on_log=self.log,
            on_eval=lambda step: self.metrics.log(step, self.evaluate(), split="eval"),
        )
        if done:
            self.metrics.log(self.state.step, self.evaluate(), split="eval")
            self.export()

    def train_step(self, step: int):
        return self.step(self.next_batch, self.train_forward, step)

    def next_batch(self):
        """The next batch on the device (images normalised or JPEGs decoded there when the transform says)."""
        return self.transform.finish(next(self.stream).to(self.ctx.device))

    def log(self, step: int, record: dict[str, float], outcome) -> None:
        record.update(
            lr=self.step.scheduler.get_last_lr()[0],
            memory_mib=memory_mib(self.ctx.device),
            logit_scale=read_scalar(self.raw_model.model.logit_scale),
            nonfinite_total=self.state.counters.nonfinite_total,
        )
        self.log_extra(record)
        self.metrics.log(step, record)

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out losses, image<->text retrieval R@1/5 and tower health over the first ``eval_samples``
        held-out pairs. Every rank scores the same data within its own batch (no cross-rank scoring),
        eagerly whatever ``compile`` is."""
        model = unwrap(self.model)
        model.eval()
        self.raw_model.set_cross_rank(False)
        try:
            with torch.compiler.set_stance("force_eager"):
                return self._evaluate(model)
        finally:
            self.raw_model.set_cross_rank(True)
            model.train()

    def _heldout_batches(self, skipped: list) -> Iterator[list[dict]]:
        """Lists of up to ``data.batch_size`` readable held-out samples; the unreadable go to ``skipped``."""
        ds, size = self.val_dataset, self.cfg.data.batch_size
        n = min(self.cfg.eval_samples, len(ds))
        for start in range(0, n, size):
            samples = [ds[(0, 0, i)] for i in range(start, min(n, start + size))]
            skipped += [s for s in samples if not isinstance(s, dict)]
            samples = [s for s in samples if isinstance(s, dict)]
            if samples:
                yield samples

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        images, texts, skipped = [], [], []
        for samples in self._heldout_batches(skipped):
            for collate in self.data.eval_collators():
                batch = self.transform.finish(collate(samples).to(self.ctx.device))
                with autocast(self.cfg.precision, self.ctx.device):
                    out = model(**batch.model_inputs())
                for k, v in out.losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(samples)
                    counts[k] = counts.get(k, 0) + len(samples)
                if batch.kind == "pair":  # retrieval over the matched pairs (ITM negatives left out)
                    keep = slice(None) if batch.itm_labels is None else batch.itm_labels.bool()
                    images.append(out.image_embedding[keep].float().cpu())
                    texts.append(out.text_embedding[keep].float().cpu())
        if not counts:
            self._none_readable(skipped)
        return self._metrics({k: sums[k] / counts[k] for k in sums}, torch.cat(images), torch.cat(texts))

    def _none_readable(self, skipped: list) -> None:
        source = self.val_dataset.source
        n = min(self.cfg.eval_samples, len(source))
        where = ", ".join(str(p) for p in source.paths[:3]) + (" ..." if len(source.paths) > 3 else "")
        raise InputError(
            f"none of the first {n} held-out pairs of source {source.name!r} ({where}) could be read "
            f"({len(skipped)} skipped): check data.val_pairs; latest: "
            + "; ".join(f"{s.key} ({s.reason})" for s in skipped[-3:])
        )

    def _metrics(self, losses: dict[str, float], img: torch.Tensor, txt: torch.Tensor) -> dict[str, float]:
        metrics = {f"loss/{k}": v for k, v in losses.items()}
        if len(img):  # every read pair may have drawn an ITM negative
            metrics.update({f"retrieval/{k}": v for k, v in retrieval_recall(img, txt, ks=(1, 5)).items()})
            metrics["retrieval/chance_r1"] = 1.0 / len(img)
        if len(img) > 1:  # collapsed towers, a contrastive loss still at chance: warned once (health.*)
            chance = getattr(self.raw_model, "chance_loss", None)  # the loss at ln(batch) when nothing is learnt
            loss = metrics.get(f"loss/{chance}") if chance else None
            batch = min(self.cfg.data.batch_size, self.cfg.eval_samples, len(self.val_dataset))
            metrics.update(self.health(self.state.step, img, txt, loss, batch))
        return metrics

    # -- export ------------------------------------------------------------------------------------
    def export(self) -> None:
        """``<run_dir>/final``: ``model.safetensors`` (:meth:`exported_state`), ``config.json``
        (:meth:`exported_config`), ``hf/`` (:meth:`hf_exporter`) and ``tokenizer/``; then ``losses.png`` and
        ``summary.txt`` (with the number of non-finite steps skipped)."""
        from safetensors.torch import save_file

        tensors = full_state_dict(self.model)
        if self.ctx.is_main:
            out = self.run_dir / "final"
            out.mkdir(parents=True, exist_ok=True)
            state = self.exported_state(tensors)
            save_file(state, str(out / "model.safetensors"))
            (out / "config.json").write_text(json.dumps(self.exported_config(), indent=2))
            exporter = self.hf_exporter()
            if exporter is not None:
                build, save = exporter
                model = build(self.model_cfg)
                load_strict(model, state, "the run's final weights", target="export model")
                save(model, out / "hf")
            self.tokenizer.save(out / "tokenizer")
            plot_run(self.run_dir)
            skipped = self.state.counters.nonfinite_total
            summary = summarize_run(self.run_dir) + f"\nnon-finite steps skipped: {skipped}\n"
            (self.run_dir / "summary.txt").write_text(summary)
            print(summary, flush=True)
        self.ctx.comm.barrier()


def whole_batch_forward(
    raw_model: nn.Module, forward: Callable, on_output: Callable[[Any], None] | None = None
) -> WholeBatchForward:
    """The two passes of ``raw_model`` (a pretraining model, see the module docs) for a step whose contrastive
    loss sees the whole accumulated batch: its forward with ``embed_only`` (the first pass), its
    ``whole_batch_loss`` over every micro-batch's rows with its ``loss_parameters`` (whole tensors under
    FSDP2) and its forward with ``embedding_grads`` (the second pass, whose output ``on_output`` sees).
    ``forward(model, batch)`` is the one-pass forward; batches have ``model_inputs()``."""

    def embed(model: nn.Module, batch) -> dict[str, torch.Tensor] | None:
        return model(**batch.model_inputs(), embed_only=True).contrastive_rows or None

    def params() -> dict[str, torch.Tensor]:
        found = raw_model.loss_parameters().items()
        return {k: p.full_tensor() if hasattr(p, "full_tensor") else p for k, p in found}  # FSDP2: a DTensor

    def backprop(model: nn.Module, batch, rows: dict, param_grads: dict):
        out = model(**batch.model_inputs(), embedding_grads=EmbeddingGrads(rows, param_grads))
        if on_output is not None:
            on_output(out)
        return out.loss, out.losses, out.gradient_term

    return WholeBatchForward(forward, embed, params, raw_model.whole_batch_loss, backprop)
