"""`ferry check`: the load-time validation of `ferry serve`, run over a repository without serving.

Per model: config.pbtxt parses and is consistent (or auto-completes), the version policy selects a
version, the platform is one ferry runs; per selected version: the config matches the model file
(names, datatypes, shapes, batch dimension). A dry run for CI pipelines and init containers.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from server import model_config
from server.ensemble import (
    composing_models,
    ensemble_steps,
    is_ensemble,
    missing_models_reason,
    step_problem,
)
from server.errors import ServingError
from server.model_validation import (
    ModelSignature,
    SignatureUnavailable,
    config_type_text,
    shape_text,
    validate_model_file,
)
from server.repository_format import (
    DATATYPE_BY_CONFIG_TYPE,
    ModelConfigError,
    is_valid_model_name,
)
from server.runtimes import runtime_factory


class CheckStatus(enum.StrEnum):
    OK = "OK"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"  # the model file cannot be read on this machine (e.g. no TensorRT)


@dataclass(frozen=True, slots=True)
class CheckRow:
    """The verdict on one model (version "") or one of its versions."""

    model: str
    version: str
    status: CheckStatus
    detail: str


def repository_problem(root: Path) -> str | None:
    """Why `root` cannot be a model repository (None when it can)."""
    if not root.exists():
        return f"model repository '{root}' does not exist"
    if not root.is_dir():
        return f"model repository '{root}' is not a directory"
    return None


def model_names(root: Path) -> list[str]:
    """The model folders of a repository, sorted (hidden and oddly named entries skipped)."""
    return sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and is_valid_model_name(entry.name)
    )


def check_repository(
    root: Path, default_max_batch_size: int = 4, models: Sequence[str] = ()
) -> list[CheckRow]:
    """Validate every model of the repository (or the named ones) as `ferry serve` would load it."""
    rows: list[CheckRow] = []
    for name in models or model_names(root):
        rows.extend(check_model(root, name, default_max_batch_size))
    return rows


def check_model(root: Path, name: str, default_max_batch_size: int = 4) -> list[CheckRow]:
    """The rows for one model: a model-level failure, or one row per selected version."""
    model_dir = root / name
    if not is_valid_model_name(name) or not model_dir.is_dir():
        return [CheckRow(name, "", CheckStatus.FAILED, f"no model folder '{name}' in {root}")]
    try:
        prepared = model_config.prepare(name, model_dir, None, default_max_batch_size)
        if is_ensemble(prepared.config):
            return [_check_ensemble(root, prepared, default_max_batch_size)]
        runtime_factory(prepared.config)
    except (ModelConfigError, ServingError, OSError) as exc:
        message = exc.message if isinstance(exc, ServingError) else str(exc)
        return [CheckRow(name, "", CheckStatus.FAILED, message)]
    rows = []
    for number in prepared.versions:
        try:
            signature = validate_model_file(prepared.config, model_dir / str(number))
        except SignatureUnavailable as exc:
            rows.append(CheckRow(name, str(number), CheckStatus.SKIPPED, str(exc)))
        except (ModelConfigError, ServingError, OSError) as exc:
            message = exc.message if isinstance(exc, ServingError) else str(exc)
            rows.append(CheckRow(name, str(number), CheckStatus.FAILED, message))
        else:
            rows.append(CheckRow(name, str(number), CheckStatus.OK, _summary(prepared, signature)))
    return rows


def _check_ensemble(
    root: Path, prepared: model_config.PreparedModel, default_max_batch_size: int
) -> CheckRow:
    """An ensemble passes when its composing models are in the repository, load-worthy, and
    every step's maps name tensors its model has (what `ferry serve` checks at load)."""
    config = prepared.config
    name = str(config.name)
    missing = [m for m in composing_models(config) if not (root / m).is_dir()]
    if missing:
        return CheckRow(name, "", CheckStatus.FAILED, missing_models_reason(name, missing))
    for step in ensemble_steps(config):
        try:
            composing = model_config.prepare(
                step.model_name, root / step.model_name, None, default_max_batch_size
            ).config
        except (ModelConfigError, ServingError, OSError) as exc:
            reason = exc.message if isinstance(exc, ServingError) else str(exc)
            return CheckRow(
                name,
                "",
                CheckStatus.FAILED,
                f"{missing_models_reason(name, [step.model_name])} ({reason})",
            )
        problem = step_problem(
            name,
            step,
            {t.name for t in composing.input},
            {t.name for t in composing.output},
            bool(composing.model_transaction_policy.decoupled),
        )
        if problem:
            return CheckRow(name, "", CheckStatus.FAILED, problem)
    steps = " -> ".join(step.model_name for step in ensemble_steps(config))
    return CheckRow(name, "", CheckStatus.OK, f"ensemble: {steps}")


def _summary(prepared: model_config.PreparedModel, signature: ModelSignature | None) -> str:
    config = prepared.config
    tensors = ", ".join(
        f"{t.name} {config_type_text(DATATYPE_BY_CONFIG_TYPE.get(t.data_type, 'INVALID'))} "
        f"{shape_text(list(t.dims))}"
        for t in list(config.input) + list(config.output)
    )
    platform = config.platform or config.backend
    where = (
        f"matches {signature.source}"
        if signature is not None
        else f"config only ({platform} has no model file ferry reads)"
    )
    return f"{platform}, max_batch_size {config.max_batch_size}: {tensors}; {where}"


def report_check(
    root: Path, models: Sequence[str], default_max_batch_size: int, json_output: bool
) -> int:
    """Run the check, print a table (or JSON); exit code 0: all pass, 1: a failure, 2: no repo."""
    console = Console(soft_wrap=json_output)
    problem = repository_problem(root)
    if problem is not None:
        Console(stderr=True).print(f"[red]error:[/red] {problem}")
        return 2
    rows = check_repository(root, default_max_batch_size, models)
    failed = sum(row.status == CheckStatus.FAILED for row in rows)
    if json_output:
        console.print_json(json.dumps([asdict(row) for row in rows]))
        return 1 if failed else 0
    if not rows:
        console.print(f"[yellow]warning:[/yellow] model repository '{root}' holds no models")
        return 0
    table = Table(title=f"ferry check {root}", show_lines=True)
    for column in ("model", "version", "status", "detail"):
        table.add_column(column, overflow="fold")
    colours = {CheckStatus.OK: "green", CheckStatus.FAILED: "red", CheckStatus.SKIPPED: "yellow"}
    for row in rows:
        colour = colours[row.status]
        table.add_row(row.model, row.version, f"[{colour}]{row.status}[/{colour}]", row.detail)
    console.print(table)
    skipped = sum(row.status == CheckStatus.SKIPPED for row in rows)
    console.print(
        f"{len(rows) - failed - skipped} passed, {failed} failed, {skipped} skipped "
        f"({len({row.model for row in rows})} models)"
    )
    return 1 if failed else 0
