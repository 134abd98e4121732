"""A variable-length GRU text classifier at concurrency 64, with and without padding, one run.

The model (token embedding 1000x64 -> GRU 128 -> the state at step `length - 1` -> 4 classes)
is served twice by one `ferry serve`: `gru` batches only requests of equal length (Triton's rule),
`gru_padded` declares `ferry.pad_variable_dims` and pads each batch to its longest sequence (safe:
a causal GRU read at `length - 1` ignores what follows). Requests draw their length uniformly from
[--min-length, --max-length]; wrk sends them at c=64 over HTTP binary, alternating the two models
round by round. Prints requests/s, latency, the mean batch the batcher formed, and the ratio.

Run: `.venv/bin/python -m bench.variable_length [--seconds 5] [--rounds 2]`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.loadgen import binary_request, wrk_mixed
from tests.support.concurrent_clients import model_statistics
from tests.support.onnx_models import write_model
from tests.support.server_process import running_server
from tests.support.torch_export import export_onnx

VOCAB = 1000
CONFIG = """
max_batch_size: 64
input [{ name: "tokens" data_type: TYPE_INT64 dims: [-1] },
       { name: "length" data_type: TYPE_INT64 dims: [1] }]
output [{ name: "logits" data_type: TYPE_FP32 dims: [4] }]
dynamic_batching { }
instance_group [{ kind: KIND_CPU count: 1 }]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""
PADDING = 'parameters { key: "ferry.pad_variable_dims" value: { string_value: "tokens:0=0" } }\n'


class TextGRU(nn.Module):
    """tokens (INT64, L) and length (INT64, 1) -> logits (4)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 64)
        self.gru = nn.GRU(64, 128, batch_first=True)
        self.head = nn.Linear(128, 4)

    def forward(self, tokens: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(tokens))
        last = (length.reshape(-1, 1, 1) - 1).clamp(min=0).expand(-1, 1, out.shape[2])
        return self.head(out.gather(1, last).squeeze(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--min-length", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    repo = Path(tempfile.mkdtemp(prefix="ferry-variable-length-"))
    model = export_onnx(
        TextGRU(),
        {"tokens": torch.zeros(2, 7, dtype=torch.int64), "length": torch.tensor([[7], [3]])},
        ["logits"],
        {"tokens": {0: "batch", 1: "seq_len"}, "length": {0: "batch"}, "logits": {0: "batch"}},
    )
    write_model(repo, "gru", model, CONFIG)
    write_model(repo, "gru_padded", model, CONFIG + PADDING)
    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(256):
        length = int(rng.integers(args.min_length, args.max_length + 1))
        tokens = rng.integers(0, VOCAB, (1, length)).astype(np.int64)
        bodies.append(binary_request({"tokens": tokens, "length": np.array([[length]])}))
    results: dict[str, dict[str, list[float]]] = {"gru": {}, "gru_padded": {}}
    with running_server(repo, "--no-drift") as server:
        for round_index in range(args.rounds):
            for name, row in results.items():
                before = model_statistics(server, name)
                url = f"http://{server.http_url}/v2/models/{name}/infer"
                rate = wrk_mixed(url, bodies, args.concurrency, args.seconds)
                after = model_statistics(server, name)
                rows = after["inference_count"] - before["inference_count"]
                executions = after["execution_count"] - before["execution_count"]
                row.setdefault("req/s", []).append(rate["req_per_s"])
                row.setdefault("p50 ms", []).append(rate["p50_ms"])
                row.setdefault("p99 ms", []).append(rate["p99_ms"])
                row.setdefault("mean batch", []).append(rows / max(executions, 1))
                print(
                    f"round {round_index + 1} {name:10}: {rate['req_per_s']:7.0f} req/s, p50 "
                    f"{rate['p50_ms']:6.1f} ms, p99 {rate['p99_ms']:6.1f} ms, mean batch "
                    f"{rows / max(executions, 1):5.1f}, non-2xx {rate['non_2xx']:.0f}",
                    flush=True,
                )
    print(
        f"\nmedians over {args.rounds} rounds, lengths {args.min_length}-{args.max_length}, "
        f"c={args.concurrency}:"
    )
    for metric in results["gru"]:
        plain = statistics.median(results["gru"][metric])
        padded = statistics.median(results["gru_padded"][metric])
        print(
            f"  {metric:10} without padding {plain:8.1f}  with padding {padded:8.1f}  "
            f"padded/plain {padded / plain:.2f}"
        )


if __name__ == "__main__":
    main()
