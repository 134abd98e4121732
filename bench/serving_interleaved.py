"""ferry against the real Triton on the bench MLP, both servers up at once and measured in
alternating turns: the per-round ratio, then its median.

`make bench` (bench/serving.py) measures every ferry row, then every Triton row. On a shared
machine whose speed changes by tens of percent within minutes, that order can put the two servers
in different phases. Here each round measures, per protocol, one server right after the other
(the order alternates between rounds), so both see the same phase, and the median of the
rounds' ratios is printed with every round's.

    python -m bench.serving_interleaved [--rounds 6] [--seconds 6] [--concurrency 64]
        [--workers N] [--serve-args="--no-shared-batching"]

ferry runs with `--workers N`: 0 (the server's default) is one worker per CPU; 1 is one process.

Needs wrk, h2load and the nvidia-pytriton tritonserver (`make triton-server`).
"""

from __future__ import annotations

import argparse
import statistics

from bench.serving import load, prepare_artifacts, serve, write_payloads
from bench.triton_reference import running_triton, unavailable_reason

PROTOCOLS = ("http-binary", "http-json", "grpc")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--workers", type=int, default=0, help="ferry serve --workers (0, its default: one per CPU)"
    )
    parser.add_argument("--serve-args", default="", help="extra `ferry serve` flags")
    args = parser.parse_args()
    missing = unavailable_reason()
    if missing:
        raise SystemExit(f"needs the real Triton: {missing}")
    repo, payload_dir = prepare_artifacts()
    payloads = write_payloads("mlp", payload_dir)
    header_length = (payload_dir / "mlp.bin.len").read_text()
    ferry, ferry_http, ferry_grpc, _ = serve(
        repo,
        ["--no-drift", "--workers", str(args.workers), *args.serve_args.split()],
        log_name="serve-interleaved.log",
    )
    try:
        with running_triton(repo, ["mlp"]) as triton:
            servers = {
                "ferry": (ferry_http, ferry_grpc),
                "triton": (f"127.0.0.1:{triton.http_port}", f"127.0.0.1:{triton.grpc_port}"),
            }
            results: dict[tuple[str, str], list[dict[str, float]]] = {}
            for round_index in range(args.rounds):
                order = ("ferry", "triton") if round_index % 2 == 0 else ("triton", "ferry")
                for protocol in PROTOCOLS:
                    for name in order:
                        result = load(
                            *servers[name],
                            "mlp",
                            protocol,
                            args.concurrency,
                            args.seconds,
                            payloads,
                            header_length,
                        )
                        results.setdefault((name, protocol), []).append(result)
                        print(
                            f"round {round_index} {name:6s} {protocol:12s} "
                            f"{result['req_per_s']:8.0f} req/s  p50 {result['p50_ms']:.2f}  "
                            f"p99 {result['p99_ms']:.2f} ms",
                            flush=True,
                        )
    finally:
        ferry.terminate()
        ferry.wait()
    print(f"\n=== ferry / Triton, c={args.concurrency}, {args.rounds} alternating rounds ===")
    for protocol in PROTOCOLS:
        ours, theirs = results[("ferry", protocol)], results[("triton", protocol)]
        ratios = [a["req_per_s"] / b["req_per_s"] for a, b in zip(ours, theirs, strict=True)]
        p99 = [a["p99_ms"] / b["p99_ms"] for a, b in zip(ours, theirs, strict=True)]
        print(
            f"  {protocol:12s} req/s {statistics.median(ratios):.2f} x Triton (median; rounds "
            f"{', '.join(f'{r:.2f}' for r in ratios)}), ferry "
            f"{statistics.median(a['req_per_s'] for a in ours):,.0f} vs "
            f"{statistics.median(b['req_per_s'] for b in theirs):,.0f} req/s; p99 "
            f"{statistics.median(p99):.2f} x Triton's"
        )


if __name__ == "__main__":
    main()
