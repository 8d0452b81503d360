"""Run logging: JSONL (always), TensorBoard (when installed), loss-curve plots and a text summary.

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
from pathlib import Path
from typing import Any

from mmkit.utils.errors import MissingError

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Append metrics to ``<run_dir>/metrics.jsonl`` and TensorBoard (``<run_dir>/tb``).

    Args:
        run_dir: the run directory. enabled: False on non-zero ranks (nothing is written).
        tensorboard: also write TensorBoard events (skipped with a warning if not installed).
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
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

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


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
    """A few lines: steps, first and last train losses, first and last eval metrics."""
    records = read_metrics(run_dir)
    lines = [f"run {run_dir}"]
    for split in ("train", "eval"):
        rs = [r for r in records if r["split"] == split]
        if not rs:
            continue
        first, last = rs[0], rs[-1]
        lines.append(f"{split}: {len(rs)} records, steps {first['step']} -> {last['step']}")
        for k in sorted(set(first) & set(last) - {"step", "split"}):
            lines.append(f"  {k:34s} {first[k]:10.4f} -> {last[k]:10.4f}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m mmkit.train.metrics RUN_DIR")
    print(f"wrote {plot_run(sys.argv[1])}")
    print(summarize_run(sys.argv[1]))
