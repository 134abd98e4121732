"""`timeseries`: an LSTM that predicts the next reading of a generated sensor signal, served as a
stateful model: each request carries one reading of one stream (a sequence), the server keeps
the stream's LSTM state between requests (`ferry export --stateful`, Triton's sequence batcher).

The signal: sums of two sines with random periods, phases and amplitudes plus noise (generated,
seeded: nothing to download). Trains in a few seconds on one thread.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from examples.common import ARTIFACTS_DIR, METRICS_FILE, WEIGHTS_FILE, fit

INPUT = "reading"  # FP32 (1, 1): one reading (one time step) of one stream
OUTPUT = "next_reading"  # FP32 (1, 1): the predicted next reading
HIDDEN = 32
# `ferry export --stateful` flags of this model (make serve / scripts/build_example_repository.py)
EXPORT_INPUTS = (f"{INPUT}:FP32:1,1",)
EXPORT_STATES = (f"h:FP32:1,{HIDDEN}", f"c:FP32:1,{HIDDEN}")
TRAIN_STREAMS, STREAM_LENGTH = 512, 64


class SignalLSTM(nn.Module):
    """forward(reading [B, T, 1], h [B, 1, H], c [B, 1, H]) -> (next [B, T, 1], h, c).

    The state is batch-first (the server keeps it per stream); nn.LSTM's own layout is
    [layers, batch, hidden], hence the transposes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(
        self, reading: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, (h_next, c_next) = self.lstm(
            reading, (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous())
        )
        return self.head(out), h_next.transpose(0, 1), c_next.transpose(0, 1)


class _FromZeroState(nn.Module):
    """Training view: whole streams from a zero state, predictions only."""

    def __init__(self, model: SignalLSTM) -> None:
        super().__init__()
        self.model = model

    def forward(self, readings: torch.Tensor) -> torch.Tensor:
        zeros = readings.new_zeros(readings.shape[0], 1, HIDDEN)
        return self.model(readings, zeros, zeros)[0]


def generate_streams(count: int, length: int, seed: int = 0) -> np.ndarray:
    """`count` streams of `length + 1` readings, [count, length + 1], FP32."""
    rng = np.random.default_rng(seed)
    t = np.arange(length + 1, dtype=np.float64)[np.newaxis]
    periods = rng.uniform(8, 32, (count, 2, 1))
    phases = rng.uniform(0, 2 * np.pi, (count, 2, 1))
    amplitudes = rng.uniform(0.3, 1.0, (count, 2, 1))
    waves = (amplitudes * np.sin(2 * np.pi * t[:, np.newaxis] / periods + phases)).sum(axis=1)
    noise = rng.normal(0, 0.03, waves.shape)
    return (waves + noise).astype(np.float32)


def train(out_dir: Path = ARTIFACTS_DIR / "timeseries", seed: int = 0) -> dict[str, Any]:
    """Train next-reading prediction; compare its error with "tomorrow equals today"."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    streams = generate_streams(TRAIN_STREAMS, STREAM_LENGTH, seed)
    x = torch.from_numpy(streams[:, :-1, np.newaxis])
    y = torch.from_numpy(streams[:, 1:, np.newaxis])
    model = SignalLSTM()
    fit(_FromZeroState(model), nn.functional.mse_loss, x, y, epochs=25, batch_size=32, lr=1e-2)
    test = generate_streams(64, STREAM_LENGTH, seed + 1)
    with torch.inference_mode():
        predicted = _FromZeroState(model)(torch.from_numpy(test[:, :-1, np.newaxis])).numpy()
    rmse = float(np.sqrt(np.mean((predicted[..., 0] - test[:, 1:]) ** 2)))
    persistence = float(np.sqrt(np.mean((test[:, :-1] - test[:, 1:]) ** 2)))
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
    np.savez(out_dir / "test.npz", streams=test)
    metrics = {
        "test_rmse": rmse,
        "test_rmse_persistence": persistence,
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
