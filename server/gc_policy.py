"""Python's cyclic garbage collector, set up for a server's request loop.

Measured (bench/gc_cycles.py, `gc.DEBUG_SAVEALL`): ferry's request path leaves no reference
cycles (0.00-0.02 objects in cycles per request, HTTP JSON/binary and gRPC, success and error
paths); every request's objects are freed by reference counting when it completes. So the
collector finds nothing to free under load, yet with CPython's defaults it still runs: a young
collection every 700 net container allocations (a few hundred requests' worth), and every tenth of
those escalates, until a full collection walks every object the process holds, several hundred
thousand after the imports (FastAPI, protobuf, numpy, onnx, scipy), pausing the event loop and
every request in flight for tens of milliseconds. That pause was the p99 at load (issue 17).

The server policy:
- `gc.freeze()` once the models are loaded: the start-up objects move to the permanent generation
  that collections never walk (they are still freed by reference counting).
- A young-generation threshold suited to a request loop (`SERVER_THRESHOLDS`): a collection every
  tens of thousands of net allocations instead of 700, and full collections only when the
  objects that survived since the freeze have grown by half. The collector keeps running, so
  cycles made after start-up (a reloaded model, a rare error path) are still freed: memory stays
  bounded (tests/unit/server/test_gc_policy.py allocates request-shaped cycles and checks it).

`ferry serve --gc-policy python` keeps CPython's defaults.
"""

from __future__ import annotations

import enum
import gc

# (generation 0 threshold, generation 1 threshold, generation 2 threshold); see the module doc.
SERVER_THRESHOLDS = (50_000, 20, 100)


class GcPolicy(enum.StrEnum):
    """How `ferry serve` sets up the garbage collector."""

    SERVER = "server"
    PYTHON = "python"


def apply_after_startup(policy: GcPolicy) -> None:
    """Freeze what start-up allocated and raise the thresholds (no-op for `python`)."""
    if policy != GcPolicy.SERVER:
        return
    gc.collect()  # start-up garbage goes now, not into the permanent generation
    gc.freeze()
    gc.set_threshold(*SERVER_THRESHOLDS)
