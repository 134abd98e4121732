"""Shared pieces of the examples: the seeded 70/15/15 split, a training loop, and artifact files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
SEED = 0
REFERENCE_ROWS = 512
WEIGHTS_FILE = "weights.pt"
METRICS_FILE = "metrics.json"


def split_indices(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded 70/15/15 train/val/test split of n rows."""
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = round(n * 0.70), round(n * 0.15)
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def fit(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = SEED,
    parameters: list[nn.Parameter] | None = None,
) -> None:
    """Mini-batch AdamW training of `parameters` (default: all of the model's), seeded.

    Runs on one thread: these models are small, and two threads on a busy two-core machine
    spend their time waiting for each other.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit(model, loss_fn, x, y, epochs, batch_size, lr, weight_decay, seed, parameters)
    finally:
        torch.set_num_threads(threads)


def _fit(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    parameters: list[nn.Parameter] | None,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    params = parameters if parameters is not None else list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Eval-mode outputs of the model on x, as numpy."""
    model.eval()
    with torch.inference_mode():
        parts = [
            model(torch.from_numpy(x[i : i + batch_size])).numpy()
            for i in range(0, len(x), batch_size)
        ]
    return np.concatenate(parts)


def save_artifacts(
    out_dir: Path,
    model: nn.Module,
    input_name: str,
    x: np.ndarray,
    labels: np.ndarray,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """weights.pt, val.npz/test.npz (input + labels), reference.npz (input), metrics.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val, test = splits
    torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
    np.savez(out_dir / "val.npz", **{input_name: x[val], "labels": labels[val]})
    np.savez(out_dir / "test.npz", **{input_name: x[test], "labels": labels[test]})
    np.savez(out_dir / "reference.npz", **{input_name: x[train][:REFERENCE_ROWS]})
    sizes = {"train": len(train), "val": len(val), "test": len(test)}
    metrics = {**metrics, "input": input_name, "rows": sizes}
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


class Standardize(nn.Module):
    """(x - mean) / std with the statistics stored as buffers (saved in the state dict)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def fit(self, x: np.ndarray) -> None:
        """Take the statistics from training data."""
        self.mean.copy_(torch.from_numpy(x.mean(axis=0)))
        self.std.copy_(torch.from_numpy(x.std(axis=0) + 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
