"""scripts/generate_proto_stubs.py: typed stubs of tritonclient's protos, which mypy then checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mypy import api as mypy_api

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "generate_proto_stubs.py"


def _generate(out_dir: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return sorted(Path(line).relative_to(out_dir).as_posix() for line in result.stdout.split())


def test_stubs_cover_the_proto_modules_under_their_import_paths(tmp_path: Path) -> None:
    assert _generate(tmp_path) == [
        "tritonclient/__init__.pyi",
        "tritonclient/grpc/__init__.pyi",
        "tritonclient/grpc/model_config_pb2.pyi",
        "tritonclient/grpc/service_pb2.pyi",
    ]
    model_config = (tmp_path / "tritonclient/grpc/model_config_pb2.pyi").read_text()
    assert "class ModelConfig(_message.Message):" in model_config
    assert "max_batch_size: _builtins.int" in model_config
    service = (tmp_path / "tritonclient/grpc/service_pb2.pyi").read_text()
    # the renamed grpc_service.proto imports model_config under tritonclient's module path
    assert "from tritonclient.grpc import model_config_pb2" in service


def test_mypy_checks_model_config_fields_with_the_stubs(tmp_path: Path) -> None:
    stubs = tmp_path / "stubs"
    _generate(stubs)
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import tritonclient.grpc as grpcclient\n"
        "from tritonclient.grpc import model_config_pb2 as mc\n"
        "config = mc.ModelConfig(name='m', max_batch_size=8)\n"
        "config.max_batch_size = 'eight'\n"  # the stub makes this an error
        "client = grpcclient.InferenceServerClient('x')\n"  # the rest of tritonclient stays Any
    )
    stdout, _, status = _run_mypy(stubs, sample, tmp_path)
    assert status == 1, stdout
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, stdout
    assert "sample.py:4:" in errors[0] and "str" in errors[0] and "int" in errors[0]


def _run_mypy(stubs: Path, sample: Path, tmp_path: Path) -> tuple[str, str, int]:
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\nstrict = True\nmypy_path = {stubs}\n")
    return mypy_api.run(
        [
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--config-file",
            str(config),
            str(sample),
        ]
    )
