"""A/B of two ferry source trees over HTTP: MLP throughput (c=64) and latency (c=1), binary and
JSON, the two servers run in alternation in one session so that machine drift hits both.

    git archive main | tar -x -C /tmp/ferry-main
    python -m bench.http_ab --baseline /tmp/ferry-main [--candidate .] [--rounds 3] [--seconds 5]

Prints, per protocol and concurrency, the candidate/baseline ratio of the median req/s, p50
and server CPU per request over the rounds (1.00: no change). CPU per request (from
/proc/PID/stat) moves least when the machine is shared. Both trees run with this interpreter
(this venv's packages).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.serving import prepare_artifacts, serve, write_payloads, wrk
from tests.support.attack import cpu_seconds

RUNS = [("http-binary", 1), ("http-binary", 64), ("http-json", 1), ("http-json", 64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=Path, required=True, help="source tree to compare to")
    parser.add_argument("--candidate", type=Path, default=Path.cwd(), help="source tree to test")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    repo, payload_dir = prepare_artifacts()
    payloads = write_payloads("mlp", payload_dir)
    header_length = (payload_dir / "mlp.bin.len").read_text()
    trees = {"baseline": args.baseline.resolve(), "candidate": args.candidate.resolve()}
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    for round_index in range(args.rounds):
        order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
        for side in order:
            process, http_url, *_ = serve(repo, ["--no-drift"], trees[side], f"ab-{side}.log")
            try:
                for protocol, concurrency in RUNS:
                    headers = (
                        {"Inference-Header-Content-Length": header_length}
                        if protocol == "http-binary"
                        else {}
                    )
                    cpu_before = cpu_seconds(process.pid)
                    result = wrk(
                        f"http://{http_url}/v2/models/mlp/infer",
                        payloads[protocol],
                        concurrency,
                        args.seconds,
                        headers,
                    )
                    # wrk runs a 1 s warm-up, then the measured run
                    requests = result["req_per_s"] * (max(int(args.seconds), 1) + 1)
                    result["cpu_us"] = (cpu_seconds(process.pid) - cpu_before) / requests * 1e6
                    results.setdefault((side, protocol, concurrency), []).append(result)
                    print(
                        f"round {round_index + 1} {side:9s} {protocol:11s} c={concurrency:<3d} "
                        f"{result['req_per_s']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                        f"CPU {result['cpu_us']:5.0f} us/req  errors {result['errors']:.0f}",
                        flush=True,
                    )
            finally:
                process.terminate()
                process.wait()
    print("\n=== candidate / baseline (medians over the rounds) ===")
    for protocol, concurrency in RUNS:
        ratios = []
        for key in ("req_per_s", "p50_ms", "cpu_us"):
            base, cand = (
                statistics.median(r[key] for r in results[(side, protocol, concurrency)])
                for side in trees
            )
            ratios.append(f"{key} {cand / base:4.2f} ({base:.4g} -> {cand:.4g})")
        print(f"  {protocol:11s} c={concurrency:<3d} " + "   ".join(ratios))


if __name__ == "__main__":
    main()
