"""`encoder`: a 4-layer nn.TransformerEncoder (d_model 256, seq 64) classifying synthetic sequences.

The task: each sequence of 64 tokens holds copies of four marker tokens among background tokens;
the class is the marker that occurs most often. This is the model the serving benchmark and the
INT8 work use, so its size is fixed (4 layers, d_model 256, 4 heads, feed-forward 1024, seq 64).

Training takes seconds on two CPU cores because it fits only the token embeddings, the final
LayerNorm and the head, with the encoder layers bypassed (on token frequencies, which is what
mean-pooling normalized embeddings computes without the layers). The layers keep their seeded
initial weights with the residual branches scaled down (as in GPT-2's residual scaling), so the
pre-norm encoder starts close to the identity and the fitted solution carries over to the full
model: its accuracy is measured on the full model. The layers still do all of their compute,
which is what the benchmarks and INT8 need; training them end to end took minutes here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score
from torch import nn

from examples.common import ARTIFACTS_DIR, fit, predict, save_artifacts, split_indices

INPUT = "tokens"  # INT64 (64,), token ids in [0, VOCAB)
OUTPUT = "probabilities"  # FP32 (4,)
VOCAB, SEQ_LEN, CLASSES, MARKERS = 32, 64, 4, (1, 2, 3, 4)
D_MODEL, HEADS, LAYERS, FEEDFORWARD = 256, 4, 4, 1024
ROWS = 2000
RESIDUAL_SCALE = 0.1
# The words of the `encoder_text` pipeline (token id = position): the four markers are colours,
# the class of a text is the colour it names most often; the rest are background words.
COLOURS = ("red", "green", "blue", "yellow")
BACKGROUND_WORDS = ("the", "a", "and", "of", "to", "in", "is", "it", "on", "with", "as", "at")
BACKGROUND_WORDS += ("by", "for", "from", "this", "that", "was", "are", "be", "or", "an", "we")
BACKGROUND_WORDS += ("you", "they", "sky", "sea")
VOCABULARY = ("<pad>", *COLOURS, *BACKGROUND_WORDS)
CLASS_NAMES = VOCABULARY[1 : 1 + CLASSES]
assert len(VOCABULARY) == VOCAB


class EncoderClassifier(nn.Module):
    """Token + position embeddings -> pre-norm TransformerEncoder -> mean pool -> softmax."""

    def __init__(self, layers: int = LAYERS, d_model: int = D_MODEL) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.position = nn.Parameter(torch.randn(1, SEQ_LEN, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, HEADS, FEEDFORWARD, dropout=0.1, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(d_model, CLASSES)
        with torch.no_grad():
            for block in self.encoder.layers:
                block.self_attn.out_proj.weight.mul_(RESIDUAL_SCALE)
                block.linear2.weight.mul_(RESIDUAL_SCALE)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class scores before the softmax."""
        return self.head(self.encoder(self.embed(tokens) + self.position).mean(dim=1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(tokens), dim=1)


class _Bypassed(nn.Module):
    """The classifier with its encoder layers skipped, on token frequencies.

    With the layers skipped, mean-pooling normalized token embeddings is the token frequencies
    times the normalized embedding table (the small position embeddings are left out here).
    """

    def __init__(self, model: EncoderClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, frequencies: torch.Tensor) -> torch.Tensor:
        norm = self.model.encoder.norm
        assert norm is not None
        return self.model.head(frequencies @ norm(self.model.embed.weight))


def make_dataset(rows: int = ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences and labels: the label is the most frequent marker token."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(len(MARKERS) + 1, VOCAB, size=(rows, SEQ_LEN))
    labels = rng.integers(0, CLASSES, size=rows)
    for row, label in enumerate(labels):
        winner = int(rng.integers(5, 12))
        counts = [
            winner if c == label else int(rng.integers(0, winner - 1)) for c in range(CLASSES)
        ]
        positions = rng.permutation(SEQ_LEN)[: sum(counts)]
        marks = np.repeat(np.array(MARKERS), counts)
        tokens[row, positions] = marks
    return tokens.astype(np.int64), labels.astype(np.int64)


def train(out_dir: Path = ARTIFACTS_DIR / "encoder", seed: int = 0) -> dict[str, Any]:
    """Fit (seconds), measure the full model's accuracy, write the artifacts."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    tokens, labels = make_dataset(seed=seed)
    splits = split_indices(len(tokens), seed)
    x, y = torch.from_numpy(tokens[splits[0]]), torch.from_numpy(labels[splits[0]])
    model = EncoderClassifier()
    frequencies = torch.nn.functional.one_hot(x, VOCAB).float().mean(dim=1)
    norm = model.encoder.norm
    assert norm is not None
    fitted = [*model.embed.parameters(), *norm.parameters(), *model.head.parameters()]
    fit(
        _Bypassed(model),
        nn.functional.cross_entropy,
        frequencies,
        y,
        epochs=40,
        batch_size=64,
        lr=1e-2,
        seed=seed,
        parameters=fitted,
    )
    fit_seconds = time.perf_counter() - started
    metrics = {
        "val_accuracy": float(
            accuracy_score(labels[splits[1]], predict(model, tokens[splits[1]]).argmax(1))
        ),
        "test_accuracy": float(
            accuracy_score(labels[splits[2]], predict(model, tokens[splits[2]]).argmax(1))
        ),
        "fit_seconds": round(fit_seconds, 2),
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    return save_artifacts(out_dir, model, INPUT, tokens, labels, splits, metrics)
