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


DYNAMIC_BATCHING = """
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}
"""


def build_repository(repo: Path, threads: int = 2) -> None:
    """Export both models with `ferry export` (once) and set their batching config."""
    exports = {
        "mlp": ["bench.models:BenchMLP", "--input", f"x:FP32:{MLP_FEATURES}"],
        "encoder": ["bench.models:encoder", "--input", "tokens:INT64:64"],
    }
    delays = {"mlp": 500, "encoder": 2000}
    for name, args in exports.items():
        if not (repo / name / "1" / "model.onnx").exists():
            subprocess.run([sys.executable, "-m", "ferry", "export", args[0], "--name", name,
                            "--model-repository", str(repo), *args[1:],
                            "--max-batch-size", "64"], check=True)
        config = (repo / name / "config.pbtxt").read_text()
        if "dynamic_batching {\n" in config or "dynamic_batching {}" in config:
            config = config.replace("dynamic_batching {\n}", "").replace("dynamic_batching {}",
                                                                         "")
        if "max_queue_delay_microseconds" not in config:
            config += DYNAMIC_BATCHING.format(delay_us=delays[name], threads=threads)
            (repo / name / "config.pbtxt").write_text(config)
