"""Build the example model repository with the real `ferry export` pipeline.

    python scripts/build_example_repository.py REPO [--artifacts DIR] [--only NAME ...]

Trains each example once (artifacts in examples/artifacts/ are reused), then exports it to
REPO/NAME/1 with its drift reference, and writes the end-to-end pipelines around it (Python
steps and an ensemble: examples/pipelines/). A model already in REPO is left as it is.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples import (  # noqa: E402
    ALL_EXAMPLE_NAMES,
    EXAMPLE_SOURCES,
    STATEFUL_EXAMPLE_SOURCES,
)
from examples.common import ARTIFACTS_DIR, WEIGHTS_FILE  # noqa: E402
from examples.pipelines import write_pipelines  # noqa: E402
from examples.train import ensure_trained  # noqa: E402
from exporters.errors import ExportError  # noqa: E402
from exporters.pipeline import ExportOptions, run_export  # noqa: E402
from exporters.stateful import StatefulOptions, run_stateful_export  # noqa: E402


def _reference_builder_available() -> bool:
    try:
        from monitoring.reference import write_reference  # noqa: F401
    except ImportError:
        return False
    return True


def build(repository: Path, artifacts: Path, names: list[str]) -> int:
    """Train (once) and export each example; returns the number of failures."""
    with_reference = _reference_builder_available()
    failures = 0
    for name in names:
        if (repository / name).is_dir():
            print(f"{name}: already in {repository}, kept")
            continue
        started = time.perf_counter()
        metrics = ensure_trained(name, artifacts)
        trained_s = time.perf_counter() - started
        data = artifacts / name
        if name in STATEFUL_EXAMPLE_SOURCES:
            failures += _build_stateful(repository, name, data)
            continue
        options = ExportOptions(
            source=EXAMPLE_SOURCES[name],
            name=name,
            repository=repository,
            outputs=(importlib.import_module(f"examples.{name}").OUTPUT,),
            weights=data / WEIGHTS_FILE,
            example=data / "val.npz",
            reference_data=data / "reference.npz" if with_reference else None,
        )
        try:
            result = run_export(options)
        except ExportError as exc:
            print(f"{name}: export failed ({exc.stage}): {exc.message}", file=sys.stderr)
            failures += 1
            continue
        quality = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test_")}
        print(
            f"{name}: {result.version_dir} ({result.exporter} exporter, parity max abs error "
            f"{result.parity.max_abs_error():.1e}, {'with' if with_reference else 'no'} drift "
            f"reference) {quality}; train/load {trained_s:.1f}s, export "
            f"{sum(result.timings_s.values()):.1f}s"
        )
    for pipeline in write_pipelines(repository, names):
        print(f"{pipeline}: Python steps and ensemble written (examples/pipelines/)")
    return failures


def _build_stateful(repository: Path, name: str, data: Path) -> int:
    """`ferry export --stateful` of a recurrent example; 1 on failure."""
    example = importlib.import_module(f"examples.{name}")
    options = ExportOptions(
        source=STATEFUL_EXAMPLE_SOURCES[name],
        name=name,
        repository=repository,
        inputs=example.EXPORT_INPUTS,
        outputs=(example.OUTPUT,),
        weights=data / WEIGHTS_FILE,
    )
    try:
        result = run_stateful_export(options, StatefulOptions(states=example.EXPORT_STATES))
    except ExportError as exc:
        print(f"{name}: export failed ({exc.stage}): {exc.message}", file=sys.stderr)
        return 1
    sequence = result.report["sequence_parity"]
    print(
        f"{name}: {result.version_dir} (stateful, served by the sequence batcher; "
        f"{sequence['steps']}-step parity max abs error {sequence['max_abs_error']:.1e})"
    )
    return 0


def main() -> None:
    """Parse arguments and build the repository."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repository", type=Path)
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS_DIR)
    parser.add_argument(
        "--only", nargs="+", choices=ALL_EXAMPLE_NAMES, default=list(ALL_EXAMPLE_NAMES)
    )
    args = parser.parse_args()
    sys.exit(1 if build(args.repository, args.artifacts, args.only) else 0)


if __name__ == "__main__":
    main()
