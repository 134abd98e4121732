"""The server GC policy keeps collecting: garbage made of reference cycles stays bounded.

Each case runs in a fresh interpreter, because the policy freezes and re-tunes the collector of
the whole process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from server.gc_policy import SERVER_THRESHOLDS

# Request-shaped cycles: a request dict that points at its response, which points back, each
# holding numpy buffers (what reference counting alone can never free), made at a request rate.
SCRIPT = textwrap.dedent(
    """
    import gc, json, sys, weakref
    import numpy as np
    from server.gc_policy import GcPolicy, apply_after_startup

    def rss_bytes():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024

    if sys.argv[1] == "disabled":  # the control: what no collection at all would do
        gc.disable()
    else:
        apply_after_startup(GcPolicy(sys.argv[1]))
    freed = [0]
    def on_free():
        freed[0] += 1

    class Request:
        pass

    requests = int(sys.argv[2])
    rss, counts = [], []
    for index in range(requests):
        request = Request()
        request.inputs = {"x": np.ones((4, 256), np.float32)}
        request.response = {"request": request, "y": np.ones((4, 256), np.float32)}
        weakref.finalize(request, on_free)
        del request
        if index % 1000 == 0:
            rss.append(rss_bytes())
            counts.append(gc.get_count()[0])
    print(json.dumps({"rss": rss, "counts": counts, "freed": freed[0],
                      "thresholds": gc.get_threshold()}))
    """
)


def run_policy(policy: str, requests: int) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, policy, str(requests)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(result.stdout))


def grows(rss: list[int]) -> bool:
    """Memory grows with the number of requests: the run's second half peaks clearly above its
    first half (a collector that runs frees the cycles, and the freed memory is reused)."""
    half = len(rss) // 2
    return max(rss[half:]) > max(rss[:half]) + 16 * 1024 * 1024


@pytest.mark.parametrize("policy", ["server", "python"])
def test_cyclic_garbage_stays_bounded_under_load(policy: str) -> None:
    requests = 60_000
    result = run_policy(policy, requests)
    rss, counts, freed = result["rss"], result["counts"], result["freed"]
    assert isinstance(rss, list) and isinstance(counts, list) and isinstance(freed, int)
    threshold = SERVER_THRESHOLDS[0] if policy == "server" else 700
    # the collector still runs: the young generation never grows past its threshold...
    assert max(counts) <= threshold
    # ...so the cycles are freed, all but those made since the last collection
    assert requests - freed <= threshold
    assert not grows(rss), rss


def test_the_bound_detects_a_collector_that_never_runs() -> None:
    result = run_policy("disabled", 60_000)
    assert result["freed"] == 0
    assert grows(result["rss"])  # type: ignore[arg-type]


def test_server_policy_sets_its_thresholds() -> None:
    result = run_policy("server", 10)
    assert tuple(result["thresholds"]) == SERVER_THRESHOLDS  # type: ignore[arg-type]
    assert tuple(run_policy("python", 10)["thresholds"]) == (700, 10, 10)  # type: ignore[arg-type]
