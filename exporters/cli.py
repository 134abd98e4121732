"""`ferry export`: a trained PyTorch model -> a verified ONNX model in a Triton repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from exporters.sources import TRUST_FLAG

_SOURCE_HELP = (
    "The model: package.module:attr or path/to/file.py:attr (an nn.Module instance, or a class "
    "or function returning one, called with --init-args), a TorchScript file (.pt, "
    "torch.jit.save), or an ExportedProgram archive (.pt2, torch.export.save)."
)


def _json_object(text: str | None, option: str) -> dict[str, Any]:
    """A JSON object flag (--init-args, --forward-kwargs)."""
    from exporters.errors import ExportError

    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"{option} is not valid JSON: {exc}", stage="load") from None
    if not isinstance(value, dict):
        raise ExportError(
            f"{option} must be a JSON object such as '{{\"hidden\": 64}}'", stage="load"
        )
    return value


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
            "UINT8, INT16, BOOL). A dim may be -1 (variable) or a name (variable, equal "
            "in every input that uses the name), e.g. input_ids:INT64:seq_len. NAME binds to "
            "forward's parameter of that name (keyword arguments included; parameters left "
            "out keep their defaults). Repeatable, in any order.",
        ),
    ] = None,
    dynamic_dim: Annotated[
        list[str] | None,
        typer.Option(
            "--dynamic-dim",
            help="INPUT:AXIS=NAME: make AXIS of INPUT variable and name it (AXIS counts the "
            "batch as 0), e.g. tokens:1=seq_len. Also turns a fixed axis of --example "
            "variable. A bare -1 is named dim_<AXIS>, shared by every input's -1 at that "
            "axis. Repeatable.",
        ),
    ] = None,
    dim_sizes: Annotated[
        list[str] | None,
        typer.Option(
            "--dim-sizes",
            help="NAME=N,N,...: sizes to export a variable dim at (the first) and to check "
            "parity at (all), e.g. samples=1600,4000. Default 16,9 (+1 per further dim "
            "name), or the --example's size and about half of it. Repeatable.",
        ),
    ] = None,
    output: Annotated[
        list[str] | None,
        typer.Option(
            "--output",
            help="Output name. Repeatable. A returned dict or ModelOutput keeps only the "
            "keys named (e.g. --output logits); a tuple's tensors are named in order. "
            "Default: a dict's tensor keys, else output (or output_0, output_1, ...). "
            "Values that are not tensors (caches, None) are left out with a note.",
        ),
    ] = None,
    init_args: Annotated[
        str | None,
        typer.Option(
            "--init-args",
            help="JSON object of keyword arguments for a class or factory SOURCE, e.g. "
            "'{\"hidden\": 64}'.",
        ),
    ] = None,
    forward_kwargs: Annotated[
        str | None,
        typer.Option(
            "--forward-kwargs",
            help="JSON object of fixed keyword arguments for forward, baked into the "
            "exported graph, e.g. '{\"use_cache\": false}'.",
        ),
    ] = None,
    example: Annotated[
        Path | None,
        typer.Option(
            help=".npz with one array per input (batch first); gives the specs when --input is "
            "left out and the rows used for export and parity (cropped along variable "
            "dims for the other parity sizes). Without it, parity uses random values: "
            "integer inputs below the size of the embedding they feed, masks of ones with "
            "padding at the end. A 'labels' array is ignored."
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
    stateful: Annotated[
        bool,
        typer.Option(
            "--stateful",
            help="A recurrent model whose forward takes and returns its state "
            "(forward(x, h) -> (y, h)): export the step with the state as inputs and outputs, "
            "check whole sequences step by step against PyTorch, and serve it with Triton's "
            "sequence batcher keeping the state (config.pbtxt sequence_batching).",
            rich_help_panel="Stateful models",
        ),
    ] = False,
    state: Annotated[
        list[str] | None,
        typer.Option(
            "--state",
            help="With --stateful: a state tensor NAME:DTYPE:DIMS (batch-first, DIMS without "
            "the batch dim, fixed sizes), a forward parameter bound by name like --input; "
            "forward returns its new value (as NAME_out) after the outputs. Repeatable, in "
            "the order forward returns the states.",
            rich_help_panel="Stateful models",
        ),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(
            "--control",
            help="With --stateful: a control tensor forward takes, one of start, end, ready "
            "(INT32 0/1) or corrid (INT64 sequence id), [batch, 1], bound by name like "
            "--input (the forward parameter has that name). Repeatable.",
            rich_help_panel="Stateful models",
        ),
    ] = None,
    sequence_length: Annotated[
        int,
        typer.Option(
            help="With --stateful: steps of the whole-sequence parity check.",
            rich_help_panel="Stateful models",
        ),
    ] = 16,
    sequence_strategy: Annotated[
        str,
        typer.Option(
            help="With --stateful: the sequence batcher's strategy, direct or oldest.",
            rich_help_panel="Stateful models",
        ),
    ] = "direct",
    max_sequence_idle_us: Annotated[
        int,
        typer.Option(
            help="With --stateful: a sequence without a request for this long is released.",
            rich_help_panel="Stateful models",
        ),
    ] = 1_000_000,
) -> None:
    """Export a PyTorch model to ONNX with dynamic dims, prove parity, write a repository entry.

    Writes REPO/NAME/<version>/model.onnx, REPO/NAME/config.pbtxt and
    REPO/NAME/<version>/export_report.json, all or nothing.
    """
    from rich.console import Console

    from exporters.console import ConsoleProgress, parity_table, summary_table
    from exporters.errors import ExportError
    from exporters.parity import ParityReport
    from exporters.pipeline import ExportOptions, run_export
    from exporters.stateful import StatefulOptions, run_stateful_export

    console = Console(stderr=False, width=max(Console().width, 120))
    progress = ConsoleProgress(console)
    try:
        options = ExportOptions(
            source=source,
            name=name,
            repository=model_repository,
            inputs=tuple(input or ()),
            outputs=tuple(output or ()),
            dynamic_dims=tuple(dynamic_dim or ()),
            dim_sizes=tuple(dim_sizes or ()),
            init_args=_json_object(init_args, "--init-args"),
            forward_kwargs=_json_object(forward_kwargs, "--forward-kwargs"),
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
        if stateful:
            sequence = StatefulOptions(
                tuple(state or ()),
                tuple(control or ()),
                sequence_length,
                sequence_strategy,
                max_sequence_idle_us,
            )
            result = run_stateful_export(options, sequence, progress)
        elif state or control:
            raise ExportError("--state and --control need --stateful", stage="load")
        else:
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
