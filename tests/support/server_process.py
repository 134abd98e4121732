"""Start a real `ferry serve` process on free loopback ports, and always stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from measure.sweep import serve_command

WORKERS_ENV = "FERRY_TEST_WORKERS"


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago, and that this process has not
    handed out before: the kernel may give a port it just gave back again, and a server whose
    HTTP and metrics ports were the same port could not start."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class ServerProcess:
    """A running `ferry serve`: its ports, its process and its log file."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` and wait for the exit code (kills after `timeout`)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def wait_until_live(
    server: ServerProcess, timeout: float = 90.0, ready: bool = False, label: str = "ferry serve"
) -> None:
    """Poll the health endpoint until it answers 200 (or the process dies)."""
    path = "ready" if ready else "live"
    deadline = time.monotonic() + timeout
    url = f"http://{server.http_url}/v2/health/{path}"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{label} exited with {server.process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{label} did not become {path} in {timeout}s:\n{server.log()}")


@contextlib.contextmanager
def running_server(
    repository: Path,
    *extra_args: str,
    ready: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 90.0,
    cwd: Path | None = None,
) -> Iterator[ServerProcess]:
    """Run `ferry serve --model-repository REPO ...` on free loopback ports for a `with` block.

    `cwd`: where `python -m ferry` starts (its packages come first on sys.path: a benchmark runs
    another checkout of ferry this way). Servers run `--workers 1` (one process) unless the test
    names --workers itself; FERRY_TEST_WORKERS=N runs them with `--workers N` instead, and flags
    after N go with it (FERRY_TEST_WORKERS="2 --no-shared-batching": each worker runs its own
    copy of every model)."""
    # the tests were written against one process: it serves them unless they or
    # FERRY_TEST_WORKERS name --workers (ferry serve's own default is one worker per CPU)
    workers = os.environ.get(WORKERS_ENV, "") or "1"
    if "--workers" not in extra_args:
        extra_args = (*extra_args, "--workers", *workers.split())
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - outlives this frame, closed below
        prefix="ferry-serve-", suffix=".log", delete=False
    )
    command = serve_command(repository, http_port, grpc_port, metrics_port, *extra_args)
    process_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, env=process_env, cwd=cwd
    )
    server = ServerProcess(process, http_port, grpc_port, metrics_port, Path(log_file.name))
    try:
        wait_until_live(server, timeout=timeout, ready=ready)
        yield server
    finally:
        server.stop(signal.SIGTERM, timeout=30)
        if process.poll() is None:
            process.kill()
        log_file.close()
