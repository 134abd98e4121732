"""Cost of failure isolation (server/fault_isolation.py): ferry before and after, in one run.

`before` is ferry at a git ref (default `main`: this branch's base), extracted with `git archive`
and served from there; `after` is this working tree. Both serve one embedding model (INT64 tokens
[-1] -> mean embedding, max_batch_size 32, dynamic batching, one 1-thread instance), and the
rounds alternate (before, after, before, after, ...) so a drifting machine hits both alike.

- clean: every request good; wrk at c=64 over HTTP binary. The after/before ratio of requests/s
  is the cost of isolation when no batch fails.
- 5 % bad: token ids beyond the vocabulary mixed in; 64 closed-loop clients that know which
  request got which answer: good answers per second and good requests that failed (before: the
  batch-mates of a bad request; after: none). The same clients with no bad request give the
  baseline of that load generator: after's 5 % / 0 % ratio is what the searches cost.

Run: `.venv/bin/python -m bench.fault_isolation [--baseline main] [--seconds 5] [--rounds 2]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from bench.loadgen import Body, binary_request, closed_loop, wrk_mixed
from tests.support.onnx_models import embedding_model, write_model
from tests.support.server_process import running_server

ROOT = Path(__file__).resolve().parents[1]
VOCAB, SEQ_LEN = 1000, 16
CONFIG = """
max_batch_size: 32
input [{ name: "tokens" data_type: TYPE_INT64 dims: [-1] }]
output [{ name: "pooled" data_type: TYPE_FP32 dims: [64] }]
dynamic_batching { }
instance_group [{ kind: KIND_CPU count: 1 }]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""


def checkout(ref: str, folder: Path) -> Path:
    """The tree of `ref` extracted into `folder` (no .git: only what `python -m ferry` needs)."""
    archive = folder / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "tree", filter="data")
    return folder / "tree"


def bodies(bad_share: float, count: int = 200) -> list[Body]:
    rng = np.random.default_rng(3)
    made = []
    for index in range(count):
        tokens = rng.integers(0, VOCAB, (1, SEQ_LEN)).astype(np.int64)
        bad = index < round(bad_share * count)
        if bad:
            tokens[0, rng.integers(SEQ_LEN)] = VOCAB + 17
        made.append(binary_request({"tokens": tokens}, "bad" if bad else "good"))
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="main", help="git ref of the `before` server")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ferry-isolation-bench-"))
    trees = {"before": checkout(args.baseline, work), "after": ROOT}
    repo = work / "repo"
    write_model(repo, "embeddings", embedding_model(VOCAB, width=64), CONFIG)
    clean, mixed = bodies(0.0), bodies(0.05)
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for round_index in range(args.rounds):
        for name, tree in trees.items():
            with running_server(repo, "--no-drift", cwd=tree) as server:
                url = f"http://{server.http_url}/v2/models/embeddings/infer"
                rate = wrk_mixed(url, clean, args.concurrency, args.seconds)
                clean_counts, clean_elapsed = closed_loop(
                    url, clean, args.concurrency, args.seconds
                )
                counts, elapsed = closed_loop(url, mixed, args.concurrency, args.seconds)
            good_ok = counts[("good", 200)]
            good_failed = (
                sum(n for (label, status), n in counts.items() if label == "good") - good_ok
            )
            bad_failed = sum(
                n for (label, status), n in counts.items() if label == "bad" and status != 200
            )
            row = results[name]
            row.setdefault("clean req/s", []).append(rate["req_per_s"])
            row.setdefault("clean p99 ms", []).append(rate["p99_ms"])
            row.setdefault("0% bad: answers/s", []).append(
                clean_counts[("good", 200)] / clean_elapsed
            )
            row.setdefault("5% bad: good answers/s", []).append(good_ok / elapsed)
            row.setdefault("5% bad: good failed", []).append(good_failed)
            row.setdefault("5% bad: bad failed", []).append(bad_failed)
            print(
                f"round {round_index + 1} {name:6}: clean {rate['req_per_s']:8.0f} req/s "
                f"(p99 {rate['p99_ms']:.1f} ms, non-2xx {rate['non_2xx']:.0f}); closed loop: "
                f"0% bad {clean_counts[('good', 200)] / clean_elapsed:7.0f} answers/s, 5% bad: "
                f"{good_ok / elapsed:7.0f} good answers/s, {good_failed} good failed, "
                f"{bad_failed} bad failed",
                flush=True,
            )
    print(f"\nmedians over {args.rounds} rounds (before = {args.baseline}, after = this tree):")
    for metric in results["after"]:
        before = statistics.median(results["before"][metric])
        after = statistics.median(results["after"][metric])
        ratio = f"{after / before:.3f}" if before else "-"
        print(f"  {metric:24} before {before:10.1f}  after {after:10.1f}  after/before {ratio}")


if __name__ == "__main__":
    main()
