"""Load-time validation in a real `ferry serve`, the same cases through `ferry check`, and startup
errors for repository paths that cannot be served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.config_mismatch import (
    MATCHING_CONFIGS,
    MISMATCH_CASES,
    write_mismatch_repository,
)
from tests.support.server_process import running_server
from tests.support.triton_server import missing_reason, running_tritonserver


def _ferry(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, COLUMNS="200"),
    )


def test_mismatched_models_are_unavailable_and_the_others_serve(tmp_path: Path) -> None:
    write_mismatch_repository(tmp_path)
    with running_server(tmp_path, ready=False) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        index = _settled_index(client, len(MISMATCH_CASES) + len(MATCHING_CONFIGS))
        for name, case in MISMATCH_CASES.items():
            assert index[name]["state"] == "UNAVAILABLE", name
            assert index[name]["version"] == "1"
            for fragment in case.expected:
                assert fragment in index[name]["reason"], (name, index[name]["reason"])
            assert not client.is_model_ready(name)
        for name in MATCHING_CONFIGS:
            assert index[name]["state"] == "READY", index[name]
        assert not client.is_server_ready()  # strict readiness: a model failed to load
        x = httpclient.InferInput("input", [2, 16], "FP32")
        x.set_data_from_numpy(np.ones((2, 16), dtype=np.float32))
        assert client.infer("matching", [x]).as_numpy("output").shape == (2, 4)
        with pytest.raises(InferenceServerException, match=r"not at ready state|no available"):
            client.infer("wrong_dim", [x])
        log = server.log()
    assert "model 'wrong_dim' version 1 failed to load" in log


def _settled_index(client: httpclient.InferenceServerClient, models: int) -> dict[str, dict]:
    """The repository index once every model has finished loading (READY or UNAVAILABLE)."""
    deadline = time.monotonic() + 60
    while True:
        rows = client.get_model_repository_index()
        states = [row.get("state") for row in rows]
        if len(rows) == models and all(s in ("READY", "UNAVAILABLE") for s in states):
            return {row["name"]: row for row in rows}
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)


def test_ferry_check_table_json_and_exit_codes(tmp_path: Path) -> None:
    write_mismatch_repository(tmp_path)
    result = _ferry("check", "--model-repository", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    table = " ".join(result.stdout.split())
    for name in (*MISMATCH_CASES, *MATCHING_CONFIGS):
        assert name in table
    assert f"{len(MATCHING_CONFIGS)} passed, {len(MISMATCH_CASES)} failed" in table

    result = _ferry("check", "--model-repository", str(tmp_path), "--json")
    rows = {row["model"]: row for row in json.loads(result.stdout)}
    assert result.returncode == 1
    for name, case in MISMATCH_CASES.items():
        assert rows[name]["status"] == "FAILED"
        assert all(fragment in rows[name]["detail"] for fragment in case.expected)

    only = [arg for name in MATCHING_CONFIGS for arg in ("--model", name)]
    good = _ferry("check", "--model-repository", str(tmp_path), *only)
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"{len(MATCHING_CONFIGS)} passed, 0 failed" in good.stdout


@pytest.mark.parametrize("command", ["serve", "check"])
def test_a_repository_that_is_not_a_directory_exits_2(tmp_path: Path, command: str) -> None:
    missing = _ferry(command, "--model-repository", str(tmp_path / "does-not-exist"))
    assert missing.returncode == 2
    assert "does-not-exist" in missing.stderr and "does not exist" in missing.stderr
    (tmp_path / "file").write_text("")
    a_file = _ferry(command, "--model-repository", str(tmp_path / "file"))
    assert a_file.returncode == 2 and "is not a directory" in a_file.stderr


def test_an_empty_repository_starts_with_a_warning(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert client.is_server_ready() and client.get_model_repository_index() == []
        log = server.log()
    assert "WARNING" in log and "is empty" in log
    result = _ferry("check", "--model-repository", str(tmp_path))
    assert result.returncode == 0 and "holds no models" in result.stdout


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_startup_verdicts_match_tritonserver(tmp_path: Path) -> None:
    """Triton also refuses a missing path or a file (exit 1: "failed to stat file", "repository
    path is not a valid directory") and serves an empty repository; ferry exits 2 (a usage
    error, like any bad flag) and says why, and warns about the empty one."""
    (tmp_path / "file").write_text("")
    (tmp_path / "empty").mkdir()
    for path, triton_says in (
        (tmp_path / "missing", "failed to stat file"),
        (tmp_path / "file", "repository path is not a valid directory"),
    ):
        with (
            pytest.raises(RuntimeError, match="tritonserver exited with 1") as raised,
            running_tritonserver(path, timeout=60),
        ):
            pass
        assert triton_says in str(raised.value)
        assert _ferry("serve", "--model-repository", str(path)).returncode == 2
    with running_tritonserver(tmp_path / "empty", timeout=60) as triton:
        assert httpclient.InferenceServerClient(triton.http_url).is_server_ready()
