"""Small torch models for export tests: every SOURCE form, several I/O, and models that fail."""

from __future__ import annotations

import torch
from torch import nn


class TinyMLP(nn.Module):
    """x (FP32, 8) -> logits (4)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoInTwoOut(nn.Module):
    """features (FP32, 6) and ids (INT64, 3) -> (scores (3), total (1))."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 3)

    def forward(self, features: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mixed = features + self.embed(ids).mean(dim=1)
        scores = self.proj(mixed)
        return scores, scores.sum(dim=1, keepdim=True)


class ConvBNDropout(nn.Module):
    """image (FP32, 3x16x16) -> probabilities (5): conv + BatchNorm + Dropout (eval mode)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.5),
        )
        self.head = nn.Linear(16, 5)
        with torch.no_grad():  # non-trivial running statistics, as after training
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.features(image)), dim=1)


class GRUClassifier(nn.Module):
    """sequence (FP32, 12x5) -> logits (3) through a 2-layer GRU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.gru = nn.GRU(5, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(sequence)
        return self.head(out[:, -1])


class GRUTextClassifier(nn.Module):
    """tokens (INT64, any length) -> logits (3): embedding, GRU, last state; sizes by argument."""

    def __init__(self, vocab_size: int = 500, hidden: int = 32) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.embed = nn.Embedding(vocab_size, 16)
        self.gru = nn.GRU(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(tokens))
        return self.head(out[:, -1])


class IndexedLookup(nn.Module):
    """codes (INT64, 4) -> table rows summed: an integer input no nn.Embedding reads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.table = nn.Parameter(torch.randn(10, 3))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.table[codes].sum(dim=1)


class KeywordModel(nn.Module):
    """forward(x, scale=None, *, offset=None, **kwargs) -> {"y": ..., "aux": None, "n": 3}."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.proj = nn.Linear(4, 2)

    def forward(
        self,
        x: torch.Tensor,
        scale: torch.Tensor | None = None,
        *,
        offset: torch.Tensor | None = None,
        double: bool = False,
        **kwargs: object,
    ) -> dict[str, object]:
        y = self.proj(x)
        if scale is not None:
            y = y * scale
        if offset is not None:
            y = y + offset
        if double:
            y = y * 2
        return {"y": y, "aux": None, "n": 3, "x_sum": x.sum(dim=1, keepdim=True)}


class LSTMTagger(nn.Module):
    """sequence (FP32, 10x4) -> per-step tags (10x2) through an LSTM."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(sequence)
        return self.head(out)


class TinyEncoder(nn.Module):
    """tokens (INT64, 16) -> logits (3) through a 2-layer nn.TransformerEncoder."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.embed = nn.Embedding(10, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)).mean(dim=1))


class DictOutput(nn.Module):
    """x (FP32, 4) -> {"doubled": 2x, "negated": -x}."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"doubled": x * 2, "negated": -x}


@torch.library.custom_op("ferry_tests::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    """A custom operator that has no ONNX translation in either exporter."""
    return x.clone()


@mystery.register_fake
def _mystery_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Unexportable(nn.Module):
    """x (FP32, 4) -> mystery(x) + 1: no exporter can translate the custom op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mystery(x) + 1


class NaNInExport(nn.Module):
    """Eager torch returns x; the exported graph returns NaN (is_exporting() while tracing)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return x * float("nan")
        return x


class ParityBreaker(nn.Module):
    """Eager torch returns x; the exported graph returns x + 0.01: a parity failure."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting():
            return x + 0.01
        return x


def make_tiny_mlp() -> TinyMLP:
    """A factory SOURCE: returns the module."""
    return TinyMLP()


def not_a_module() -> str:
    """A factory SOURCE that returns something else."""
    return "not a module"


TINY_MLP_INSTANCE = TinyMLP()


class MaskedGRUClassifier(GRUClassifier):
    """sequence (FP32, Lx5) and length (INT64, 1) -> logits (3) from the GRU state at step
    length - 1: padding the sequence past `length` cannot change the answer (the GRU is causal),
    so the model may declare `ferry.pad_variable_dims`."""

    def forward(self, sequence: torch.Tensor, length: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out, _ = self.gru(sequence)
        last = (length.reshape(-1, 1, 1) - 1).clamp(min=0).expand(-1, 1, out.shape[2])
        return self.head(out.gather(1, last).squeeze(1))


class StatefulGRU(nn.Module):
    """forward(x [B, T, 5], h [B, 2, 16]) -> (y [B, T, 3], h): a 2-layer GRU whose state is
    batch-first (transposed to nn.GRU's [layers, batch, hidden] inside)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.gru = nn.GRU(5, 16, num_layers=2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h_next = self.gru(x, h.transpose(0, 1).contiguous())
        return self.head(out), h_next.transpose(0, 1)


class CountingCell(nn.Module):
    """forward(x [B, 3], total [B, 3], start [B, 1]) -> (x + total, x + total): a running sum
    that a START control resets (no time axis: the reference runs step by step)."""

    def forward(
        self, x: torch.Tensor, total: torch.Tensor, start: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kept = total * (1 - start.to(total.dtype))
        new = kept + x
        return new, new


class LengthDependentRNN(nn.Module):
    """Divides by the number of steps in the call: a step by step run cannot equal the run on
    the whole sequence (the stateful parity check must refuse it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.rnn = nn.RNN(2, 4, batch_first=True)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h_next = self.rnn(x, h.transpose(0, 1).contiguous())
        return out / x.shape[1], h_next.transpose(0, 1)
