"""Input spec parsing and .npz data checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporters.errors import ExportError, summarize_exception
from exporters.specs import IOSpec, check_data_matches, load_npz, parse_input_spec, spec_of_array


def test_parse_input_spec() -> None:
    assert parse_input_spec("x:FP32:1,28,28") == IOSpec("x", "FP32", (1, 28, 28))
    assert parse_input_spec("ids:int64:16") == IOSpec("ids", "INT64", (16,))
    assert str(parse_input_spec("x:FP16:3")) == "x:FP16:3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x:FP32", "does not parse"),
        (":FP32:3", "does not parse"),
        ("x:FLOAT:3", "unknown datatype"),
        ("x:FP32:a,b", "comma-separated integers"),
        ("x:FP32:", "positive sizes"),
        ("x:FP32:-1,3", "positive sizes"),
        ("x:BYTES:3", "unknown datatype"),
    ],
)
def test_parse_input_spec_rejects(text: str, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        parse_input_spec(text)


def test_spec_of_array() -> None:
    assert spec_of_array("a", np.zeros((5, 2, 3), np.int64)) == IOSpec("a", "INT64", (2, 3))
    with pytest.raises(ExportError, match="batch axis"):
        spec_of_array("a", np.zeros(5, np.float32))
    with pytest.raises(ExportError, match="cannot export"):
        spec_of_array("a", np.zeros((5, 2), np.complex64))


def test_check_data_matches() -> None:
    specs = [IOSpec("x", "FP32", (4,))]
    check_data_matches({"x": np.zeros((3, 4), np.float32), "labels": np.zeros(3)}, specs, "--e")
    with pytest.raises(ExportError, match="has no array 'x'"):
        check_data_matches({"y": np.zeros((3, 4), np.float32)}, specs, "--e")
    with pytest.raises(ExportError, match="is x:FP64:4, the input is x:FP32:4"):
        check_data_matches({"x": np.zeros((3, 4))}, specs, "--e")


def test_load_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((2, 3), np.float32))
    assert load_npz(tmp_path / "d.npz", "--example")["x"].shape == (2, 3)
    with pytest.raises(ExportError, match="file not found"):
        load_npz(tmp_path / "missing.npz", "--example")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match=r"not a readable \.npz"):
        load_npz(tmp_path / "bad.npz", "--example")


def test_summarize_exception_keeps_the_exporters_summary() -> None:
    text = (
        "Failed to convert. \x1b[96mstep 3/3\x1b[0m\n- hint\n## Exception summary\n\n"
        "<class 'DispatchError'>: No ONNX function found\n⬆️\n"
        "(Refer to the full stack trace above for more information.)"
    )
    summary = summarize_exception(RuntimeError(text))
    assert "No ONNX function found" in summary
    assert "hint" not in summary and "\x1b" not in summary and "Refer to" not in summary
    long = summarize_exception(ValueError("\n".join(f"line {i}" for i in range(100))))
    assert long.count("\n") <= 13
