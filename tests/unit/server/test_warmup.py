"""Model warmup: the samples' data (Triton's rules), and warmup runs on every instance of a
real ONNX Runtime model before it can serve."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from server.errors import ErrorKind, ServingError
from server.model_config import prepare
from server.repository_format import parse_config
from server.warmup import load_warm_instances, warmup_samples
from tests.support.onnx_models import mlp_model, write_model

BYTES_STRING = "TYPE_STRING"


def samples(tmp_path: Path, warmup: str, max_batch_size: int = 8) -> list:
    config = parse_config(f"max_batch_size: {max_batch_size}\nmodel_warmup [{warmup}]")
    return warmup_samples(config, tmp_path)


def entry(name: str, key: str, datatype: str, dims: str, data: str, **more: int) -> str:
    extra = " ".join(f"{k}: {v}" for k, v in more.items())
    return (
        f'{{ name: "{name}" {extra} inputs {{ key: "{key}" value {{ data_type: {datatype} '
        f"dims: [{dims}] {data} }} }} }}"
    )


def test_zero_random_and_file_data(tmp_path: Path) -> None:
    (tmp_path / "warmup").mkdir()
    values = np.arange(8, dtype=np.int32)
    (tmp_path / "warmup" / "x.bin").write_bytes(values.tobytes() + b"extra bytes are ignored")
    strings = b"".join(len(s).to_bytes(4, "little") + s for s in (b"ab", b"", b"xyz"))
    (tmp_path / "warmup" / "s.bin").write_bytes(strings)
    found = samples(
        tmp_path,
        ",".join(
            [
                entry("zeros", "a", "TYPE_FP32", "2, 3", "zero_data: true", batch_size=4),
                entry("noise", "a", "TYPE_FP16", "5", "random_data: true", batch_size=1, count=3),
                entry("file", "a", "TYPE_INT32", "8", 'input_data_file: "x.bin"', batch_size=2),
                entry("strings", "s", BYTES_STRING, "3", 'input_data_file: "s.bin"', batch_size=1),
                entry("text", "s", BYTES_STRING, "2", "random_data: true", batch_size=1),
                entry("skipped", "a", "TYPE_FP32", "1", "zero_data: true", batch_size=0),
            ]
        ),
    )
    by_name = {s.name: s for s in found}
    assert list(by_name) == ["zeros", "noise", "file", "strings", "text"]  # batch 0: skipped
    zeros = by_name["zeros"]
    assert zeros.inputs["a"].shape == (1, 2, 3) and not zeros.inputs["a"].any()
    assert (zeros.batch_size, zeros.count) == (4, 1)  # count 0 runs once
    noise = by_name["noise"].inputs["a"]
    assert noise.dtype == np.float16 and noise.shape == (1, 5) and by_name["noise"].count == 3
    assert by_name["file"].inputs["a"].tolist() == [values.tolist()]
    assert by_name["strings"].inputs["s"].tolist() == [[b"ab", b"", b"xyz"]]
    assert by_name["text"].inputs["s"].tolist() == [[b"", b""]]  # random strings: zero data


def test_a_model_without_batching_gets_no_batch_dim(tmp_path: Path) -> None:
    found = samples(
        tmp_path,
        entry("s", "a", "TYPE_FP32", "4", "zero_data: true", batch_size=1),
        max_batch_size=0,
    )
    assert found[0].inputs["a"].shape == (4,)


@pytest.mark.parametrize(
    ("warmup", "kind", "fragment"),
    [
        (
            entry("s", "a", "TYPE_FP32", "-1", "zero_data: true", batch_size=1),
            ErrorKind.INVALID_ARG,
            "expects all variable-size dimensions are specified for input 'a'",
        ),
        (
            entry("s", "a", "TYPE_FP32", "4", 'input_data_file: "nope.bin"', batch_size=1),
            ErrorKind.INTERNAL,
            "failed to open text file for read",
        ),
        (
            entry("s", "a", "TYPE_INT64", "4", 'input_data_file: "short.bin"', batch_size=1),
            ErrorKind.INVALID_ARG,
            "warmup setting expects 32 bytes, but the data provided from short.bin only has 8",
        ),
        (
            entry("s", "a", "TYPE_FP32", "4", "", batch_size=1),
            ErrorKind.INVALID_ARG,
            "to have input_data_type set",
        ),
    ],
)
def test_bad_samples(tmp_path: Path, warmup: str, kind: ErrorKind, fragment: str) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "short.bin").write_bytes(bytes(8))
    with pytest.raises(ServingError, match=fragment) as caught:
        samples(tmp_path, warmup)
    assert caught.value.kind == kind


WARM_CONFIG = """
max_batch_size: 8
instance_group [{ kind: KIND_CPU count: 2 }]
model_warmup [{ name: "sample" batch_size: 3 count: 2
  inputs { key: "input" value { data_type: TYPE_FP32 dims: [%d] zero_data: true } } }]
"""


def load(tmp_path: Path, dims: int) -> tuple[list, list]:
    model_dir = write_model(tmp_path, "mlp", mlp_model(), WARM_CONFIG % dims)
    prepared = prepare("mlp", model_dir, None, 4)
    return asyncio.run(load_warm_instances("mlp", 1, prepared.config, model_dir / "1"))


def test_warmup_runs_each_sample_count_times_on_every_instance(tmp_path: Path) -> None:
    instances, executions = load(tmp_path, 16)
    try:
        assert len(instances) == 2
        assert [(e.requests, e.rows) for e in executions] == [(3, 3)] * 4  # 2 instances x 2
        assert all(e.compute_infer_s > 0 for e in executions)
    finally:
        for instance in instances:
            instance.close()


def test_a_failing_sample_fails_the_load_with_its_name(tmp_path: Path) -> None:
    with pytest.raises(
        ServingError, match=r"(?s)^failed to run warmup sample 'sample': .*Got: 15"
    ) as caught:
        load(tmp_path, 15)  # the model takes 16 features
    assert caught.value.kind == ErrorKind.INVALID_ARG
