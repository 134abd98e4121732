"""Model warmup in a real `ferry serve`, next to a real tritonserver serving python-backend twins
of the same models with the same `model_warmup` entries: the same states, the same class of
reason for each failure, the same statistics after a warmup; the same again with one repository
of Python models served by both (decoupled models included: a warmup reads their streams to the
end, and a failed response fails it; an ensemble cannot have a warmup); and a model is never
READY before its warmup has run."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.support.concurrent_clients import model_statistics
from tests.support.onnx_models import concat_model, mlp_model, slow_model, write_model
from tests.support.python_models import write_ensemble, write_repeat
from tests.support.server_process import ServerProcess, running_server
from tests.support.triton_server import missing_reason, running_tritonserver, write_linear_model

MLP_CONFIG = "max_batch_size: 8\n"


def warmup(data: str, batch_size: int = 2, count: int = 3, dims: str = "4", key: str = "x") -> str:
    return (
        f'model_warmup [{{ name: "s1" batch_size: {batch_size} count: {count} inputs {{ '
        f'key: "{key}" value {{ data_type: TYPE_FP32 dims: [{dims}] {data} }} }} }}]\n'
    )


# name -> warmup entry; each model is written for Triton (python backend) and for ferry (ONNX)
CASES = {
    "warm": warmup("zero_data: true"),
    "random": warmup("random_data: true", batch_size=1, count=0),
    "fails": warmup("zero_data: true"),  # the model's execution fails on any input
    "nofile": warmup('input_data_file: "nope.bin"'),
    "shortfile": warmup('input_data_file: "short.bin"'),
}


def write_triton_repository(repo: Path) -> None:
    for name, entry in CASES.items():
        model_dir = write_linear_model(repo, name, max_batch_size=8)
        with (model_dir / "config.pbtxt").open("a") as config:
            config.write(entry)
        model_py = model_dir / "1" / "model.py"
        if name == "fails":
            model_py.write_text(
                model_py.read_text().replace(
                    "    def execute(self, requests):\n",
                    "    def execute(self, requests):\n"
                    "        raise RuntimeError('the model cannot run')\n",
                )
            )
        if name == "random":  # random bytes may be NaN, which the linear model refuses
            model_py.write_text(model_py.read_text().replace("np.isnan(x).any()", "False"))
        (model_dir / "warmup").mkdir()
        (model_dir / "warmup" / "short.bin").write_bytes(bytes(8))


def write_ferry_repository(repo: Path) -> None:
    for name, entry in CASES.items():
        if name == "fails":  # a and b of different widths: ONNX Runtime fails to concat them
            config = 'max_batch_size: 0\nmodel_warmup [{ name: "s1" batch_size: 2 count: 3 '
            config += 'inputs { key: "a" value { data_type: TYPE_FP32 dims: [1, 2] zero_data: '
            config += 'true } } inputs { key: "b" value { data_type: TYPE_FP32 dims: [1, 3] '
            config += "zero_data: true } } }]\n"
            model_dir = write_model(repo, name, concat_model(), config)
        else:
            model = mlp_model(4, 8, 3, input_name="x", output_name="y")
            model_dir = write_model(repo, name, model, MLP_CONFIG + entry)
        (model_dir / "warmup").mkdir()
        (model_dir / "warmup" / "short.bin").write_bytes(bytes(8))


def index(server: ServerProcess) -> dict[str, dict[str, str]]:
    request = urllib.request.Request(
        f"http://{server.http_url}/v2/repository/index", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(request) as response:
        return {row["name"]: row for row in json.loads(response.read())}


def reason_class(reason: str, repo: Path) -> str:
    """The reason without Triton's '<code>: ' and request id prefixes, the repository path and
    the details after the first clause (the runtimes' own messages differ)."""
    for prefix in ("Invalid argument: ", "Internal: ", "[request id: <id_unknown>] "):
        reason = reason.removeprefix(prefix)
    reason = reason.replace(str(repo), "REPO")
    if reason.startswith("failed to run warmup sample"):
        return reason.split(": ", 1)[0]
    if reason.startswith("warmup setting expects"):
        return " ".join(reason.split()[:5])  # Triton's message lacks a space after the file
    return reason


def triton_outcome(
    repo: Path, models: tuple[str, ...] = ("warm",), tries: int = 3
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """tritonserver's index, the statistics of `models` and its log. Triton 2.51's python
    backend sometimes crashes (SIGSEGV) after a warmup sample failed: such a start is tried
    again."""
    for attempt in range(tries):
        try:
            with running_tritonserver(
                repo, "--exit-on-error=false", "--strict-readiness=false", ready=False
            ) as triton:
                stats = {m: model_statistics(triton, m) for m in models}
                return index(triton), stats, triton.log()
        except (RuntimeError, OSError) as error:  # OSError: it crashed after starting
            crashed = isinstance(error, OSError) or "exited with -11" in str(error)
            if not crashed or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_warmup_states_reasons_and_statistics_match_triton(tmp_path: Path) -> None:
    write_triton_repository(tmp_path / "triton")
    write_ferry_repository(tmp_path / "ferry")
    theirs, their_models, _ = triton_outcome(tmp_path / "triton")
    their_stats = their_models["warm"]
    with running_server(tmp_path / "ferry", "--no-strict-readiness") as ferry:
        ours = index(ferry)
        our_stats = model_statistics(ferry, "warm")
    assert {n: r["state"] for n, r in ours.items()} == {n: r["state"] for n, r in theirs.items()}
    assert [n for n, r in ours.items() if r["state"] == "READY"] == ["random", "warm"]
    for name in ("fails", "nofile", "shortfile"):
        expected = reason_class(theirs[name]["reason"], tmp_path / "triton")
        assert reason_class(ours[name]["reason"], tmp_path / "ferry") == expected, name
    assert reason_class(ours["fails"]["reason"], tmp_path) == "failed to run warmup sample 's1'"
    # the warmup counts in the statistics: 3 executions of 2 requests (of one row each)
    for key in ("inference_count", "execution_count"):
        assert our_stats[key] == their_stats[key], key
    assert (our_stats["inference_count"], our_stats["execution_count"]) == (6, 3)
    for key in ("success", "compute_infer"):
        ours_count = our_stats["inference_stats"][key]["count"]
        assert ours_count == their_stats["inference_stats"][key]["count"], key
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in our_stats["batch_stats"]] == [
        (b["batch_size"], b["compute_infer"]["count"]) for b in their_stats["batch_stats"]
    ]


STREAM_WARMUP = """model_warmup [{ name: "s1" batch_size: 1 count: 2
  inputs { key: "N" value { data_type: TYPE_INT32 dims: [1] input_data_file: "n.bin" } } }]
"""
ENSEMBLE_OVER_WARM = """max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [3] }]
ensemble_scheduling { step [{ model_name: "warm" model_version: -1
  input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } }] }
"""


def write_python_repository(repo: Path) -> None:
    """The python-backend twins, two decoupled models whose warmup asks for 3 responses and
    for 5 (the 3rd of which fails), and an ensemble with a warmup."""
    write_triton_repository(repo)
    for name, count in (("stream_warm", 3), ("stream_fails", 5)):
        model_dir = write_repeat(repo, name)
        with (model_dir / "config.pbtxt").open("a") as config:
            config.write(STREAM_WARMUP)
        (model_dir / "warmup").mkdir()
        (model_dir / "warmup" / "n.bin").write_bytes(np.array([count], "<i4").tobytes())
    write_ensemble(repo, "ensemble_warm", ENSEMBLE_OVER_WARM + warmup("zero_data: true"))


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_python_models_warm_up_as_in_triton(tmp_path: Path) -> None:
    write_python_repository(tmp_path)
    models = ("warm", "stream_warm")
    theirs, their_stats, their_log = triton_outcome(tmp_path, models)
    with running_server(tmp_path, "--no-strict-readiness") as ferry:
        ours = index(ferry)
        our_stats = {m: model_statistics(ferry, m) for m in models}
    # an ensemble with a warmup does not load: Triton lists it without a state and logs why,
    # ferry lists it UNAVAILABLE with the same words
    refusal = "model_warmup can not be specified for ensemble 'ensemble_warm'"
    assert "state" not in theirs.pop("ensemble_warm") and refusal in their_log
    ensemble = ours.pop("ensemble_warm")
    assert ensemble["state"] == "UNAVAILABLE" and ensemble["reason"].endswith(refusal)
    assert {n: r["state"] for n, r in ours.items()} == {n: r["state"] for n, r in theirs.items()}
    ready = [n for n, r in ours.items() if r["state"] == "READY"]
    assert ready == ["random", "stream_warm", "warm"]
    for name in ("fails", "nofile", "shortfile", "stream_fails"):
        expected = reason_class(theirs[name]["reason"], tmp_path)
        assert reason_class(ours[name]["reason"], tmp_path) == expected, name
    # every failed response of the sample, in Triton's words
    assert ours["stream_fails"]["reason"] == (
        "failed to run warmup sample 's1': response 2 of 5 fails; "
    )
    for model in models:
        for key in ("inference_count", "execution_count"):
            assert our_stats[model][key] == their_stats[model][key], (model, key)
        ours_count = our_stats[model]["inference_stats"]["success"]["count"]
        assert ours_count == their_stats[model]["inference_stats"]["success"]["count"], model


SLOW_WARMUP = """max_batch_size: 8
model_warmup [{ name: "long" batch_size: 8 count: 12
  inputs { key: "input" value { data_type: TYPE_FP32 dims: [256] random_data: true } } }]
"""


def test_a_model_is_ready_only_after_its_warmup(tmp_path: Path) -> None:
    write_model(tmp_path, "slow", slow_model(), SLOW_WARMUP)
    with running_server(tmp_path, "--model-control-mode", "explicit") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        seen: list[tuple[bool, int]] = []
        load = urllib.request.Request(  # tritonclient.http's client is not thread-safe
            f"http://{server.http_url}/v2/repository/models/slow/load", data=b"", method="POST"
        )
        loader = threading.Thread(target=lambda: urllib.request.urlopen(load).close())
        loader.start()
        while loader.is_alive():
            ready = client.is_model_ready("slow")
            executions = model_statistics(server, "slow")["execution_count"] if ready else 0
            seen.append((ready, executions))
            time.sleep(0.005)
        loader.join()
        assert client.is_model_ready("slow")
        assert model_statistics(server, "slow")["execution_count"] == 12
        assert all(executions == 12 for ready, executions in seen if ready), seen
        x = httpclient.InferInput("input", [1, 256], "FP32")
        x.set_data_from_numpy(np.ones((1, 256), np.float32))
        assert client.infer("slow", [x]).as_numpy("output").shape == (1, 256)
        client.close()


def test_a_failing_warmup_keeps_the_loaded_version_on_reload(tmp_path: Path) -> None:
    """Explicit load of a config whose warmup fails: the version serving keeps serving, with
    its own config (ferry's rule for any failed reload), and the failure is logged."""
    write_model(tmp_path, "mlp", mlp_model(), MLP_CONFIG)
    bad: dict[str, Any] = {
        "max_batch_size": 8,
        "model_warmup": [
            {
                "name": "narrow",
                "batch_size": 1,
                "inputs": {"input": {"data_type": "TYPE_FP32", "dims": [15], "zero_data": True}},
            }
        ],
    }
    with running_server(tmp_path, "--model-control-mode", "explicit", "--load-model", "mlp") as s:
        client = httpclient.InferenceServerClient(s.http_url)
        client.load_model("mlp", config=json.dumps(bad))
        assert client.is_model_ready("mlp")
        assert client.get_model_config("mlp").get("model_warmup", []) == []
        x = httpclient.InferInput("input", [1, 16], "FP32")
        x.set_data_from_numpy(np.ones((1, 16), np.float32))
        assert client.infer("mlp", [x]).as_numpy("output").shape == (1, 4)
        client.close()
    assert "failed to run warmup sample 'narrow'" in s.log()
