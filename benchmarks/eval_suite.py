"""The evaluation suite's costs, measured side by side in one run: feature extraction, the torch probe
against scikit-learn's, and a cached rerun.

1. **Extraction**: images per second of ``mmkit.eval.features.image_features`` (decode, transform,
   encoder, projection) on the built-in data in the class-folder layout, at the tiny size (32²) and at
   the released size (224², ViT-B/16, random weights: the cost does not depend on them).
2. **Probe**: the linear probe's whole protocol (standardise, CLIP's search over C from 1e-6 to 1e6 on
   the same carved validation split, refit on train + validation, test accuracy) solved by
   ``mmkit.eval.probe`` in torch (Newton's method on the small case, L-BFGS on the large), and by
   scikit-learn's ``LogisticRegression(solver="lbfgs", C=...)`` (the same objective) through the same
   search; then scikit-learn once more at mmkit's chosen C. On the same features: synthetic
   ``--probe-n`` x 768 features of ``--probe-classes`` classes, and the demo checkpoint's features of
   the shapes colour task.
3. **Cached rerun**: ``suites/shapes.yaml`` on ``--checkpoint`` twice, the second time with its
   results removed so every task recomputes from the feature cache (no forward pass).

    pip install scikit-learn      # the probe's comparison only; mmkit itself does not need it
    python benchmarks/eval_suite.py --checkpoint runs/demo/final            # ~10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def extraction(bench: Path, size: str, n: int, batch: int, workers: int) -> float:
    from mmkit.data import ImageTransform, ImageTransformConfig
    from mmkit.eval.benchmarks import open_benchmark
    from mmkit.eval.features import image_features
    from mmkit.models import FLAVAConfig, flava_model

    cfg = FLAVAConfig.tiny() if size == "tiny" else FLAVAConfig()
    model = flava_model(cfg).eval()
    data = open_benchmark("folder", bench / "shapes-color", "test")
    data.source._files = data.source._files[:n]  # the first n images
    data.source._labels = data.source._labels[:n]
    transform = ImageTransform(ImageTransformConfig(cfg.image.image_size, 0))
    image_features(model, data, transform, transform_id="x", batch_size=batch, progress=False)  # warm-up
    start = time.perf_counter()
    image_features(model, data, transform, transform_id="x", batch_size=batch, num_workers=workers, progress=False)
    return n / (time.perf_counter() - start)


def probe_side_by_side(x: torch.Tensor, y: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> dict:
    """The whole probe protocol twice on the same features: mmkit's (torch), and scikit-learn's
    ``LogisticRegression(C)`` driven through the same CLIP search over C on the same carved split, then
    refit on train + held-out share at its own chosen C."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from mmkit.eval.probe import clip_c_search, fit_linear_probe

    start = time.perf_counter()
    ours = fit_linear_probe(x, y, seed=0)
    ours_s, ours_acc = time.perf_counter() - start, ours.accuracy(tx, ty)
    start = time.perf_counter()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = round(len(x) * 0.2)
    vx, vy, fx, fy = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
    mean, std = fx.mean(0), fx.std(0).clamp_min(1e-6)

    def score(c: float) -> float:
        clf = LogisticRegression(C=c, max_iter=300).fit(((fx - mean) / std).numpy(), fy.numpy())
        return float((clf.predict(((vx - mean) / std).numpy()) == vy.numpy()).mean())

    sk_c, _ = clip_c_search(score)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    clf = LogisticRegression(C=sk_c, max_iter=300).fit(((x - mean) / std).numpy(), y.numpy())
    sk_acc = float(np.mean(clf.predict(((tx - mean) / std).numpy()) == ty.numpy()))
    # and scikit-learn at mmkit's chosen C: the same objective, so the same test accuracy
    clf = LogisticRegression(C=ours.c, max_iter=300).fit(((x - mean) / std).numpy(), y.numpy())
    at_ours = float(np.mean(clf.predict(((tx - mean) / std).numpy()) == ty.numpy()))
    return {
        "ours_s": ours_s,
        "ours_acc": ours_acc,
        "ours_c": ours.c,
        "sk_s": time.perf_counter() - start,
        "sk_acc": sk_acc,
        "sk_c": sk_c,
        "sk_at_ours": at_ours,
    }


