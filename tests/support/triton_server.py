"""Start a real NVIDIA Triton server (from the nvidia-pytriton wheel) on free loopback ports.

`make test` installs the wheel into `.venv-triton` (its numpy<2 pin cannot share the project
venv). The server runs CPU-only with the python backend, launched the way pytriton launches it:
the python backend stub for the venv's Python is copied beside the backend library, the wheel's
bundled libraries are on LD_LIBRARY_PATH, and the venv's `bin` leads PATH so the stub's
(isolated) embedded interpreter takes the venv as its prefix and can import numpy. The stub links
the system `libpython3.X.so.1.0` (`scripts/install-system-deps.sh` installs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tests.support.server_process import ServerProcess, free_port, wait_until_live

REPO_ROOT = Path(__file__).resolve().parents[2]
TRITON_VENV = REPO_ROOT / ".venv-triton"


def _site_packages() -> Path | None:
    found = sorted(TRITON_VENV.glob("lib/python3.*/site-packages/pytriton"))
    return found[0].parent if found else None


def tritonserver_binary() -> Path | None:
    """The tritonserver binary shipped in the nvidia-pytriton wheel, if installed."""
    site_packages = _site_packages()
    if site_packages is None:
        return None
    binary = site_packages / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    return binary if binary.is_file() else None


def missing_reason() -> str | None:
    """Why a real Triton cannot run here (None when it can): for pytest.skip."""
    if tritonserver_binary() is None:
        return (
            f"tritonserver is not installed in {TRITON_VENV} (`make .venv-triton/.installed` "
            "or `make test` installs nvidia-pytriton there)"
        )
    return None


def require_tritonserver() -> None:
    """Skip the calling test (or fixture) when a real Triton cannot run here."""
    import pytest

    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)


class TritonServer(ServerProcess):
    """The same handle as a `ferry serve` process (ports, log, SIGTERM-then-kill stop), and the
    stop also ends tritonserver's process group: a python-backend stub outlives a tritonserver
    that crashed (2.51 sometimes does after a failed warmup sample) and would be left behind."""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        code = super().stop(sig, timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: the group is its pid
        return code


def _python_backend_dir(site_packages: Path, workdir: Path) -> Path:
    """A backends/ folder whose python backend has the stub for the venv's Python."""
    dist = site_packages / "pytriton" / "tritonserver"
    python_version = site_packages.parent.name.removeprefix("python")  # "3.11"
    backend = workdir / "backends" / "python"
    backend.mkdir(parents=True)
    for item in (dist / "backends" / "python").iterdir():
        if item.is_file():
            (backend / item.name).symlink_to(item)
    stub = dist / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    shutil.copy2(stub, backend / stub.name)
    return backend.parent


@contextlib.contextmanager
def running_tritonserver(
    model_repository: Path, *extra_args: str, timeout: float = 120.0, ready: bool = True
) -> Iterator[TritonServer]:
    """Run tritonserver on `model_repository` (CPU only) for a `with` block; always stop it.
    `extra_args` are more tritonserver flags (e.g. the same restriction or TLS flags a ferry
    under comparison gets, or `--exit-on-error=false` to keep serving beside a model that fails
    to load); `ready=False` waits for live only. The wheel's `local` response cache is found
    (`--cache-config local,size=N` enables it)."""
    binary, site_packages = tritonserver_binary(), _site_packages()
    if binary is None or site_packages is None:
        raise RuntimeError(missing_reason())
    workdir = Path(tempfile.mkdtemp(prefix="ferry-tritonserver-"))
    log_path = workdir / "tritonserver.log"
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    command = [
        str(binary),
        "--model-repository",
        str(model_repository),
        "--backend-directory",
        str(_python_backend_dir(site_packages, workdir)),
        "--cache-directory",
        str(site_packages / "pytriton" / "tritonserver" / "caches"),
        "--http-address",
        "127.0.0.1",
        "--http-port",
        str(http_port),
        "--grpc-address",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--metrics-address",
        "127.0.0.1",
        "--metrics-port",
        str(metrics_port),
        "--allow-gpu-metrics",
        "false",
        "--strict-readiness",
        "true",
        "--exit-timeout-secs",
        "10",
        # pytriton's shared-memory settings; a unique prefix so parallel servers never collide
        "--backend-config",
        f"python,shm-region-prefix-name=ferry{uuid.uuid4().hex[:12]}",
        "--backend-config",
        "python,shm-default-byte-size=4194304",
        "--backend-config",
        "python,shm-growth-byte-size=1048576",
        *extra_args,
    ]
    env = dict(os.environ)
    env["PATH"] = f"{TRITON_VENV / 'bin'}:{env.get('PATH', '')}"
    libs = site_packages / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = (
        f"{libs}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else str(libs)
    )
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = TritonServer(process, http_port, grpc_port, metrics_port, log_path)
    try:
        wait_until_live(server, timeout, ready=ready, label="tritonserver")
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- python-backend models the tests serve upstream -------------------------------------------

