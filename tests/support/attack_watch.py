"""Watch a `ferry serve` while it is attacked: its RSS (peak included), health checks over HTTP and
gRPC every 0.1 s with their latency, and good tritonclient requests checked against ONNX Runtime.

The probes run in a child process (`python -m tests.support.attack_watch`), so an attacker busy in
the test's own process cannot delay them and be mistaken for a slow server.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
import tritonclient.grpc as grpcclient

from tests.support.onnx_models import run_reference
from tests.support.server_process import ServerProcess

PROBE_INTERVAL_S = 0.1


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int:
    """A process's resident set (VmRSS) or its peak since the last reset (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field_name)


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


@dataclass
class WatchReport:
    """What the server did while it was attacked."""

    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    health_latencies_ms: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)
    good_ok: int = 0
    good_failures: list[str] = field(default_factory=list)

    @property
    def health_max_ms(self) -> float:
        return max(self.health_latencies_ms, default=float("nan"))

    @property
    def health_p50_ms(self) -> float:
        return statistics.median(self.health_latencies_ms) if self.health_latencies_ms else 0.0

    def line(self) -> str:
        return (
            f"RSS {self.rss_before_mb:.0f} -> peak {self.rss_peak_mb:.0f} MB; health "
            f"{len(self.health_latencies_ms)} ok / {len(self.health_failures)} failed, "
            f"p50 {self.health_p50_ms:.1f} ms, max {self.health_max_ms:.1f} ms; good requests "
            f"{self.good_ok} ok / {len(self.good_failures)} failed"
        )


class ServerWatch:
    """`with ServerWatch(server, model_path): attack()`; the report is `watch.report`."""

    def __init__(self, server: ServerProcess, model_path: Path, good_requests: bool = True) -> None:
        self.server = server
        self.pid = server.process.pid
        self.report = WatchReport()
        command = [
            sys.executable,
            "-m",
            "tests.support.attack_watch",
            "--http",
            server.http_url,
            "--grpc",
            server.grpc_url,
            "--model",
            str(model_path),
        ]
        self._command = command + ([] if good_requests else ["--no-good-requests"])
        self._child: subprocess.Popen[str] | None = None

    def __enter__(self) -> ServerWatch:
        self._child = subprocess.Popen(
            self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._child.stdout is not None
        assert self._child.stdout.readline().strip() == "probing", "the watcher did not start"
        self.report.rss_before_mb = rss_bytes(self.pid) / 2**20
        reset_peak_rss(self.pid)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.server.process.poll() is None:
            self.report.rss_peak_mb = rss_bytes(self.pid, "VmHWM") / 2**20
        assert self._child is not None
        out, _ = self._child.communicate("", timeout=120)  # stdin closes: the probes stop
        probes = json.loads(out.strip().splitlines()[-1])
        for key in ("health_latencies_ms", "health_failures", "good_ok", "good_failures"):
            setattr(self.report, key, probes[key])


class Probes:
    """The watcher's side: health and good requests until told to stop."""

    def __init__(self, http_url: str, grpc_url: str, model_path: Path, good: bool) -> None:
        self.http_url, self.good = http_url, good
        self.report = WatchReport()
        self.stop = threading.Event()
        rng = np.random.default_rng(7)
        self._input = rng.standard_normal((1, 16)).astype(np.float32)
        self._expected = run_reference(model_path, {"input": self._input})["output"]
        self._grpc = grpcclient.InferenceServerClient(grpc_url)
        self._grpc_health = grpcclient.InferenceServerClient(grpc_url)
        self._grpc_health.is_server_live()  # connected before the attack begins

    def run_until_stdin_closes(self) -> None:
        threads = [threading.Thread(target=self._probe_health, daemon=True)]
        if self.good:
            threads.append(threading.Thread(target=self._infer, daemon=True))
        for thread in threads:
            thread.start()
        print("probing", flush=True)
        sys.stdin.read()
        self.stop.set()
        for thread in threads:
            thread.join(60)
        print(json.dumps(dataclasses.asdict(self.report)), flush=True)

    def _probe_health(self) -> None:
        url = f"http://{self.http_url}/v2/health/ready"
        while not self.stop.is_set():
            for name, probe in (("http", lambda: self._http_ready(url)), ("grpc", self._live)):
                started = time.perf_counter()
                try:
                    probe()
                    self.report.health_latencies_ms.append((time.perf_counter() - started) * 1e3)
                except Exception as exc:
                    self.report.health_failures.append(f"{name}: {type(exc).__name__}: {exc}")
            self.stop.wait(PROBE_INTERVAL_S)

    @staticmethod
    def _http_ready(url: str) -> None:
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200

    def _live(self) -> None:
        assert self._grpc_health.is_server_live(client_timeout=30)

    def _infer(self) -> None:
        tensor = grpcclient.InferInput("input", [1, 16], "FP32")
        tensor.set_data_from_numpy(self._input)
        while not self.stop.is_set():
            try:
                result = self._grpc.infer("mlp", [tensor], client_timeout=30)
                output = result.as_numpy("output")
                assert output is not None
                np.testing.assert_allclose(output, self._expected, rtol=1e-5, atol=1e-6)
                self.report.good_ok += 1
            except Exception as exc:
                self.report.good_failures.append(f"{type(exc).__name__}: {exc}")
            self.stop.wait(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http", required=True)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--no-good-requests", action="store_true")
    args = parser.parse_args()
    Probes(args.http, args.grpc, args.model, not args.no_good_requests).run_until_stdin_closes()


if __name__ == "__main__":
    main()
