"""Watch a server while a test attacks it: peak RSS and CPU from /proc, health-check latency on
fresh connections, and good requests from the real tritonclient checked against a reference.

    with ServerWatch(server, good_request) as watch:
        ...attack...
    report = watch.report()   # rss_peak_mb, health latencies, good requests served / failed
"""

from __future__ import annotations

import http.client
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from tests.support.server_process import ServerProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class WatchReport:
    """What a ServerWatch saw."""

    rss_baseline_mb: float
    rss_peak_mb: float
    cpu_seconds: float
    health_latencies_ms: list[float] = field(default_factory=list)
    health_failures: int = 0
    good_served: int = 0
    good_failures: list[str] = field(default_factory=list)

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_baseline_mb

    @property
    def health_max_ms(self) -> float:
        return max(self.health_latencies_ms, default=float("nan"))

    @property
    def health_median_ms(self) -> float:
        return statistics.median(self.health_latencies_ms) if self.health_latencies_ms else 0.0

    def summary(self) -> str:
        return (
            f"RSS {self.rss_baseline_mb:.0f} -> peak {self.rss_peak_mb:.0f} MB "
            f"(+{self.rss_growth_mb:.0f}), server CPU {self.cpu_seconds:.2f}s, health "
            f"{len(self.health_latencies_ms)} probes median {self.health_median_ms:.1f} ms "
            f"max {self.health_max_ms:.1f} ms ({self.health_failures} failed), good requests "
            f"{self.good_served} served / {len(self.good_failures)} failed"
        )

    def assert_healthy(self, rss_growth_mb: float, health_max_s: float = 5.0) -> None:
        """The server stayed healthy: RSS growth, health answered (CI-safe bound), good requests
        all served (and at least one)."""
        assert self.health_failures == 0, self.summary()
        assert self.health_latencies_ms, self.summary()
        assert self.health_max_ms < health_max_s * 1000, self.summary()
        assert self.rss_growth_mb < rss_growth_mb, self.summary()
        assert not self.good_failures, self.good_failures[:3]
        assert self.good_served > 0, self.summary()


class ServerWatch:
    """Samples the server's RSS, probes its health and sends good requests, in threads."""

    def __init__(
        self,
        server: ServerProcess,
        good_request: Callable[[], None] | None = None,
        probe_interval_s: float = 0.05,
    ) -> None:
        self.server = server
        self.pid = server.process.pid
        self.good_request = good_request
        self.probe_interval_s = probe_interval_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._report = WatchReport(rss_bytes(self.pid) / 1e6, rss_bytes(self.pid) / 1e6, 0.0)
        self._cpu_start = cpu_seconds(self.pid)

    def __enter__(self) -> ServerWatch:
        workers = [self._sample_rss, self._probe_health]
        if self.good_request is not None:
            workers.append(self._send_good)
        for worker in workers:
            thread = threading.Thread(target=worker, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._report.cpu_seconds = cpu_seconds(self.pid) - self._cpu_start

    def report(self) -> WatchReport:
        return self._report

    def _sample_rss(self) -> None:
        while not self._stop.is_set():
            try:
                rss = rss_bytes(self.pid) / 1e6
            except (OSError, RuntimeError):
                return
            self._report.rss_peak_mb = max(self._report.rss_peak_mb, rss)
            self._stop.wait(0.02)

    def _probe_health(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=30)
            try:
                connection.request("GET", "/v2/health/live")
                status = connection.getresponse().status
            except OSError:
                status = 0
            finally:
                connection.close()
            if status == 200:
                self._report.health_latencies_ms.append((time.perf_counter() - started) * 1e3)
            else:
                self._report.health_failures += 1
            self._stop.wait(self.probe_interval_s)

    def _send_good(self) -> None:
        assert self.good_request is not None
        while not self._stop.is_set():
            try:
                self.good_request()
                self._report.good_served += 1
            except Exception as exc:  # recorded, asserted by the test
                self._report.good_failures.append(repr(exc))
            self._stop.wait(0.02)
