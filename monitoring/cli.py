"""`ferry drift reference`: build a model version's drift reference from a data file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

drift_app = typer.Typer(
    name="drift",
    no_args_is_help=True,
    add_completion=False,
    help="Online drift detection: build the reference a served model version is compared with.",
)


def _version_dir(repository: Path, name: str, version: int | None) -> Path:
    model_dir = repository / name
    if not model_dir.is_dir():
        raise typer.BadParameter(f"no model {name!r} in {repository}", param_hint="NAME")
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if version is None:
        if not versions:
            raise typer.BadParameter(f"{model_dir} has no version folders", param_hint="NAME")
        version = versions[-1]
    version_dir = model_dir / str(version)
    if not version_dir.is_dir():
        raise typer.BadParameter(
            f"{model_dir} has no version {version} (has {', '.join(map(str, versions)) or 'none'})",
            param_hint="--version",
        )
    return version_dir


@drift_app.command("reference")
def reference(
    name: Annotated[str, typer.Argument(help="Model name (a folder of the repository).")],
    model_repository: Annotated[
        Path, typer.Option(help="Triton-layout model repository holding NAME/<version>/model.onnx.")
    ],
    data: Annotated[
        Path,
        typer.Option(
            help="Reference inputs: .npz with one array per model input (rows first); an extra "
            "`labels` array is ignored. Use held-out data the model did not train on."
        ),
    ],
    version: Annotated[
        int | None, typer.Option(help="Version folder (default: the highest).")
    ] = None,
    window: Annotated[
        int,
        typer.Option(
            help="Rows per drift window the thresholds are calibrated for (ferry serve "
            "--drift-window)."
        ),
    ] = 1000,
    alpha: Annotated[
        float, typer.Option(help="Per-window false-alarm rate (ferry serve --drift-alpha).")
    ] = 0.05,
    task: Annotated[
        str,
        typer.Option(help="auto, classification, regression or other: how outputs become signals."),
    ] = "auto",
) -> None:
    """Run the model on reference data and write NAME/<version>/reference.npz."""
    import numpy as np

    from monitoring.reference import load_reference, write_reference
    from monitoring.signals import SignalError
    from monitoring.tensors import ReferenceDataError

    version_dir = _version_dir(model_repository, name, version)
    model_path = version_dir / "model.onnx"
    if not model_path.is_file():
        raise typer.BadParameter(
            f"{version_dir} has no model.onnx (drift references are built from the ONNX model)",
            param_hint="NAME",
        )
    try:
        with np.load(data, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise typer.BadParameter(f"cannot read {data}: {exc}", param_hint="--data") from exc
    try:
        path = write_reference(
            version_dir, model_path, arrays, window=window, alpha=alpha, task=task
        )
    except (ReferenceDataError, SignalError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    ref = load_reference(path)
    typer.echo(
        f"wrote {path}: {ref.rows} rows, {len(ref.spec.names)} signals, window "
        f"{ref.window}, alpha {ref.alpha} (per signal {ref.alpha_signal:.3g})"
    )


def register(app: typer.Typer) -> None:
    """Mount `ferry drift` on the ferry app."""
    app.add_typer(drift_app, name="drift")