LINEAR_MODEL_PY = '''\
"""y = x @ W + b, with W and b from linear.npz beside this file; NaN in x is INVALID_ARG."""
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = np.load(Path(__file__).with_name("linear.npz"))
        self.weights, self.bias = params["weights"], params["bias"]

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            if np.isnan(x).any():
                error = pb_utils.TritonError("x must not contain NaN",
                                             pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            y = (x @ self.weights + self.bias).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]))
        return responses
'''

UPPER_MODEL_PY = '''\
"""BYTES in, BYTES (upper-cased) and INT32 (length) out."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()
            upper = np.array([[item.upper() for item in row] for row in text], dtype=np.object_)
            length = np.array([[len(item) for item in row] for row in text], dtype=np.int32)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("upper", upper), pb_utils.Tensor("length", length)]))
        return responses
'''


def linear_parameters(
    in_features: int = 4, out_features: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The W and b that `write_linear_model` serves (the test's numpy reference uses them)."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((in_features, out_features)).astype(np.float32)
    bias = rng.standard_normal(out_features).astype(np.float32)
    return weights, bias


def write_linear_model(
    repository: Path, name: str = "linear", max_batch_size: int = 16, seed: int = 0
) -> Path:
    """A python-backend model y = x @ W + b (FP32 x[4] -> y[3]) without dynamic batching."""
    weights, bias = linear_parameters(seed=seed)
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text(LINEAR_MODEL_PY)
    np.savez(model_dir / "1" / "linear.npz", weights=weights, bias=bias)
    (model_dir / "config.pbtxt").write_text(f"""
backend: "python"
max_batch_size: {max_batch_size}
input [{{ name: "x" data_type: TYPE_FP32 dims: [{weights.shape[0]}] }}]
output [{{ name: "y" data_type: TYPE_FP32 dims: [{weights.shape[1]}] }}]
instance_group [{{ kind: KIND_CPU count: 1 }}]
""")
    return model_dir


def write_upper_model(repository: Path, name: str = "upper", max_batch_size: int = 8) -> Path:
    """A python-backend BYTES model: text[1] -> upper[1] (BYTES), length[1] (INT32)."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.py").write_text(UPPER_MODEL_PY)
    (model_dir / "config.pbtxt").write_text(f"""
backend: "python"
max_batch_size: {max_batch_size}
input [{{ name: "text" data_type: TYPE_STRING dims: [1] }}]
output [{{ name: "upper" data_type: TYPE_STRING dims: [1] }},
        {{ name: "length" data_type: TYPE_INT32 dims: [1] }}]
instance_group [{{ kind: KIND_CPU count: 1 }}]
""")
    return model_dir


def write_gateway_model(
    repository: Path, name: str, triton_url: str, extra: str = "", **parameters: str
) -> Path:
    """A ferry gateway model folder: config.pbtxt (backend + triton_url + extra) and empty 1/."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    lines = ['backend: "triton_gateway"']
    for key, value in {"triton_url": triton_url, **parameters}.items():
        if value:
            lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    (model_dir / "config.pbtxt").write_text("\n".join(lines) + "\n" + extra)
    return model_dir
