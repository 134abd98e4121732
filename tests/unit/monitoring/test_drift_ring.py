"""The shared-memory ring of drift rows (monitoring/drift_ring.py): which tensors fit, rows in
order across the wrap, a full ring refusing instead of overwriting, settled reads, files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from monitoring.drift_ring import (
    SHM_DIR,
    RingLayout,
    RingReader,
    RingTensor,
    RingWriter,
    ring_layout,
    sweep_orphans,
)
from monitoring.observer import ModelEventRecord

TENSORS = (("outputs", "probs"), ("inputs", "x"))


def event(
    inputs: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    outputs: dict[str, tuple[str, tuple[int, ...]]] | None = None,
    max_batch_size: int = 8,
) -> ModelEventRecord:
    return ModelEventRecord(
        "m",
        "1",
        "READY",
        inputs=inputs if inputs is not None else {"x": ("FP32", (-1, 3))},
        outputs=outputs if outputs is not None else {"probs": ("FP64", (-1, 2, 2))},
        max_batch_size=max_batch_size,
    )


def small(capacity: int = 10) -> RingLayout:
    return RingLayout(
        (RingTensor("outputs", "probs", "<f8", (2, 2)), RingTensor("inputs", "x", "<f4", (3,))),
        capacity,
    )


@pytest.fixture
def ring() -> Iterator[tuple[RingWriter, RingReader]]:
    writer = RingWriter(small(), prefix="ferry-drift-test")
    reader = RingReader(writer.layout, writer.path)
    yield writer, reader
    writer.unlink()


def rows(start: int, count: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = np.arange(start * 3, (start + count) * 3, dtype=np.float32).reshape(count, 3)
    probs = np.arange(start * 4, (start + count) * 4, dtype=np.float64).reshape(count, 2, 2)
    return {"x": x}, {"probs": probs}


def test_fixed_row_shapes_of_fixed_size_types_fit_a_ring() -> None:
    layout = ring_layout(event(), TENSORS, window=1000)
    assert layout is not None
    assert [(t.scope, t.name, t.dtype, t.row_shape) for t in layout.tensors] == [
        ("outputs", "probs", "<f8", (2, 2)),
        ("inputs", "x", "<f4", (3,)),
    ]
    assert layout.capacity >= 4 * 1000
    assert all(offset % 64 == 0 for offset in layout.offsets())
    # a model that does not batch: the whole shape is one row
    flat = ring_layout(event({"x": ("INT64", (3,))}, {"probs": ("FP64", (2, 2))}, 0), TENSORS, 10)
    assert flat is not None and flat.tensors[1].row_shape == (3,)


@pytest.mark.parametrize(
    "inputs",
    [
        {"x": ("FP32", (-1, -1))},  # a dynamic row dimension
        {"x": ("BYTES", (-1, 3))},  # a variable-size type
        {"y": ("FP32", (-1, 3))},  # the signals read a tensor the model does not have
    ],
)
def test_tensors_that_vary_keep_the_socket(inputs: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    assert ring_layout(event(inputs), TENSORS, window=1000) is None


def test_rows_come_out_in_order_across_the_wrap(ring: tuple[RingWriter, RingReader]) -> None:
    writer, reader = ring
    for start, count in [(0, 4), (4, 3)]:
        assert writer.write(*rows(start, count), count, True) is True
    inputs, outputs, taken = reader.take(settled=False)
    assert taken == 7
    np.testing.assert_array_equal(inputs["x"], rows(0, 7)[0]["x"])
    # 7 of 10 used, then read: the next 6 rows wrap around the end
    assert writer.write(*rows(7, 6), 6, True) is True
    inputs, outputs, taken = reader.take(settled=False)
    assert taken == 6
    np.testing.assert_array_equal(inputs["x"], rows(7, 6)[0]["x"])
    np.testing.assert_array_equal(outputs["probs"], rows(7, 6)[1]["probs"])


def test_a_full_ring_refuses_rows_and_keeps_the_unread_ones(
    ring: tuple[RingWriter, RingReader],
) -> None:
    writer, reader = ring
    assert writer.write(*rows(0, 8), 8, True) is True
    assert writer.write(*rows(8, 3), 3, True) is False  # 11 > 10: refused whole
    assert writer.write(*rows(8, 2), 2, True) is True
    inputs, _, taken = reader.take(settled=False)
    assert taken == 10
    np.testing.assert_array_equal(inputs["x"], rows(0, 10)[0]["x"])
    assert writer.write(*rows(10, 10), 10, True) is True  # the room is free again


def test_a_settled_read_takes_only_what_the_previous_pass_saw(
    ring: tuple[RingWriter, RingReader],
) -> None:
    writer, reader = ring
    writer.write(*rows(0, 2), 2, True)
    assert reader.take(settled=True)[2] == 0  # seen now, taken on the next pass
    writer.write(*rows(2, 3), 3, True)
    inputs, _, taken = reader.take(settled=True)
    assert taken == 2
    np.testing.assert_array_equal(inputs["x"], rows(0, 2)[0]["x"])
    assert reader.take(settled=False)[2] == 3


def test_a_request_of_another_type_or_shape_is_not_written(
    ring: tuple[RingWriter, RingReader],
) -> None:
    writer, reader = ring
    inputs, outputs = rows(0, 2)
    assert writer.write({"x": inputs["x"].astype(np.float64)}, outputs, 2, True) is None
    assert writer.write({"x": inputs["x"][:, :2]}, outputs, 2, True) is None
    assert writer.write({}, outputs, 2, True) is None
    assert writer.write(inputs, outputs, 3, True) is None  # rows disagree with the arrays
    assert reader.take(settled=False)[2] == 0


def test_a_model_without_a_row_axis_writes_one_row() -> None:
    writer = RingWriter(small(), prefix="ferry-drift-test")
    try:
        reader = RingReader(writer.layout, writer.path)
        inputs, outputs = rows(0, 1)
        one = ({"x": inputs["x"][0]}, {"probs": outputs["probs"][0]})
        assert writer.write(*one, 1, False) is True
        assert writer.write(*rows(0, 1), 1, False) is None  # has a row axis it should not
        taken_inputs, _, taken = reader.take(settled=False)
        assert taken == 1
        np.testing.assert_array_equal(taken_inputs["x"], inputs["x"])
    finally:
        writer.unlink()


def test_the_reader_removes_the_file_and_both_ends_keep_the_memory() -> None:
    writer = RingWriter(small(), prefix="ferry-drift-test")
    assert os.path.exists(writer.path)
    reader = RingReader(writer.layout, writer.path)
    assert not os.path.exists(writer.path)  # nothing left behind if either process dies
    writer.write(*rows(0, 1), 1, True)
    assert reader.take(settled=False)[2] == 1
    writer.unlink()  # already gone: no error


def test_a_reader_refuses_a_file_of_another_size() -> None:
    writer = RingWriter(small(), prefix="ferry-drift-test")
    try:
        with pytest.raises(OSError, match="not"):
            RingReader(small(capacity=20), writer.path)
    finally:
        writer.unlink()


def test_rows_of_a_strided_array_are_copied_too(ring: tuple[RingWriter, RingReader]) -> None:
    writer, reader = ring
    inputs, outputs = rows(0, 4)
    wide = np.zeros((4, 6), np.float32)
    wide[:, ::2] = inputs["x"]
    strided = {"x": wide[:, ::2]}  # not C-contiguous: no byte copy
    assert not strided["x"].flags.c_contiguous
    assert writer.write(strided, outputs, 4, True) is True
    taken_inputs, _, taken = reader.take(settled=False)
    assert taken == 4
    np.testing.assert_array_equal(taken_inputs["x"], inputs["x"])


def test_a_reader_maps_only_drift_rings(tmp_path: Path) -> None:
    """The evaluator unlinks what it maps: a path a feeder names elsewhere is refused, kept."""
    elsewhere = tmp_path / "ferry-drift-1-1"
    elsewhere.write_bytes(b"\0" * small().size)
    with pytest.raises(OSError, match="not a drift ring"):
        RingReader(small(), str(elsewhere))
    assert elsewhere.exists()
    writer = RingWriter(small(), prefix="other")
    try:
        with pytest.raises(OSError, match="not a drift ring"):
            RingReader(small(), writer.path)
        assert os.path.exists(writer.path)
    finally:
        writer.unlink()


def test_rows_too_wide_for_a_ring_keep_the_socket() -> None:
    image = event({"x": ("FP32", (-1, 3, 224, 224))})  # 600 KB a row: not 2 windows in 16 MB
    assert ring_layout(image, TENSORS, window=1000) is None


def test_rings_of_dead_writers_are_swept_and_live_ones_kept() -> None:
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert SHM_DIR is not None
    orphan = SHM_DIR / f"ferry-drift-test-{dead.stdout.strip()}-0"
    orphan.write_bytes(b"")
    live = RingWriter(small(), prefix="ferry-drift-test")  # this process's own
    try:
        assert sweep_orphans("ferry-drift-test") == 1
        assert not orphan.exists() and os.path.exists(live.path)
    finally:
        live.unlink()
        orphan.unlink(missing_ok=True)