def synthetic(n: int, n_test: int, classes: int, dim: int = 768, seed: int = 0):
    """Gaussian classes around random centres, train and test drawn from the same centres; the centres'
    spread (0.05 a dimension) leaves the classes overlapping, so accuracy sits well between chance and 1."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 0.05
    y = torch.randint(0, classes, (n + n_test,), generator=g)
    x = centres[y] + torch.randn(n + n_test, dim, generator=g)
    return x[:n], y[:n], x[n:], y[n:]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a pretraining export (the demo's: runs/demo/final)")
    parser.add_argument("--bench", default=None, help="where the shapes benchmark layouts go (default: a temp dir)")
    parser.add_argument("--probe-n", type=int, default=20000)
    parser.add_argument("--probe-classes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    return parser.parse_args()


def extraction_table(bench: Path, workers: int) -> None:
    """Section 1: images/s of feature extraction at the tiny and the released size."""
    print("## 1. Feature extraction (decode + transform + image encoder + projection), class-folder layout\n")
    print("| model | image size | batch | images/s |\n|---|---|---|---|")
    for size, n, batch in (("tiny", 300, 128), ("released", 64, 16)):
        rate = extraction(bench, size, n, batch, workers)
        print(f"| {size} | {32 if size == 'tiny' else 224}² | {batch} | {rate:.1f} |", flush=True)


def _checkpoint_probe(checkpoint: str, bench: Path) -> tuple[str, int, int, int, dict]:
    """The probe side by side on the checkpoint's features of the shapes colour task: one table row."""
    from mmkit.eval.benchmarks import open_benchmark
    from mmkit.eval.features import image_features
    from mmkit.eval.loading import eval_transform, load_encoders

    model, _ = load_encoders(checkpoint, log=lambda m: None)
    transform, tid = eval_transform(model, checkpoint)
    train, test = (
        image_features(
            model, open_benchmark("folder", bench / "shapes-color", split), transform, transform_id=tid, progress=False
        )
        for split in ("train", "test")
    )
    r = probe_side_by_side(train.features, train.labels, test.features, test.labels)
    return f"demo checkpoint, shapes colour ({train.features.shape[1]}-d)", len(train.keys), len(test.keys), 6, r


def probe_table(args: argparse.Namespace, bench: Path) -> None:
    """Section 2: the probe protocol, torch against scikit-learn, on synthetic and on checkpoint features."""
    print("\n## 2. Linear probe: torch (mmkit: Newton or L-BFGS) vs scikit-learn LogisticRegression(lbfgs),")
    print("same protocol\n")
    print(
        "| features | train / test | classes | mmkit s | sklearn s | speed-up | mmkit acc | sklearn acc | "
        "C (mmkit / sklearn) | sklearn acc at mmkit's C |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    import warnings

    warnings.filterwarnings("ignore", message="lbfgs failed to converge")  # sklearn at the weakest strengths
    start = time.perf_counter()
    torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])  # torch's first optimizer imports torch._dynamo
    first_optimizer_s = time.perf_counter() - start
    x, y, tx, ty = synthetic(args.probe_n, args.probe_n // 4, args.probe_classes)
    r = probe_side_by_side(x, y, tx, ty)
    rows = [(f"synthetic {x.shape[1]}-d", len(x), len(tx), args.probe_classes, r)]
    rows.append(_checkpoint_probe(args.checkpoint, bench))
    for name, n_train, n_test, c, r in rows:
        print(
            f"| {name} | {n_train:,} / {n_test:,} | {c} | {r['ours_s']:.2f} | {r['sk_s']:.2f} | "
            f"{r['sk_s'] / r['ours_s']:.1f}x | {100 * r['ours_acc']:.2f} | {100 * r['sk_acc']:.2f} | "
            f"{r['ours_c']:.3g} / {r['sk_c']:.3g} | {100 * r['sk_at_ours']:.2f} |",
            flush=True,
        )
    if first_optimizer_s > 0.05:
        print(
            f"\n(not in mmkit's times, as scikit-learn's import is not in its: the one-off {first_optimizer_s:.2f} s "
            "torch takes to build its first optimizer, importing torch._dynamo)"
        )


def suite_reruns(checkpoint: str, bench: Path, out: Path) -> None:
    """Section 3: the shapes suite on the checkpoint, then again from the feature cache (results in ``out``)."""
    print("\n## 3. The shapes suite on the checkpoint, and again from the feature cache\n")
    import contextlib
    import io
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from finetune_transfer import _load

    evaluate = _load("flava_evaluate_recipe", REPO / "recipes/flava/evaluate.py")
    keys = [
        f"suite={REPO / 'suites/shapes.yaml'}",
        f"data_root={bench}",
        f"checkpoint={checkpoint}",
        f"out={out}",
        "progress=false",
    ]
    times = []
    for _ in range(2):
        (out / "results.json").unlink(missing_ok=True)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            results = evaluate.evaluate(evaluate.load_config(None, keys))
        times.append(time.perf_counter() - start)
    print("| run | seconds |\n|---|---|")
    print(f"| first (features computed) | {times[0]:.1f} |\n| rerun (every feature from the cache) | {times[1]:.1f} |")
    print(
        "\nresults of the rerun: "
        + json.dumps(
            {
                k: round(v.get(v.get("metric", "accuracy"), v.get("image_to_text_r1", 0)), 3)
                for k, v in results.items()
                if isinstance(v, dict)
            }
        )
    )
    print(f"\n{(out / 'results.md').read_text()}")


def main() -> None:
    args = _parse_args()
    torch.manual_seed(0)
    from mmkit.eval.benchmarks.shapes import write_shapes_benchmarks

    tmp = Path(tempfile.mkdtemp())
    bench = write_shapes_benchmarks(Path(args.bench) if args.bench else tmp / "bench")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    extraction_table(bench, args.workers)
    probe_table(args, bench)
    suite_reruns(args.checkpoint, bench, tmp / "suite")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
