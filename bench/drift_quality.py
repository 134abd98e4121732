"""Drift quality of ferry's online monitor on digits, with shifts in the style of "Failing Loudly".

Model: an MLP trained here on scikit-learn's digits (64 -> 64 -> 10, softmax), written as ONNX with
onnx.helper and served through ferry's own reference builder and DriftMonitor (onnxruntime).
Splits: 50 % train, 25 % reference (validation), 25 % test pool; every window is drawn without
replacement from the test pool. Run: `.venv/bin/python -m bench.drift_quality [--trials N]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from scipy import ndimage
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from monitoring.drift import DriftMonitor
from monitoring.observer import ModelEventRecord, RequestRecord
from monitoring.reference import write_reference

NOISE = {"small": 1 * 16 / 255, "medium": 10 * 16 / 255, "large": 100 * 16 / 255}
ROTATION = {"small": 10.0, "medium": 40.0, "large": 90.0}
FRACTIONS = (0.1, 0.5, 1.0)


def onnx_mlp(clf: MLPClassifier) -> onnx.ModelProto:
    """The fitted sklearn MLP as ONNX: image (N,1,8,8) -> probabilities (N,10)."""
    w1, w2 = clf.coefs_
    b1, b2 = clf.intercepts_
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    inits.append(numpy_helper.from_array(np.array([-1, 64], np.int64), "flat"))
    nodes = [helper.make_node("Reshape", ["image", "flat"], ["x"]),
             helper.make_node("MatMul", ["x", "w1"], ["h0"]),
             helper.make_node("Add", ["h0", "b1"], ["h1"]), helper.make_node("Relu", ["h1"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["o0"]),
             helper.make_node("Add", ["o0", "b2"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    graph = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def shift(images: np.ndarray, labels: np.ndarray, kind: str, level: str, fraction: float,
          size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A window of `size` test images with `fraction` of it shifted (or class 0 knocked out)."""
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
    """ferry's DriftMonitor for one (window, alpha), fed one window of requests at a time."""

    def __init__(self, version_dir: Path, window: int, alpha: float) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(version_dir / "model.onnx"),
                                            providers=["CPUExecutionProvider"])
        self.monitor = DriftMonitor(window=window, alpha=alpha, max_window_age_s=1e9)
        self.monitor.observe(ModelEventRecord("digits", "1", "READY", str(version_dir), 0.0,
                                              max_batch_size=32))
        self.monitor.step()

    def detect(self, x: np.ndarray) -> tuple[bool, list[float]]:
        """(drift decision, per-signal p-values) of one full window."""
        y = self.session.run(None, {"image": x})[0]
        for i in range(0, x.shape[0], 8):
            self.monitor.observe(RequestRecord("digits", "1", "http", True, x[i:i + 8].shape[0],
                                               0.001, inputs={"image": x[i:i + 8]},
                                               outputs={"probabilities": y[i:i + 8]}))
        self.monitor.step()
        last = (self.monitor.detail("digits", "1") or {})["last_window"]
        return bool(last["drift"]), [s["p_value"] for s in last["signals"]]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {"image": x})[0]).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=40, help="windows per shift config")
    parser.add_argument("--null-trials", type=int, default=400, help="unshifted windows per alpha")
    args = parser.parse_args()
    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None]
    labels = digits.target
    order = np.random.default_rng(0).permutation(labels.size)
    train, ref, test = np.split(order, [labels.size // 2, 3 * labels.size // 4])
    clf = MLPClassifier((64,), max_iter=500, random_state=0).fit(images[train].reshape(-1, 64),
                                                                  labels[train])
    tmp = Path(tempfile.mkdtemp(prefix="ferry-drift-bench-"))
    version_dir = tmp / "digits" / "1"
    version_dir.mkdir(parents=True)
    onnx.save(onnx_mlp(clf), str(version_dir / "model.onnx"))
    xt, yt = images[test], labels[test]
    base_acc = float(np.mean(clf.predict(xt.reshape(-1, 64)) == yt))
    print(f"digits MLP: test accuracy {base_acc:.3f}; reference {ref.size} rows, "
          f"test pool {test.size} rows")
    configs = [(k, lvl, f) for k in ("noise", "rotation") for lvl in NOISE for f in FRACTIONS]
    configs += [("knockout", "class0", f) for f in FRACTIONS]
    for window in (100, 200):
        started = time.perf_counter()
        write_reference(version_dir, version_dir / "model.onnx", {"image": images[ref]},
                        window=window, alpha=0.05)
        ref_s = time.perf_counter() - started
        harness = Harness(version_dir, window, 0.05)
        channel = harness.monitor._channels[("digits", "1")]
        k = len(channel.spec.names) if channel.spec else 0
        bonferroni = 0.05 / k
        rng = np.random.default_rng(window)
        hits = hits_bonf = total = harmful = harmful_hits = 0
        per_kind: dict[str, list[int]] = {}
        eval_s: list[float] = []
        for kind, level, fraction in configs:
            for _ in range(args.trials):
                x, y = shift(xt, yt, kind, level, fraction, window, rng)
                t0 = time.perf_counter()
                drift, p_values = harness.detect(x)
                eval_s.append(time.perf_counter() - t0)
                hits += drift
                hits_bonf += min(p_values) < bonferroni
                total += 1
                per_kind.setdefault(f"{kind}-{level}", []).append(int(drift))
                if base_acc - float(np.mean(harness.predict(x) == y)) >= 0.10:
                    harmful += 1
                    harmful_hits += drift
        print(f"\nwindow {window}: {k} signals, alpha 0.05, per-signal alpha "
              f"{channel.alpha_signal:.4g} (Bonferroni {bonferroni:.4g}); reference build "
              f"{ref_s:.1f} s; window feed+evaluate {1e3 * np.median(eval_s):.1f} ms median")
        print(f"  shifted windows detected: {hits / total:.3f} calibrated, "
              f"{hits_bonf / total:.3f} plain Bonferroni ({total} windows, 21 configs)")
        print(f"  windows losing >= 10 points of accuracy: {harmful}, detected "
              f"{harmful_hits / max(harmful, 1):.3f}")
        print("  by shift: " + ", ".join(f"{n} {np.mean(v):.2f}" for n, v in per_kind.items()))
    for window in (100, 200):
        for alpha in (0.01, 0.05, 0.10):
            write_reference(version_dir, version_dir / "model.onnx", {"image": images[ref]},
                            window=window, alpha=alpha)
            harness = Harness(version_dir, window, alpha)
            channel = harness.monitor._channels[("digits", "1")]
            bonferroni = alpha / len(channel.spec.names) if channel.spec else alpha
            rng = np.random.default_rng(1000 + window)
            alarms = alarms_bonf = 0
            for _ in range(args.null_trials):
                pick = rng.choice(yt.size, window, replace=False)
                drift, p_values = harness.detect(xt[pick])
                alarms += drift
                alarms_bonf += min(p_values) < bonferroni
            print(f"unshifted window {window}, alpha {alpha:.2f}: false alarms "
                  f"{alarms / args.null_trials:.3f} calibrated, "
                  f"{alarms_bonf / args.null_trials:.3f} Bonferroni ({args.null_trials} windows)")


if __name__ == "__main__":
    main()
