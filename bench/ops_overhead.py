"""What request logs and traces cost the hot path: MLP inference throughput
over HTTP (binary, wrk) and gRPC (h2load), measured in one run for several `ferry serve`
set-ups, in alternating rounds, as ratios to the first set-up; then the in-process cost of the
checks the data plane makes when they are off.

    PYTHONPATH=. .venv/bin/python -m bench.ops_overhead --baseline DIR [--rounds 5]

Set-ups: `before` (the source tree in DIR, e.g. `git archive main | tar -x -C /tmp/main`,
served with this venv), `after, all off` (this tree, default flags: the claim is that it matches
`before`), then for information: `--log-requests` at rate 0.01 (one line per 100 requests) and
tracing every 1000th request to a Triton trace file.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.serving import grpc_load, prepare_artifacts, write_payloads, wrk
from bench.setups import alternate_rounds, print_medians

TRACE_FILE = Path(tempfile.gettempdir()) / "ferry-ops-overhead-trace.json"
SETUPS: dict[str, list[str]] = {
    "after, all off": [],
    "log requests 1/100": ["--log-requests", "--log-requests-rate", "0.01"],
    "trace 1/1000 (file)": [
        "--trace-config",
        "rate=1000,level=TIMESTAMPS",
        "--trace-config",
        f"triton,file={TRACE_FILE}",
    ],
}


def measure(
    http_url: str,
    grpc_url: str,
    payloads: dict[str, Path],
    header_length: str,
    concurrency: int,
    seconds: float,
) -> dict[str, float]:
    http = wrk(
        f"http://{http_url}/v2/models/mlp/infer",
        payloads["http-binary"],
        concurrency,
        seconds,
        {"Inference-Header-Content-Length": header_length},
    )
    grpc = grpc_load(grpc_url, payloads["grpc"], concurrency, seconds)
    return {
        "http": http["req_per_s"],
        "grpc": grpc["req_per_s"],
        "http_errors": http["errors"],
        "grpc_errors": grpc["errors"],
    }


def off_cost_ns(repeats: int = 200_000) -> dict[str, float]:
    """In process: what the data plane and the transports test per request when all is off."""
    import timeit

    from server.operations import Operations

    ops = Operations()
    cases = {
        "tracer.active (data plane)": lambda: ops.tracer.active,
        "request_log.enabled (data plane)": lambda: ops.request_log.enabled,
        "response_cache is None (data plane)": lambda: ops.response_cache is None,
        "request_context (each transport)": lambda: ops.request_context,
    }
    return {
        name: min(timeit.repeat(case, number=repeats, repeat=5)) / repeats * 1e9
        for name, case in cases.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="source tree before the change (main)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--only-off", action="store_true", help="only before / after, all off")
    args = parser.parse_args()
    repo, payload_dir = prepare_artifacts()
    payloads = write_payloads("mlp", payload_dir)
    header_length = (payload_dir / "mlp.bin.len").read_text()
    here = Path(__file__).resolve().parents[1]
    chosen = {"after, all off": []} if args.only_off else SETUPS
    setups = {name: (here, extra) for name, extra in chosen.items()}
    if args.baseline is not None:
        setups = {"before": (args.baseline.resolve(), []), **setups}
    results = alternate_rounds(
        repo,
        setups,
        lambda name, http_url, grpc_url: measure(
            http_url, grpc_url, payloads, header_length, args.concurrency, args.seconds
        ),
        args.rounds,
    )
    print_medians(results, args.concurrency, ("http", "grpc"))
    print("\nwhat is tested per request when everything is off, in process (ns):")
    for name, ns in off_cost_ns().items():
        print(f"  {name:40s} {ns:6.0f}")


if __name__ == "__main__":
    main()
