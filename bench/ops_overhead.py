"""What request logs and traces cost the hot path: MLP inference throughput
over HTTP (binary, wrk) and gRPC (h2load), and the server's CPU time per request, measured in
one run for several `ferry serve` set-ups, in alternating rounds, as ratios to the first set-up;
then the in-process cost of the checks the data plane makes when they are off.

    PYTHONPATH=. .venv/bin/python -m bench.ops_overhead --baseline DIR [--rounds 5]
        [--variant NAME=DIR ...]

Set-ups: `before` (the source tree in DIR, e.g. `git archive main | tar -x -C /tmp/main`,
served with this venv), `after, all off` (this tree, default flags: the claim is that it matches
`before`), then for information: `--log-requests` at rate 0.01 (one line per 100 requests) and
tracing every 1000th request to a Triton trace file. `--variant NAME=DIR` adds another source
tree served with default flags (e.g. an experimental copy of this tree), measured in the same
rounds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.serving import grpc_load, model_stats, prepare_artifacts, write_payloads, wrk
from bench.setups import alternate_rounds, cpu_seconds, print_medians

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
    pid: int,
    payloads: dict[str, Path],
    header_length: str,
    concurrency: int,
    seconds: float,
) -> dict[str, float]:
    """Throughput, and the server's CPU time per request (steadier than throughput on a busy
    machine: other processes take turns on the cores, they do not add to our CPU time)."""
    figures: dict[str, float] = {}
    for protocol in ("http", "grpc"):
        rows, cpu = model_stats(http_url, "mlp")[0], cpu_seconds(pid)
        if protocol == "http":
            result = wrk(
                f"http://{http_url}/v2/models/mlp/infer",
                payloads["http-binary"],
                concurrency,
                seconds,
                {"Inference-Header-Content-Length": header_length},
            )
        else:
            result = grpc_load(grpc_url, payloads["grpc"], concurrency, seconds)
        served = model_stats(http_url, "mlp")[0] - rows
        figures[protocol] = result["req_per_s"]
        figures[f"{protocol} us"] = (cpu_seconds(pid) - cpu) / max(served, 1) * 1e6
        figures[f"{protocol}_errors"] = result["errors"]
    return figures


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
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another source tree to serve with default flags (repeatable)",
    )
    args = parser.parse_args()
    repo, payload_dir = prepare_artifacts()
    payloads = write_payloads("mlp", payload_dir)
    header_length = (payload_dir / "mlp.bin.len").read_text()
    here = Path(__file__).resolve().parents[1]
    chosen = {"after, all off": []} if args.only_off else SETUPS
    setups = {name: (here, extra) for name, extra in chosen.items()}
    if args.baseline is not None:
        setups = {"before": (args.baseline.resolve(), []), **setups}
    for variant in args.variant:
        name, _, source = variant.partition("=")
        if not name or not source:
            parser.error(f"--variant {variant!r}: expected NAME=DIR")
        setups[name] = (Path(source).resolve(), [])
    results = alternate_rounds(
        repo,
        setups,
        lambda name, http_url, grpc_url, pid: measure(
            http_url, grpc_url, pid, payloads, header_length, args.concurrency, args.seconds
        ),
        args.rounds,
    )
    print_medians(results, args.concurrency, ("http", "grpc"))
    print_medians(results, args.concurrency, ("http us", "grpc us"), "server CPU us/request")
    print("\nwhat is tested per request when everything is off, in process (ns):")
    for name, ns in off_cost_ns().items():
        print(f"  {name:40s} {ns:6.0f}")


if __name__ == "__main__":
    main()
