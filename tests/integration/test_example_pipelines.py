"""The example repository goes end to end: raw text, a raw 8x8 UINT8 image and raw measurements
in, a label (with its probability) out, through ensembles of Python steps around the exported
models; drift monitoring still watches each tensor model inside its ensemble."""

from __future__ import annotations

import importlib.util
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from examples.common import ARTIFACTS_DIR
from tests.support.server_process import ServerProcess, running_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def load_builder() -> object:
    spec = importlib.util.spec_from_file_location(
        "build_example_repository", ROOT / "scripts" / "build_example_repository.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("examples") / "model_repository"
    builder = load_builder()
    failures = builder.build(  # type: ignore[attr-defined]
        repository, ARTIFACTS_DIR, ["encoder", "digits", "breast_cancer"]
    )
    assert failures == 0
    with running_server(repository) as process:
        yield process


def metric(server: ServerProcess, line_start: str) -> float:
    with urllib.request.urlopen(server.metrics_url) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_encoder_text_answers_a_label_from_raw_text(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    texts = np.array(
        [
            [b"red red red and a blue sky"],
            [b"Green is the colour of the sea, green and green"],
            [b"yellow sun, yellow sand, a blue sea"],
            [b"blue blue blue"],
            [b"red sky, blue sea, red sun"],  # punctuation, and words the vocabulary lacks
            ["Zürich's rote Dächer: red, RED!".encode()],
        ],
        dtype=np.object_,
    )
    tensor = httpclient.InferInput("TEXT", list(texts.shape), "BYTES")
    tensor.set_data_from_numpy(texts)
    result = client.infer("encoder_text", [tensor])
    assert result.as_numpy("LABEL").reshape(-1).tolist() == [
        b"red",
        b"green",
        b"yellow",
        b"blue",
        b"red",
        b"red",
    ]
    assert (result.as_numpy("PROBABILITY") > 0.5).all()


def test_digits_image_answers_the_digit_and_its_probability(server: ServerProcess) -> None:
    with np.load(ARTIFACTS_DIR / "digits" / "test.npz") as test:
        images, labels = test["image"][:64], test["labels"][:64]
    pixels = np.round(images.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)  # a raw image
    tensor = httpclient.InferInput("PIXELS", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = httpclient.InferenceServerClient(server.http_url).infer("digits_image", [tensor])
    digits = result.as_numpy("DIGIT").reshape(-1)
    assert result.as_numpy("DIGIT").dtype == np.int32
    assert (digits == labels).mean() >= 0.95
    probability = result.as_numpy("PROBABILITY").reshape(-1)
    assert ((probability > 0.1) & (probability <= 1.0)).all()


def test_breast_cancer_diagnosis_answers_a_label_with_a_threshold(server: ServerProcess) -> None:
    with np.load(ARTIFACTS_DIR / "breast_cancer" / "test.npz") as test:
        features, labels = test["features"][:64].astype(np.float32), test["labels"][:64]
    tensor = httpclient.InferInput("FEATURES", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features)
    result = httpclient.InferenceServerClient(server.http_url).infer(
        "breast_cancer_diagnosis", [tensor]
    )
    label = result.as_numpy("LABEL").reshape(-1)
    p_malignant = result.as_numpy("P_MALIGNANT").reshape(-1)
    assert set(label) <= {b"malignant", b"benign"}
    np.testing.assert_array_equal(label == b"malignant", p_malignant >= 0.5)  # the threshold
    assert ((label == b"benign") == (labels == 1)).mean() >= 0.9  # dataset label 1 = benign


def test_drift_still_watches_the_tensor_model_inside_the_ensemble(server: ServerProcess) -> None:
    series = 'ferry_drift_open_window_samples{model="digits",version="1"}'
    before = metric(server, series)
    pixels = np.zeros((5, 8, 8), np.uint8)
    tensor = httpclient.InferInput("PIXELS", [5, 8, 8], "UINT8")
    tensor.set_data_from_numpy(pixels)
    httpclient.InferenceServerClient(server.http_url).infer("digits_image", [tensor])
    deadline = time.monotonic() + 10
    while metric(server, series) < before + 5:
        assert time.monotonic() < deadline, "the digits model inside the ensemble saw no rows"
        time.sleep(0.2)
