"""`ferry export`: a trained PyTorch model -> a verified ONNX model in a Triton repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exporters.sources import TRUST_FLAG

_SOURCE_HELP = (
    "The model: package.module:attr or path/to/file.py:attr (an nn.Module instance, or a class "
    "or function returning one, called without arguments), a TorchScript file (.pt, "
    "torch.jit.save), or an ExportedProgram archive (.pt2, torch.export.save)."
)


def export(
    source: Annotated[str, typer.Argument(help=_SOURCE_HELP, show_default=False)],
    name: Annotated[str, typer.Option(help="Model name: the folder REPO/NAME.")],
    model_repository: Annotated[Path, typer.Option(help="Triton-layout model repository.")],
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="Model input NAME:DTYPE:DIMS, DIMS without the batch dim, e.g. "
            "x:FP32:1,28,28 (KServe datatypes: FP32, FP16, FP64, INT64, INT32, INT8, "
            "UINT8, INT16, BOOL). Repeatable, in forward's order.",
        ),
    ] = None,
    output: Annotated[
        list[str] | None,
        typer.Option(
            "--output",
            help="Output name, one per tensor the model returns. Repeatable. "
            "Default: output (or output_0, output_1, ...; or a returned dict's "
            "keys).",
        ),
    ] = None,
    example: Annotated[
        Path | None,
        typer.Option(
            help=".npz with one array per input (batch first); gives the specs when --input is "
            "left out and the rows used for export and parity. A 'labels' array is "
            "ignored."
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="State dict to load into the model, read with torch.load(weights_only=True)."
        ),
    ] = None,
    max_batch_size: Annotated[
        int,
        typer.Option(
            help="Largest batch the server forms (config.pbtxt max_batch_size); parity is "
            "checked at batch 1, 2 and this."
        ),
    ] = 64,
    opset: Annotated[int, typer.Option(help="ONNX opset to export at.")] = 20,
    version: Annotated[
        int | None,
        typer.Option("--version", help="Version folder to write. Default: the next free version."),
    ] = None,
    atol: Annotated[float, typer.Option(help="Parity: absolute tolerance.")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Parity: relative tolerance.")] = 1e-3,
    reference_data: Annotated[
        Path | None,
        typer.Option(
            help=".npz of inputs representative of production; stores the drift reference "
            "(reference.npz) for this version."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --version folder.")
    ] = False,
    trust_pickled_module: Annotated[
        bool,
        typer.Option(
            TRUST_FLAG,
            help="Allow SOURCE to be a whole pickled nn.Module (torch.save(model)). "
            "Unpickling runs arbitrary code from the file: use it only for files "
            "you made. Prefer a class SOURCE with --weights.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random parity inputs.")] = 0,
) -> None:
    """Export a PyTorch model to ONNX with a dynamic batch, prove parity, write a repository entry.

    Writes REPO/NAME/<version>/model.onnx, REPO/NAME/config.pbtxt and
    REPO/NAME/<version>/export_report.json, all or nothing.
    """
    from rich.console import Console

    from exporters.console import ConsoleProgress, parity_table, summary_table
    from exporters.errors import ExportError
    from exporters.parity import ParityReport
    from exporters.pipeline import ExportOptions, run_export

    console = Console(stderr=False, width=max(Console().width, 120))
    options = ExportOptions(
        source=source,
        name=name,
        repository=model_repository,
        inputs=tuple(input or ()),
        outputs=tuple(output or ()),
        example=example,
        weights=weights,
        max_batch_size=max_batch_size,
        opset=opset,
        version=version,
        atol=atol,
        rtol=rtol,
        reference_data=reference_data,
        overwrite=overwrite,
        trust_pickled_module=trust_pickled_module,
        seed=seed,
    )
    progress = ConsoleProgress(console)
    try:
        result = run_export(options, progress)
    except ExportError as exc:
        progress.stop()
        if isinstance(exc.detail, ParityReport):
            console.print(parity_table(exc.detail))
        console.print(f"[red bold]error[/] ({exc.stage}): {exc.message}", highlight=False)
        console.print("nothing was written to the repository.", highlight=False)
        raise typer.Exit(1) from None
    finally:
        progress.stop()
    console.print(parity_table(result.parity))
    console.print(summary_table(result))


def register(app: typer.Typer) -> None:
    """Mount `ferry export` on the ferry app."""
    app.command("export")(export)
