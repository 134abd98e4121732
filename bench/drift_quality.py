"""Drift quality of ferry's online monitor on the `digits` example, shifts as in "Failing Loudly".

Model: the `digits` example (examples/digits.py, a LeNet-style CNN), trained by the example's own
code (artifacts in examples/artifacts/ are reused) and exported to ONNX by ferry's export pipeline
through scripts/build_example_repository.build. For every (window, alpha) the drift reference is
rebuilt by monitoring.reference.write_reference on the exported model.onnx from the example's
validation split (or, with --reference train, the example's own reference.npz: training rows);
windows are sent as 8-row requests to ferry's DriftMonitor, which evaluates them with the server's
code. Every window is drawn without replacement from the example's test split (269 rows), so
windows of 100 and 200 rows stay within the pool.
Run: `.venv/bin/python -m bench.drift_quality [--trials N] [--null-trials N]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from examples.common import ARTIFACTS_DIR
from monitoring.drift import DriftMonitor
from monitoring.observer import ModelEventRecord, RequestRecord
from monitoring.reference import write_reference
from scripts.build_example_repository import build

NOISE = {"small": 1 * 16 / 255, "medium": 10 * 16 / 255, "large": 100 * 16 / 255}  # 0..16 pixels
ROTATION = {"small": 10.0, "medium": 40.0, "large": 90.0}
FRACTIONS = (0.1, 0.5, 1.0)
WINDOWS = (100, 200)
ALPHAS = (0.01, 0.05, 0.10)
CONFIGS = [(k, lvl) for k in ("noise", "rotation") for lvl in NOISE] + [("knockout", "class0")]


def shift(
    images: np.ndarray,
    labels: np.ndarray,
    kind: str,
    level: str,
    fraction: float,
    size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A window of `size` pool images with `fraction` of it shifted (or class 0 knocked out)."""
    if kind == "knockout":  # label shift: delete `fraction` of the class-0 images from the pool
        zeros = np.flatnonzero(labels == 0)
        drop = rng.choice(zeros, round(fraction * zeros.size), replace=False)
        pool = np.setdiff1d(np.arange(labels.size), drop)
        pick = rng.choice(pool, size, replace=False)
        return images[pick], labels[pick]
    pick = rng.choice(labels.size, size, replace=False)
    x, y = images[pick].copy(), labels[pick]
    hit = rng.choice(size, round(fraction * size), replace=False)
    if kind == "noise":
        x[hit] = np.clip(x[hit] + rng.normal(0, NOISE[level], x[hit].shape), 0, 16)
    elif kind == "rotation":
        for i in hit:
            angle = rng.uniform(-ROTATION[level], ROTATION[level])
            x[i, 0] = ndimage.rotate(x[i, 0], angle, reshape=False, order=1, mode="constant")
    return x.astype(np.float32), y


class Harness:
    """The exported model and ferry's DriftMonitor for one (window, alpha)."""

    def __init__(self, version_dir: Path, reference: np.ndarray, window: int, alpha: float) -> None:
        import onnxruntime as ort

        model = version_dir / "model.onnx"
        started = time.perf_counter()
        write_reference(version_dir, model, {"image": reference}, window=window, alpha=alpha)
        self.reference_s = time.perf_counter() - started
        self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.monitor = DriftMonitor(window=window, alpha=alpha, max_window_age_s=1e9)
        self.monitor.observe(
            ModelEventRecord("digits", "1", "READY", str(version_dir), 0.0, max_batch_size=64)
        )
        self.monitor.step()
        self.info = self.detail()
        if self.info["state"] != "active":
            raise SystemExit(f"drift monitor not active: {self.info['reason']}")

    def detail(self) -> dict[str, Any]:
        return self.monitor.detail("digits", "1") or {}

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(np.asarray(self.session.run(None, {"image": x})[0]).argmax(1) == y))

    def detect(self, x: np.ndarray) -> tuple[bool, bool, np.ndarray]:
        """(calibrated decision, plain-Bonferroni decision, predicted classes) of one window."""
        y = np.asarray(self.session.run(None, {"image": x})[0])
        for i in range(0, x.shape[0], 8):
            self.monitor.observe(
                RequestRecord(
                    "digits",
                    "1",
                    "http",
                    True,
                    x[i : i + 8].shape[0],
                    0.001,
                    inputs={"image": x[i : i + 8]},
                    outputs={"probabilities": y[i : i + 8]},
                )
            )
        self.monitor.step()
        last = self.detail()["last_window"]
        min_p = min(s["p_value"] for s in last["signals"])
        return bool(last["drift"]), min_p < self.info["bonferroni_alpha"], y.argmax(1)


