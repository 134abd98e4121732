"""The two benchmark models, built by the real `ferry export` pipeline (torch only here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from torch import nn

MLP_FEATURES = 64


class BenchMLP(nn.Module):
    """A small MLP: serving overhead dominates its cost."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(MLP_FEATURES, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.layers(x)


def encoder() -> nn.Module:
    """The `encoder` example's architecture (4 layers, d_model 256, seq 64)."""
    from examples.encoder import EncoderClassifier

    return EncoderClassifier().eval()


# Serving configs, tuned with the bench itself on 2 cores. The MLP is bound by the event loop:
# no queue delay (a lone request runs at once) and batches of up to 32 rows, which is what 64
# clients fill; a 20 ms delay with max_batch_size 64 forms full 64-row batches at similar
# throughput but makes a lone request wait 20 ms. The encoder is compute-bound: two
# single-threaded instances keep both cores busy without ONNX Runtime's thread-pool barriers, and
# batches of 8 rows are where two parallel sessions peak here (bigger batches run slower per row).
SERVING_CONFIG = {
    "mlp": """
max_batch_size: 32
dynamic_batching { }
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
""",
    "encoder": """
dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 2000 }
instance_group [{ kind: KIND_CPU count: 2 }]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
""",
}


def build_repository(repo: Path) -> None:
    """Export both models with `ferry export` (once) and set their batching config."""
    exports = {
        "mlp": ["bench.models:BenchMLP", "--input", f"x:FP32:{MLP_FEATURES}"],
        "encoder": ["bench.models:encoder", "--input", "tokens:INT64:64"],
    }
    for name, args in exports.items():
        if not (repo / name / "1" / "model.onnx").exists():
            subprocess.run([sys.executable, "-m", "ferry", "export", args[0], "--name", name,
                            "--model-repository", str(repo), *args[1:],
                            "--max-batch-size", "64"], check=True)
        config = (repo / name / "config.pbtxt").read_text()
        base = config.split("dynamic_batching")[0].rstrip() + "\n"
        if "max_batch_size" in SERVING_CONFIG[name]:
            base = "\n".join(line for line in base.splitlines()
                              if not line.startswith("max_batch_size")) + "\n"
        (repo / name / "config.pbtxt").write_text(base + SERVING_CONFIG[name])
