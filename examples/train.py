"""Train the examples once (artifacts are reused): `python -m examples.train [NAME...]`."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from examples import ALL_EXAMPLE_NAMES as EXAMPLE_NAMES
from examples.common import ARTIFACTS_DIR, METRICS_FILE, WEIGHTS_FILE


def ensure_trained(
    name: str, artifacts: Path = ARTIFACTS_DIR, force: bool = False
) -> dict[str, Any]:
    """Train `name` unless its artifacts exist; returns its metrics."""
    out_dir = artifacts / name
    metrics_path = out_dir / METRICS_FILE
    if not force and metrics_path.is_file() and (out_dir / WEIGHTS_FILE).is_file():
        metrics: dict[str, Any] = json.loads(metrics_path.read_text())
        return metrics
    module = importlib.import_module(f"examples.{name}")
    trained: dict[str, Any] = module.train(out_dir)
    return trained


def main() -> None:
    """Train the named examples (all by default) and print their metrics."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(EXAMPLE_NAMES))
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS_DIR)
    parser.add_argument("--force", action="store_true", help="Retrain even if artifacts exist.")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(EXAMPLE_NAMES))
    if unknown:
        parser.error(f"unknown example {unknown[0]} (one of {', '.join(EXAMPLE_NAMES)})")
    for name in args.names or EXAMPLE_NAMES:
        metrics = ensure_trained(name, args.artifacts, args.force)
        print(f"{name}: {json.dumps(metrics)}")


if __name__ == "__main__":
    main()
