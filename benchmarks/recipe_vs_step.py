"""The pretraining recipe's samples/s against the model step's, from the files two benchmark runs leave.

    python benchmarks/recipe_vs_step.py --run /tmp/run-full --sweep gpu_out/step_sweep.json --batch 64

``--run``: a recipe run directory (its ``metrics.jsonl``); the first ``--skip`` training records are left
out (compilation and warm-up fall in them) and the median of the rest is taken. ``--sweep``: the JSON
``benchmarks/flava_step.py --json`` writes; the step's samples/s of ``--model`` at ``--batch``. Prints one
line with both and their ratio (issue 23 asks for at least 0.9).

    python benchmarks/recipe_vs_step.py --sweep gpu_out/step_sweep.json --best-batch   # prints 128, say

prints the batch at which ``--model`` was fastest in the sweep (the recipe's batch in ``gpu_throughput.sh``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def recipe_samples_per_s(run: Path, skip: int) -> tuple[float, int]:
    """Median ``perf/samples_per_s`` of the training records after the first ``skip`` (``samples_per_s`` in runs
    logged before it had that name), and how many there were."""
    path = run / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: the recipe logged nothing (cut off before its first log step?)")
    records = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("split") == "train"]
    values = [r.get("perf/samples_per_s", r.get("samples_per_s")) for r in records]
    values = [v for v in values if v is not None][skip:]
    if not values:
        raise SystemExit(f"{path}: no training record after the first {skip}; run more steps or lower --skip")
    return statistics.median(values), len(values)


def step_samples_per_s(sweep: Path, batch: int, model: str) -> float:
    """The step's samples/s of ``model`` at ``batch`` in a ``flava_step.py --json`` file."""
    for entry in json.loads(sweep.read_text()):
        if entry["batch"] == batch and model in entry["models"]:
            return entry["models"][model]["samples_per_s"]
    raise SystemExit(f"{sweep} has no {model!r} result at batch {batch}")


def best_batch(sweep: Path, model: str) -> int:
    """The batch size at which ``model`` reached its highest samples/s in the sweep."""
    results = [
        (e["models"][model]["samples_per_s"], e["batch"]) for e in json.loads(sweep.read_text()) if model in e["models"]
    ]
    if not results:
        raise SystemExit(f"{sweep} has no {model!r} result")
    return max(results)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--sweep", required=True, type=Path)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--model", default="mmkit (compiled step)")
    parser.add_argument("--skip", type=int, default=3)
    parser.add_argument("--best-batch", action="store_true", help="print the model's fastest batch size and stop")
    args = parser.parse_args()
    if args.best_batch:
        print(best_batch(args.sweep, args.model))
        return
    if args.run is None or args.batch is None:
        parser.error("--run and --batch are needed (or --best-batch)")
    recipe, records = recipe_samples_per_s(args.run, args.skip)
    step = step_samples_per_s(args.sweep, args.batch, args.model)
    print(
        f"batch {args.batch}: recipe {recipe:,.1f} samples/s (median of {records} log records) vs step "
        f"({args.model}) {step:,.1f} samples/s: ratio {recipe / step:.2f}"
    )


if __name__ == "__main__":
    main()
