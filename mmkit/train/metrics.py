"""Run logging: JSONL (always), TensorBoard (when installed), Weights & Biases (``log.wandb``), loss-curve
plots and a text summary.

Only rank 0 writes. ``metrics.jsonl`` holds one JSON object per logged step (``{"step": ...,
"split": "train" | "eval", ...}``); :func:`plot_run` reads it back, so a finished run
directory can be plotted again at any time::

    python -m mmkit.train.metrics RUN_DIR
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmkit.train.wandb_sink import WandbSink, require_wandb
from mmkit.utils.errors import MissingError

logger = logging.getLogger(__name__)


@dataclass
class LogConfig:
    """The ``log`` section: where metrics go besides ``metrics.jsonl`` (and TensorBoard when installed)."""

    # Weights & Biases (pip install -e ".[wandb]"), from rank 0; the run's id is kept in <run_dir>/wandb_run_id
    # so a resumed run continues the same W&B run; WANDB_MODE=offline writes <run_dir>/wandb/offline-run-*
    wandb: bool = False
    wandb_project: str = "mmkit"
    wandb_entity: str | None = None  # None: your default entity
    wandb_run_name: str | None = None  # None: the run directory's name

    def __post_init__(self) -> None:
        if self.wandb:
            require_wandb()  # a missing library is one line when the config is read, before any training


class MetricsLogger:
    """Append metrics to ``<run_dir>/metrics.jsonl``, TensorBoard (``<run_dir>/tb``) and, with ``log.wandb``,
    Weights & Biases (the same records as ``<split>/<key>`` at their step).

    Args:
        run_dir: the run directory. enabled: False on non-zero ranks (nothing is written).
        tensorboard: also write TensorBoard events (skipped with a warning if not installed).
        log: the ``log`` section (None: no W&B). config: the run's config (stored with the W&B run).
    """

    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool = True,
        tensorboard: bool = True,
        log: LogConfig | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        self._wandb: WandbSink | None = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if log is not None and log.wandb:
            self._wandb = WandbSink(self.run_dir, log.wandb_project, log.wandb_entity, log.wandb_run_name, config)
        self._file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:
                logger.warning("tensorboard is not installed: metrics go to metrics.jsonl only")

    def log(self, step: int, values: dict[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: float(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), step)
        if self._wandb is not None:
            self._wandb.log(step, {f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")})

    def close(self) -> None:
        """Close every sink (a second call does nothing)."""
        if self.enabled:
            self.enabled = False
            self._file.close()
            if self._tb is not None:
                self._tb.close()
            if self._wandb is not None:
                self._wandb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise MissingError(f"{path} does not exist: is {run_dir} a run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: str | Path) -> Path:
    """Plot per-objective train and eval losses of a run into ``<run_dir>/losses.png``, and the
    per-objective gradient norms (``grad_norm/<objective>`` records) in one more panel when logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    objectives = sorted(
        {k.removeprefix("loss/") for r in records for k in r if k.startswith("loss/") and k != "loss/total"}
    )
    norms = sorted({k for r in records for k in r if k.startswith("grad_norm/")})
    panels = 1 + len(objectives) + bool(norms)
    cols = 3
    rows = max(1, math.ceil(panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, ["total", *objectives], strict=False):
        for split, style in (("train", "-"), ("eval", "o-")):
            pts = [(r["step"], r[f"loss/{name}"]) for r in records if r["split"] == split and f"loss/{name}" in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=split, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    if norms:
        ax = axes.flat[panels - 1]
        for key in norms:
            pts = [(r["step"], r[key]) for r in records if key in r]
            ax.plot(*zip(*pts, strict=True), "o-", label=key.removeprefix("grad_norm/"), markersize=3)
        ax.set_yscale("log")
        ax.set_title("gradient norm by objective (paired batches)")
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(run_dir) / "losses.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def summarize_run(run_dir: str | Path) -> str:
    """A few lines: steps, first and last train losses, first and last eval metrics, and where the time
    went (the means of the train records' ``perf/*`` over the run)."""
    records = read_metrics(run_dir)
    lines = [f"run {run_dir}"]
    for split in ("train", "eval"):
        rs = [r for r in records if r["split"] == split]
        if not rs:
            continue
        first, last = rs[0], rs[-1]
        lines.append(f"{split}: {len(rs)} records, steps {first['step']} -> {last['step']}")
        for k in sorted(set(first) & set(last) - {"step", "split"}):
            if not k.startswith("perf/"):
                lines.append(f"  {k:34s} {first[k]:10.4f} -> {last[k]:10.4f}")
    perf = sorted({k for r in records if r["split"] == "train" for k in r if k.startswith("perf/")})
    if perf:
        lines.append("where the time goes (mean over the train records):")
    for k in perf:
        values = [r[k] for r in records if r["split"] == "train" and k in r]
        lines.append(f"  {k:34s} {sum(values) / len(values):10.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m mmkit.train.metrics RUN_DIR")
    print(f"wrote {plot_run(sys.argv[1])}")
    print(summarize_run(sys.argv[1]))
