"""What the restricted-API check costs the hot path: MLP inference throughput over HTTP (binary,
wrk) and gRPC (h2load) for several `ferry serve` set-ups, measured in one run, in alternating
rounds against servers all started up front (this shared machine's speed drifts), as ratios to
the first set-up; then the in-process cost of the check itself per request.

    PYTHONPATH=. .venv/bin/python -m bench.access_overhead [--baseline DIR] [--rounds 3]

Set-ups: `baseline` (the source tree in DIR, e.g. `git worktree add /tmp/main main`, served with
this venv), `open` (this tree, nothing restricted), `admin restricted` (model control, shared
memory, statistics and model config need a key; inference open), `inference restricted` (the
load generators send the key).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.serving import grpc_load, prepare_artifacts, write_payloads, wrk
from bench.setups import alternate_rounds, print_medians

ADMIN = "model-repository,shared-memory,statistics,model-config:admin-key=admin-secret"
INFERENCE = "inference:infer-key=infer-secret"
SETUPS: dict[str, list[str]] = {
    "open": [],
    "admin restricted": [
        f"--http-restricted-api={ADMIN}",
        f"--grpc-restricted-protocol={ADMIN}",
    ],
    "inference restricted": [
        f"--http-restricted-api={INFERENCE}",
        f"--grpc-restricted-protocol={INFERENCE}",
    ],
}


def measure(
    http_url: str,
    grpc_url: str,
    payloads: dict[str, Path],
    header_length: str,
    setup: str,
    concurrency: int,
    seconds: float,
) -> dict[str, float]:
    headers = {"Inference-Header-Content-Length": header_length}
    if setup == "inference restricted":
        headers["infer-key"] = "infer-secret"
    http = wrk(
        f"http://{http_url}/v2/models/mlp/infer",
        payloads["http-binary"],
        concurrency,
        seconds,
        headers,
    )
    if setup == "inference restricted":  # h2load sends no extra metadata: measure HTTP only
        return {"http": http["req_per_s"], "http_errors": http["errors"]}
    grpc = grpc_load(grpc_url, payloads["grpc"], concurrency, seconds)
    return {
        "http": http["req_per_s"],
        "grpc": grpc["req_per_s"],
        "http_errors": http["errors"],
        "grpc_errors": grpc["errors"],
    }


def check_cost_ns(repeats: int = 200_000) -> dict[str, float]:
    """In-process cost of the checks themselves on an infer request, in ns per request."""
    import timeit

    from server.protocol.grpc_access import _gates
    from server.protocol.http_access import HttpAccess
    from server.restrictions import GRPC_HEADER_PREFIX, parse_restricted_apis

    headers = [(b"host", b"127.0.0.1"), (b"inference-header-content-length", b"120")]
    scope = {"type": "http", "method": "POST", "path": "/v2/models/mlp/infer", "headers": headers}
    admin = HttpAccess(parse_restricted_apis([ADMIN], "http-restricted-api"))
    inference = HttpAccess(parse_restricted_apis([INFERENCE], "http-restricted-api"))
    keyed = {**scope, "headers": [*headers, (b"infer-key", b"infer-secret")]}
    infer_gate = inference.gate("inference")
    assert infer_gate is not None and admin.gate("inference") is None
    gate = _gates(parse_restricted_apis([INFERENCE], "p", GRPC_HEADER_PREFIX))[
        "/inference.GRPCInferenceService/ModelInfer"
    ]
    metadata = (("user-agent", "grpc-python"), ("triton-grpc-protocol-infer-key", "infer-secret"))
    open_gate = admin.gate("inference")  # what InferFastPath holds when inference is open
    cases = {
        "http, inference open (one `is None` test)": lambda: open_gate is None,
        "http, inference restricted, key sent": lambda: infer_gate.refusal(keyed["headers"]),
        "grpc, inference restricted, key sent": lambda: gate.admits(metadata),
    }
    return {
        name: min(timeit.repeat(case, number=repeats, repeat=5)) / repeats * 1e9
        for name, case in cases.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="source tree to compare with (e.g. main)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    repo, payload_dir = prepare_artifacts()
    payloads = write_payloads("mlp", payload_dir)
    header_length = (payload_dir / "mlp.bin.len").read_text()
    here = Path(__file__).resolve().parents[1]
    setups = {name: (here, extra) for name, extra in SETUPS.items()}
    if args.baseline is not None:
        setups = {"baseline": (args.baseline.resolve(), []), **setups}
    results = alternate_rounds(
        repo,
        setups,
        lambda name, http_url, grpc_url, _: measure(
            http_url, grpc_url, payloads, header_length, name, args.concurrency, args.seconds
        ),
        args.rounds,
    )
    print_medians(results, args.concurrency, ("http", "grpc"))
    print("\nthe check itself, in process (ns per request):")
    for name, ns in check_cost_ns().items():
        print(f"  {name:48s} {ns:7.0f}")


if __name__ == "__main__":
    main()
