"""The examples train in seconds to their quality bars and are importable export SOURCEs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from examples import EXAMPLE_SOURCES
from examples.common import split_indices


def test_split_is_seeded_70_15_15() -> None:
    train, val, test = split_indices(1000)
    assert (len(train), len(val), len(test)) == (700, 150, 150)
    assert len(set(train) | set(val) | set(test)) == 1000
    assert np.array_equal(split_indices(1000)[0], train)


def test_digits_reaches_95_percent_and_writes_artifacts(tmp_path: Path) -> None:
    from examples import digits

    metrics = digits.train(tmp_path)
    assert metrics["test_accuracy"] >= 0.95
    with np.load(tmp_path / "test.npz") as test:
        assert test["image"].shape[1:] == (1, 8, 8) and len(test["labels"]) == len(test["image"])
    with np.load(tmp_path / "reference.npz") as reference:
        assert list(reference.files) == ["image"]
    assert (tmp_path / "weights.pt").is_file()


def test_encoder_is_the_benchmark_size() -> None:
    from examples.encoder import SEQ_LEN, EncoderClassifier, make_dataset

    model = EncoderClassifier()
    assert len(model.encoder.layers) == 4 and model.embed.embedding_dim == 256 and SEQ_LEN == 64
    tokens, labels = make_dataset(rows=50)
    assert tokens.shape == (50, 64) and tokens.dtype == np.int64
    counts = np.stack([(tokens == marker).sum(axis=1) for marker in (1, 2, 3, 4)], axis=1)
    assert np.array_equal(counts.argmax(axis=1), labels)


def test_sources_name_importable_classes() -> None:
    import importlib

    for source in EXAMPLE_SOURCES.values():
        module, attr = source.split(":")
        assert callable(getattr(importlib.import_module(module), attr))
