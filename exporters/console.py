"""Rich rendering of an export: stage progress, the parity table and the final summary."""

from __future__ import annotations

from rich.console import Console
from rich.status import Status
from rich.table import Table

from exporters.inputs import NARROW_ORIGIN
from exporters.parity import ParityReport
from exporters.pipeline import ExportResult


class ConsoleProgress:
    """A spinner while a stage runs, then one line with its result and time."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Status | None = None

    def stage_started(self, stage: str, description: str) -> None:
        """Show a spinner for the stage."""
        self._status = self.console.status(f"[bold]{stage}[/]: {description}…")
        self._status.start()

    def stage_finished(self, stage: str, detail: str, seconds: float) -> None:
        """Replace the spinner with a done line."""
        self.stop()
        self.console.print(
            f"[green]✓[/] [bold]{stage:<7}[/] {seconds:6.2f}s  {detail}", highlight=False
        )

    def note(self, text: str) -> None:
        """A note the user should read (dropped outputs, narrow random inputs...)."""
        self.stop()
        self.console.print(f"[yellow]note[/]: {text}", highlight=False)

    def stop(self) -> None:
        """Stop the spinner (on success or failure)."""
        if self._status is not None:
            self._status.stop()
            self._status = None


def parity_table(parity: ParityReport, only_failures: bool = False) -> Table:
    """One row per output and batch size: errors, worst element, verdict."""
    table = Table(
        title=f"parity: ONNX Runtime vs PyTorch (atol {parity.atol:g}, rtol {parity.rtol:g}; "
        "scale = max |PyTorch output|)"
    )
    sized = any(check.sizes for check in parity.checks)
    columns = ["batch", *(["sizes"] if sized else []), "output", "scale", "max abs err"]
    columns += ["err/scale", "max rel err", "worst element", "PyTorch → ONNX", "verdict"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("output", "sizes") else "right")
    for check in parity.checks:
        if only_failures and check.passed:
            continue
        verdict = "[green]ok[/]" if check.passed else f"[red]FAIL[/] {check.reason}"
        sizes = [" ".join(f"{k}={v}" for k, v in check.sizes.items())] if sized else []
        table.add_row(
            str(check.batch),
            *sizes,
            check.output,
            f"{check.scale:.3g}",
            f"{check.max_abs_error:.3g}",
            f"{check.error_to_scale:.2g}",
            f"{check.max_rel_error:.3g}",
            str(list(check.worst_index)),
            f"{check.expected:.5g} → {check.actual:.5g}",
            verdict,
        )
    return table


def _tolerance_to_scale(parity: ParityReport) -> str:
    """The absolute tolerance as a share of the smallest output scale checked."""
    scale = parity.min_scale()
    if scale <= 0:
        return ""
    return f"; atol {parity.atol:g} is {parity.atol / scale:.1e} of the smallest output scale"


def summary_table(result: ExportResult) -> Table:
    """What was written, by which exporter, with which figures."""
    table = Table(title="ferry export", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("model", f"{result.version_dir.parent.name} version {result.version}")
    table.add_row("written to", str(result.version_dir))
    exporter = result.exporter
    if result.report.get("dynamo_error"):
        exporter += " (dynamo failed, see export_report.json)"
    table.add_row("exporter", f"{exporter}, opset {result.opset}")
    table.add_row("inputs", ", ".join(map(str, result.inputs)) + " (batch first, variable)")
    table.add_row("outputs", ", ".join(map(str, result.outputs)))
    binding = result.report.get("binding", {})
    if binding.get("by") == "keyword":
        bound = ", ".join(binding.get("inputs", {}))
        defaults = binding.get("left_to_defaults") or []
        text = f"forward({bound}) by name"
        if binding.get("forward_kwargs"):
            text += f", fixed {binding['forward_kwargs']}"
        if defaults:
            text += f"; defaults for {', '.join(defaults)}"
        table.add_row("binding", text)
    batches = sorted({c.batch for c in result.parity.checks})
    sizes = result.report.get("variable_dims") or {}
    at = "".join(f"; {k} at {', '.join(map(str, v))}" for k, v in sizes.items())
    table.add_row(
        "parity",
        f"passed at batch {', '.join(map(str, batches))}{at}: max abs error "
        f"{result.parity.max_abs_error():.2e} ({result.parity.max_error_to_scale():.1e} of "
        f"the output scale), max rel error {result.parity.max_rel_error():.2e}"
        + _tolerance_to_scale(result.parity),
    )
    narrow = [
        f"{name} {r['low']}..{r['high'] - 1}"
        for name, r in (result.report.get("generated_inputs") or {}).items()
        if r["origin"] == NARROW_ORIGIN
    ]
    if narrow:
        table.add_row(
            "parity inputs",
            f"[yellow]narrow[/]: {', '.join(narrow)} (no embedding reads them); "
            "pass --example for real values",
        )
    table.add_row("model.onnx", f"{result.report['model_file']['bytes'] / 1e6:.2f} MB")
    if result.report.get("reference"):
        table.add_row("drift reference", str(result.report["reference"]))
    total = sum(result.timings_s.values())
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings_s.items())
    table.add_row("time", f"{total:.2f}s ({stages})")
    return table
