"""`ferry optimize` on the trained examples: train, `ferry export`, optimize, print ratios vs FP32.

    python -m bench.optimize_examples [encoder digits ...] [--variants ...] [--keep DIR]

Every ratio is measured in the same run against the FP32 version (interleaved benchmark), and
the wall time of the whole `ferry optimize` command is printed for the < 3 minute target.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPORT_ARGS = {  # example module -> its class attribute and batch size for the benchmark
    "encoder": ("EncoderClassifier", 32),
    "digits": ("DigitsCNN", 32),
    "breast_cancer": ("BreastCancerMLP", 32),
    "diabetes": ("DiabetesMLP", 32),
}


def prepare(name: str, root: Path) -> tuple[Path, Path]:
    """Train the example and export it into root/repo; returns (repo, artifacts dir)."""
    module = importlib.import_module(f"examples.{name}")
    artifacts = root / "artifacts" / name
    module.train(artifacts)
    attr, max_batch = EXPORT_ARGS[name]
    repo = root / "repo"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry",
            "export",
            f"examples.{name}:{attr}",
            "--name",
            name,
            "--model-repository",
            str(repo),
            "--weights",
            str(artifacts / "weights.pt"),
            "--example",
            str(artifacts / "val.npz"),
            "--max-batch-size",
            str(max_batch),
        ],
        check=True,
    )
    return repo, artifacts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("examples", nargs="*", default=["encoder"])
    parser.add_argument("--variants", default=None)
    parser.add_argument("--bench-seconds", default="20")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="ferry-bench-optimize-"))
    for name in args.examples:
        repo, artifacts = prepare(name, root)
        command = [
            sys.executable,
            "-m",
            "ferry",
            "optimize",
            name,
            "--model-repository",
            str(repo),
            "--eval-data",
            str(artifacts / "test.npz"),
            "--calibration-data",
            str(artifacts / "val.npz"),
            "--bench-seconds",
            args.bench_seconds,
            "--report",
            str(root / f"{name}.json"),
        ]
        if args.variants:
            command += ["--variants", args.variants]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - started
        report = json.loads((root / f"{name}.json").read_text())
        reference = report["reference"]
        print(
            f"\n{name}: ferry optimize took {wall:.1f}s (target < 180 s); "
            f"FP32 {report['metric']} {reference['value']:.4f}, "
            f"{reference['throughput']:.1f}/s at batch {reference['throughput_batch']}; "
            f"CPU {report['fingerprint']['cpu']} {report['fingerprint']['cpu_flags']}"
        )
        for row in report["candidates"]:
            if "throughput" in row:
                print(
                    f"  {row['variant']:>14}: {row['throughput'] / reference['throughput']:.2f}x "
                    f"throughput, p95 batch 1 {reference['p95_ms'] / row['p95_ms']:.2f}x, "
                    f"{report['metric']} delta {row['delta']:+.4f}, "
                    f"top-1 agreement {row.get('top1_agreement')}"
                )
            else:
                print(f"  {row['variant']:>14}: {row.get('reason')}")
        print(f"  published: {report['published']}")


if __name__ == "__main__":
    main()
