"""Input spec parsing and .npz data checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporters.errors import ExportError, summarize_exception
from exporters.specs import (
    IOSpec,
    check_data_matches,
    example_dim_sizes,
    load_npz,
    name_variable_dims,
    parse_dim_sizes,
    parse_dynamic_dim,
    parse_input_spec,
    spec_of_array,
)


def test_parse_input_spec() -> None:
    assert parse_input_spec("x:FP32:1,28,28") == IOSpec("x", "FP32", (1, 28, 28))
    assert parse_input_spec("ids:int64:16") == IOSpec("ids", "INT64", (16,))
    assert str(parse_input_spec("x:FP16:3")) == "x:FP16:3"
    assert parse_input_spec("tokens:INT64:-1") == IOSpec("tokens", "INT64", (-1,))
    named = parse_input_spec("image:FP32:3,height,width")
    assert named == IOSpec("image", "FP32", (3, "height", "width"))
    assert named.config_dims == (3, -1, -1)
    assert named.variable_axes == {2: "height", 3: "width"}
    assert named.shape(4, {"height": 5, "width": 6}) == (4, 3, 5, 6)


def test_variable_dims_are_named_and_shared_by_axis() -> None:
    specs = [
        parse_input_spec("input_ids:INT64:-1"),
        parse_input_spec("attention_mask:INT64:-1"),
        parse_input_spec("image:FP32:3,-1,-1"),
    ]
    named = name_variable_dims(specs, [parse_dynamic_dim("image:2=height")])
    assert [s.dims for s in named] == [("dim_1",), ("dim_1",), (3, "height", "dim_3")]
    with pytest.raises(ExportError, match="no input 'nope'"):
        name_variable_dims(specs, [("nope", 1, "x")])
    with pytest.raises(ExportError, match="has axes 1 to 1"):
        name_variable_dims(specs, [("input_ids", 2, "x")])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens:0=seq", "axis 0 is the batch"),
        ("tokens=seq", "does not parse"),
        ("tokens:1=1seq", "does not parse"),
        ("tokens:x=seq", "does not parse"),
    ],
)
def test_parse_dynamic_dim_rejects(text: str, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        parse_dynamic_dim(text)


def test_parse_dim_sizes() -> None:
    assert parse_dim_sizes("seq_len=3,17,64") == ("seq_len", (3, 17, 64))
    for bad in ("seq_len", "seq_len=0", "seq_len=a", "=3"):
        with pytest.raises(ExportError, match="does not parse"):
            parse_dim_sizes(bad)
    with pytest.raises(ExportError, match="must differ"):
        parse_dim_sizes("seq_len=4,4")


def test_example_dim_sizes_must_agree_on_shared_names() -> None:
    specs = [IOSpec("a", "INT64", ("seq",)), IOSpec("b", "INT64", ("seq",))]
    assert example_dim_sizes({"a": np.zeros((2, 7)), "b": np.zeros((2, 7))}, specs) == {"seq": 7}
    with pytest.raises(ExportError, match="'seq' is 7 in 'a' axis 1 but 5 in 'b'"):
        example_dim_sizes({"a": np.zeros((2, 7)), "b": np.zeros((2, 5))}, specs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x:FP32", "does not parse"),
        (":FP32:3", "does not parse"),
        ("x:FLOAT:3", "unknown datatype"),
        ("x:FP32:a-b,3", r"a size, -1 \(variable\) or a name"),
        ("x:FP32:", "one or more dims"),
        ("x:FP32:-2,3", "not -2"),
        ("x:FP32:0", "not 0"),
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
    variable = [IOSpec("x", "FP32", ("seq", 4))]
    check_data_matches({"x": np.zeros((3, 9, 4), np.float32)}, variable, "--e")
    with pytest.raises(ExportError, match="is x:FP32:9,5, the input is x:FP32:seq,4"):
        check_data_matches({"x": np.zeros((3, 9, 5), np.float32)}, variable, "--e")


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