def shifted_suite(
    h: Harness, xt: np.ndarray, yt: np.ndarray, base_acc: float, window: int, trials: int
) -> dict[tuple[str, str, float], np.ndarray]:
    """Per shift config, rows of (calibrated, Bonferroni, accuracy drop) over `trials` windows."""
    rng = np.random.default_rng(window)
    out = {}
    for kind, level in CONFIGS:
        for fraction in FRACTIONS:
            rows = []
            for _ in range(trials):
                x, y = shift(xt, yt, kind, level, fraction, window, rng)
                drift, bonf, pred = h.detect(x)
                rows.append((drift, bonf, base_acc - float(np.mean(pred == y))))
            out[(kind, level, fraction)] = np.array(rows, dtype=float)
    return out


def summarize(
    window: int, h: Harness, res: dict[tuple[str, str, float], np.ndarray], eval_s: float
) -> None:
    rows = np.concatenate(list(res.values()))
    harmful = rows[rows[:, 2] >= 0.10]
    print(
        f"\nwindow {window}: {len(h.info['signals'])} signals, alpha 0.05, per-signal alpha "
        f"{h.info['alpha_per_signal']:.4g} (Bonferroni {h.info['bonferroni_alpha']:.4g}); "
        f"reference build {h.reference_s:.1f} s; {1e3 * eval_s:.1f} ms per window "
        "(shift, infer, feed, evaluate)"
    )
    print(
        f"  shifted windows detected: {rows[:, 0].mean():.3f} calibrated, "
        f"{rows[:, 1].mean():.3f} plain Bonferroni ({len(rows)} windows, {len(res)} configs)"
    )
    print(
        f"  windows losing >= 10 points of accuracy: {len(harmful)}, detected "
        f"{harmful[:, 0].mean() if len(harmful) else float('nan'):.3f} calibrated, "
        f"{harmful[:, 1].mean() if len(harmful) else float('nan'):.3f} Bonferroni"
    )
    print("  shift            detected at 10/50/100 %   (mean accuracy drop, points)")
    for kind, level in CONFIGS:
        parts = [res[(kind, level, f)] for f in FRACTIONS]
        print(
            f"  {kind + '-' + level:16s} "
            + " ".join(f"{p[:, 0].mean():.2f}" for p in parts)
            + "   ("
            + " ".join(f"{100 * p[:, 2].mean():5.1f}" for p in parts)
            + ")"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=40, help="windows per shift config")
    parser.add_argument("--null-trials", type=int, default=400, help="unshifted windows per alpha")
    parser.add_argument(
        "--reference",
        choices=("val", "train"),
        default="val",
        help="reference rows: validation split, or the example's reference.npz",
    )
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS_DIR)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferry-drift-bench-") as repository:
        run(args, Path(repository))


def run(args: argparse.Namespace, repository: Path) -> None:
    """Export digits into `repository`, then the shift suite and the unshifted windows."""
    if build(repository, args.artifacts, ["digits"]):
        raise SystemExit("exporting the digits example failed")
    version_dir = repository / "digits" / "1"
    data = args.artifacts / "digits"
    with np.load(data / "test.npz") as test:
        xt, yt = test["image"].astype(np.float32), test["labels"]
    with np.load(data / ("val.npz" if args.reference == "val" else "reference.npz")) as ref:
        reference = ref["image"].astype(np.float32)
    for window in WINDOWS:
        if window > yt.size:
            raise SystemExit(f"window {window} exceeds the test pool ({yt.size} rows)")
    for window in WINDOWS:
        h = Harness(version_dir, reference, window, 0.05)
        base_acc = h.accuracy(xt, yt)
        if window == WINDOWS[0]:
            print(
                f"digits CNN (exported ONNX): test accuracy {base_acc:.4f}; reference "
                f"{args.reference} {reference.shape[0]} rows, test pool {yt.size} rows"
            )
        started = time.perf_counter()
        res = shifted_suite(h, xt, yt, base_acc, window, args.trials)
        summarize(window, h, res, (time.perf_counter() - started) / args.trials / len(res))
    print(
        "\nunshifted windows: false-alarm rate, calibrated / plain Bonferroni "
        f"({args.null_trials} windows each)"
    )
    for window in WINDOWS:
        for alpha in ALPHAS:
            h = Harness(version_dir, reference, window, alpha)
            rng = np.random.default_rng(1000 + window)
            alarms = np.array(
                [
                    h.detect(xt[rng.choice(yt.size, window, replace=False)])[:2]
                    for _ in range(args.null_trials)
                ],
                dtype=float,
            )
            print(
                f"  window {window}, alpha {alpha:.2f}: {alarms[:, 0].mean():.3f} / "
                f"{alarms[:, 1].mean():.3f}  (target <= {1.5 * alpha:.3f})"
            )


if __name__ == "__main__":
    main()
