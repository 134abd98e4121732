"""`ferry export --stateful`: recurrent modules become step models served by the sequence
batcher with implicit state; the whole-sequence parity check; the time-series LSTM example."""

from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from server.repository_format import read_config
from tests.integration.test_export_cli import assert_untouched
from tests.support import torch_models as tm
from tests.support.export_cli import ferry_export
from tests.support.server_process import running_server

M = "tests.support.torch_models"
pytestmark = pytest.mark.slow


def stream_sequence(
    url: str, model: str, input_name: str, steps: np.ndarray, output_name: str, sid: int = 7
) -> np.ndarray:
    """One sequence over ModelStreamInfer, every step sent at once; the outputs in order."""
    answers: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for t, step in enumerate(steps):
        tensor = grpcclient.InferInput(input_name, [1, *step.shape], "FP32")
        tensor.set_data_from_numpy(step[np.newaxis].astype(np.float32))
        client.async_stream_infer(
            model,
            [tensor],
            request_id=str(t),
            sequence_id=sid,
            sequence_start=t == 0,
            sequence_end=t == len(steps) - 1,
        )
    outputs: dict[int, np.ndarray] = {}
    for _ in steps:
        result, error = answers.get(timeout=60)
        assert error is None, error
        outputs[int(result.get_response().id)] = result.as_numpy(output_name)[0]
    client.stop_stream()
    client.close()
    return np.stack([outputs[t] for t in range(len(steps))])


def test_stateful_gru_exports_with_implicit_state_and_serves_sequences(tmp_path: Path) -> None:
    code, output = ferry_export(
        tmp_path,
        f"{M}:StatefulGRU",
        "--stateful",
        "--input",
        "x:FP32:1,5",
        "--state",
        "h:FP32:2,16",
        "--output",
        "y",
        "--max-batch-size",
        "8",
        "--sequence-length",
        "12",
    )
    assert code == 0, output
    config = read_config(tmp_path / "m")
    assert config is not None
    assert [t.name for t in config.input] == ["x"] and [t.name for t in config.output] == ["y"]
    state = config.sequence_batching.state[0]
    assert (state.input_name, state.output_name, list(state.dims)) == ("h", "h_out", [2, 16])
    assert state.initial_state[0].zero_data and config.sequence_batching.HasField("direct")
    assert not config.HasField("dynamic_batching")
    report = json.loads((tmp_path / "m" / "1" / "export_report.json").read_text())
    assert report["sequence_parity"]["passed"] and report["sequence_parity"]["steps"] == 12
    assert report["sequence_parity"]["reference"] == "full_sequence"

    steps = np.random.default_rng(3).standard_normal((20, 1, 5)).astype(np.float32)
    with torch.inference_mode():
        full, _ = tm.StatefulGRU().eval()(
            torch.from_numpy(steps.reshape(1, 20, 5)), torch.zeros(1, 2, 16)
        )
    with running_server(tmp_path) as server:
        served = stream_sequence(server.grpc_url, "m", "x", steps, "y")
    np.testing.assert_allclose(served.reshape(20, 3), full.numpy()[0], rtol=1e-4, atol=1e-5)


def test_a_control_input_is_passed_to_forward_and_configured(tmp_path: Path) -> None:
    code, output = ferry_export(
        tmp_path,
        f"{M}:CountingCell",
        "--stateful",
        "--input",
        "x:FP32:3",
        "--state",
        "total:FP32:3",
        "--control",
        "start",
        "--output",
        "sum",
    )
    assert code == 0, output
    config = read_config(tmp_path / "m")
    assert config is not None
    control = config.sequence_batching.control_input[0]
    assert control.name == "start" and list(control.control[0].int32_false_true) == [0, 1]
    report = json.loads((tmp_path / "m" / "1" / "export_report.json").read_text())
    assert report["sequence_parity"]["reference"] == "step_by_step"
    steps = np.arange(12, dtype=np.float32).reshape(4, 3)
    with running_server(tmp_path) as server:
        first = stream_sequence(server.grpc_url, "m", "x", steps, "sum", sid=1)
        again = stream_sequence(server.grpc_url, "m", "x", steps, "sum", sid=1)
    np.testing.assert_allclose(first, np.cumsum(steps, axis=0))
    np.testing.assert_allclose(again, first)  # START reset the sum


def test_a_model_whose_steps_differ_from_the_whole_sequence_is_refused(tmp_path: Path) -> None:
    code, output = ferry_export(
        tmp_path,
        f"{M}:LengthDependentRNN",
        "--stateful",
        "--input",
        "x:FP32:1,2",
        "--state",
        "h:FP32:1,4",
    )
    assert code == 1
    assert "does not match PyTorch (full sequence)" in " ".join(output.split())
    assert_untouched(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--input", "x:FP32:1,5"), "--stateful needs the state"),
        (("--input", "x:FP32:1,5", "--state", "h:FP32:2,16", "--control", "begin"), "--control"),
        (
            ("--input", "x:FP32:1,5", "--state", "h:FP32:2,16", "--output", "a", "--output", "b"),
            "2 --output names for 1 outputs",
        ),
        (("--input", "x:FP32:-1,5", "--state", "h:FP32:2,16"), "has a variable dim"),
        (
            ("--input", "x:FP32:1,5", "--state", "hidden:FP32:2,16"),
            "input 'hidden' is not a parameter of the model's forward(x, h)",
        ),
    ],
)
def test_bad_stateful_flags(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    code, output = ferry_export(tmp_path, f"{M}:StatefulGRU", "--stateful", *args)
    assert code == 1 and message in " ".join(output.split())
    assert_untouched(tmp_path)


def test_timeseries_example_streams_through_the_served_lstm(tmp_path: Path) -> None:
    from examples import timeseries
    from scripts.build_example_repository import build

    artifacts, repository = tmp_path / "artifacts", tmp_path / "repo"
    assert build(repository, artifacts, ["timeseries"]) == 0
    metrics = json.loads((artifacts / "timeseries" / "metrics.json").read_text())
    assert metrics["test_rmse"] < 0.5 * metrics["test_rmse_persistence"]
    series = timeseries.generate_streams(1, 40, seed=11)[0]
    model = timeseries.SignalLSTM()
    model.load_state_dict(torch.load(artifacts / "timeseries" / "weights.pt"))
    zeros = torch.zeros(1, 1, timeseries.HIDDEN)
    with torch.inference_mode():
        expected = model.eval()(torch.from_numpy(series.reshape(1, -1, 1)), zeros, zeros)[0]
    with running_server(repository) as server:
        served = stream_sequence(
            server.grpc_url,
            "timeseries",
            timeseries.INPUT,
            series.reshape(-1, 1, 1),
            timeseries.OUTPUT,
        )
    np.testing.assert_allclose(served.reshape(-1), expected.numpy().reshape(-1), atol=1e-5)
