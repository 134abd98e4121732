"""Parity gate: ONNX Runtime and PyTorch on the same inputs at batch 1, 2 and max_batch_size,
and at every planned size of the variable dims."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exporters.errors import ExportError, summarize_exception
from exporters.inputs import InputBatches, SizePlan, to_torch


@dataclass(frozen=True)
class OutputParity:
    """One output at one batch size: the worst errors and the verdict."""

    batch: int
    output: str
    max_abs_error: float
    max_rel_error: float
    passed: bool
    reason: str = ""
    worst_index: tuple[int, ...] = ()
    expected: float = 0.0
    actual: float = 0.0
    scale: float = 0.0  # max |PyTorch output|: the errors and tolerances read against it
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def error_to_scale(self) -> float:
        """max abs error / max |expected|: the error as a share of the output's scale."""
        return self.max_abs_error / self.scale if self.scale > 0 else self.max_abs_error


@dataclass
class ParityReport:
    """Every output at every checked batch size, against `atol + rtol * |expected|`."""

    atol: float
    rtol: float
    checks: list[OutputParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(check.passed for check in self.checks)

    def max_abs_error(self) -> float:
        """The largest absolute error over every check."""
        return max((c.max_abs_error for c in self.checks), default=0.0)

    def max_rel_error(self) -> float:
        """The largest relative error over every check."""
        return max((c.max_rel_error for c in self.checks), default=0.0)

    def max_error_to_scale(self) -> float:
        """The largest max-abs-error / output-scale ratio over every check."""
        return max((c.error_to_scale for c in self.checks), default=0.0)

    def min_scale(self) -> float:
        """The smallest output scale checked (atol reads against it)."""
        return min((c.scale for c in self.checks), default=0.0)

    def to_json(self) -> dict[str, Any]:
        """The parity section of export_report.json."""
        return {
            "atol": self.atol,
            "rtol": self.rtol,
            "passed": self.passed,
            "max_abs_error": self.max_abs_error(),
            "max_rel_error": self.max_rel_error(),
            "max_error_to_scale": self.max_error_to_scale(),
            "atol_to_scale": self.atol / self.min_scale() if self.min_scale() > 0 else None,
            "checks": [
                asdict(c) | {"worst_index": list(c.worst_index), "error_to_scale": c.error_to_scale}
                for c in self.checks
            ],
        }


def compare_output(
    batch: int,
    name: str,
    expected: np.ndarray,
    actual: np.ndarray,
    atol: float,
    rtol: float,
    sizes: dict[str, int] | None = None,
) -> OutputParity:
    """Compare one output; relative error counts elements with |expected| >= atol."""
    sizes = dict(sizes or {})
    if expected.shape != actual.shape:
        return OutputParity(
            batch,
            name,
            float("inf"),
            float("inf"),
            False,
            f"shape {actual.shape} != PyTorch's {expected.shape}",
            sizes=sizes,
        )
    want = expected.astype(np.float64)
    got = actual.astype(np.float64)
    if want.size == 0:
        return OutputParity(batch, name, 0.0, 0.0, True, sizes=sizes)
    same_nonfinite = (np.isnan(want) & np.isnan(got)) | (np.isinf(want) & (want == got))
    bad_nonfinite = ~np.isfinite(got) & ~same_nonfinite
    lost_nonfinite = ~np.isfinite(want) & ~same_nonfinite
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same_nonfinite, 0.0, np.abs(got - want))
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = np.where(np.isfinite(want), np.abs(want), 0.0)
    rel = np.where(scale >= max(atol, 1e-30), diff / np.maximum(scale, 1e-30), 0.0)
    excess = diff / (atol + rtol * scale + 1e-30)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape))
    max_abs, max_rel = float(diff.max()), float(rel.max())
    reason = ""
    if bad_nonfinite.any():
        reason = f"{int(bad_nonfinite.sum())} NaN/Inf values that PyTorch did not produce"
    elif lost_nonfinite.any():
        reason = f"{int(lost_nonfinite.sum())} NaN/Inf values of PyTorch came out finite"
    elif float(excess.max()) > 1.0:
        reason = f"{int((excess > 1.0).sum())} of {excess.size} values outside atol/rtol"
    return OutputParity(
        batch,
        name,
        max_abs,
        max_rel,
        not reason,
        reason,
        worst,
        float(want[worst]),
        float(got[worst]),
        float(scale.max()),
        sizes,
    )


def parity_batches(max_batch_size: int) -> list[int]:
    """Batch sizes the gate checks: 1, 2 and max_batch_size."""
    return sorted({1, min(2, max_batch_size), max_batch_size})


def check_parity(
    model: Callable[..., tuple[Any, ...]],
    onnx_path: Path,
    batches: InputBatches,
    output_names: Sequence[str],
    max_batch_size: int,
    plan: SizePlan,
    atol: float,
    rtol: float,
) -> ParityReport:
    """Run both runtimes on the same inputs and compare every output: batch 1, 2 and
    max_batch_size at the export sizes, batch 1 and 2 at every other planned size."""
    import onnxruntime as ort
    import torch

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(
            f"ONNX Runtime cannot load the exported model: {summarize_exception(exc)}",
            stage="verify",
        ) from None
    report = ParityReport(atol, rtol)
    runs = [(plan.export, size) for size in parity_batches(max_batch_size)]
    runs += [(sizes, size) for sizes in plan.sets[1:] for size in parity_batches(2)]
    for sizes, size in runs:
        arrays = batches.batch(size, sizes)
        with torch.inference_mode():
            expected = [t.detach().cpu().numpy() for t in model(*to_torch(arrays, batches.specs))]
        try:
            actual = session.run(list(output_names), arrays)
        except Exception as exc:
            shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
            raise ExportError(
                f"ONNX Runtime failed at batch {size}{f' ({shown})' if shown else ''}: "
                f"{summarize_exception(exc)}",
                stage="verify",
            ) from None
        for name, want, got in zip(output_names, expected, actual, strict=True):
            report.checks.append(
                compare_output(size, name, want, np.asarray(got), atol, rtol, dict(sizes))
            )
    return report
