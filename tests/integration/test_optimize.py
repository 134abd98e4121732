"""`ferry optimize` end to end: each CPU variant is published and served, the gate rejects a
collapsed model, and poll mode picks up the new version with no failed request."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from optimizers import variants
from optimizers.pipeline import OptimizeOptions, run_optimize
from tests.support.onnx_models import run_reference
from tests.support.server_process import running_server
from tests.unit.optimizers.models import Example, perturbed, write_example

CPU_VARIANTS = ("ort-fp32", "int8-dynamic", "int8-static", "fp16")
FORCE = ("--min-gain", "0", "--max-drop", "1", "--bench-seconds", "1")


def ferry_optimize(example: Example, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "ferry",
        "optimize",
        name,
        "--model-repository",
        str(example.repository),
        "--eval-data",
        str(example.eval_data),
        "--calibration-data",
        str(example.calibration_data),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def infer(
    client: httpclient.InferenceServerClient, name: str, x: np.ndarray, version: str = ""
) -> np.ndarray:
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(name, [tensor], model_version=version)
    return np.asarray(result.as_numpy("output"))


def test_each_cpu_variant_is_published_and_served(tmp_path: Path) -> None:
    example = write_example(tmp_path)
    for variant in CPU_VARIANTS[1:]:
        shutil.copytree(example.model_dir, example.repository / variant)
        (example.repository / variant / "config.pbtxt").write_text(
            (example.model_dir / "config.pbtxt").read_text().replace('"mlp"', f'"{variant}"')
        )
    shutil.move(example.model_dir, example.repository / CPU_VARIANTS[0])
    (example.repository / CPU_VARIANTS[0] / "config.pbtxt").write_text(
        (example.repository / CPU_VARIANTS[1] / "config.pbtxt")
        .read_text()
        .replace(f'"{CPU_VARIANTS[1]}"', f'"{CPU_VARIANTS[0]}"')
    )
    for variant in CPU_VARIANTS:
        result = run_optimize(
            OptimizeOptions(
                variant,
                example.repository,
                example.eval_data,
                example.calibration_data,
                variants=(variant,),
                min_gain=0.0,
                max_drop=1.0,
                bench_seconds=1,
            )
        )
        report_path = example.repository / variant / "2" / "optimize_report.json"
        if variant == "fp16":  # checked for correctness on CPU, never published there
            assert not report_path.exists() and result["published"] is None
            assert result["candidates"][0]["reason"].startswith("not benchmarked")
            continue
        report = json.loads(report_path.read_text())
        assert report["published"] == {"variant": variant, "version": 2}
        row = report["candidates"][0]
        for key in (
            "variant",
            "precision",
            "metric",
            "value",
            "delta",
            "passed",
            "reason",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "throughput",
        ):
            assert key in row, key
        assert report["fingerprint"]["cpu_flags"] and report["fingerprint"]["onnxruntime"]
    x = np.load(example.eval_data)["input"][:6]
    with running_server(example.repository) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        for variant in CPU_VARIANTS[:3]:
            served = infer(client, variant, x, "2")
            published = example.repository / variant / "2" / "model.onnx"
            want = run_reference(published, {"input": x})["output"]
            np.testing.assert_allclose(served, want, rtol=1e-4, atol=1e-4)
            fp32 = run_reference(example.repository / variant / "1" / "model.onnx", {"input": x})[
                "output"
            ]
            assert np.mean(served.argmax(1) == fp32.argmax(1)) >= 0.8


def test_gate_rejects_a_collapsed_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example = write_example(tmp_path)

    def noisy(ctx: variants.BuildContext, out: Path) -> variants.Artifact:
        return variants.Artifact("perturbed", "fp32", perturbed(ctx.source.onnx_path, out))

    spec = variants.VariantSpec("perturbed", "fp32", 0, ("cpu",), noisy)
    monkeypatch.setitem(variants.VARIANTS, "perturbed", spec)
    report = run_optimize(
        OptimizeOptions(
            example.name,
            example.repository,
            example.eval_data,
            variants=("perturbed",),
            min_gain=0.0,
            bench_seconds=1,
        )
    )
    row = report["candidates"][0]
    assert row["passed"] is False and row["reason"].startswith("accuracy drop: accuracy")
    assert row["delta"] > 0.3 and "p50_ms" not in row
    assert report["published"] is None and not (example.model_dir / "2").exists()


def test_poll_mode_serves_the_published_version_without_failures(tmp_path: Path) -> None:
    example = write_example(tmp_path)
    x = np.load(example.eval_data)["input"][:4]
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()
    with running_server(
        example.repository, "--model-control-mode", "poll", "--repository-poll-secs", "1"
    ) as server:
        client = httpclient.InferenceServerClient(server.http_url)

        def load() -> None:
            own = httpclient.InferenceServerClient(server.http_url)
            while not stop.is_set():
                try:
                    infer(own, example.name, x)
                    answered[0] += 1
                except Exception as exc:
                    failures.append(repr(exc))

        worker = threading.Thread(target=load)
        worker.start()
        try:
            done = ferry_optimize(example, example.name, "--variants", "int8-dynamic", *FORCE)
            assert done.returncode == 0, done.stderr + done.stdout
            deadline = time.monotonic() + 30
            while not client.is_model_ready(example.name, "2") and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.is_model_ready(example.name, "2")
            time.sleep(1.5)
        finally:
            stop.set()
            worker.join()
        want = run_reference(example.model_dir / "2" / "model.onnx", {"input": x})["output"]
        np.testing.assert_allclose(infer(client, example.name, x), want, rtol=1e-4, atol=1e-4)
    assert failures == [] and answered[0] > 10
    assert (example.model_dir / "1" / "model.onnx").is_file()


def test_encoder_int8_quantizes_fused_attention_within_the_gate(tmp_path: Path) -> None:
    """The real `encoder` example (trained, `ferry export`ed with dynamo): its int8-dynamic
    variant has every attention block fused and quantized (QAttention) and passes the gate."""
    from bench.optimize_examples import prepare

    repository, artifacts = prepare("encoder", tmp_path)
    report = run_optimize(
        OptimizeOptions(
            "encoder",
            repository,
            artifacts / "test.npz",
            artifacts / "val.npz",
            variants=("ort-fp32", "int8-dynamic"),
            min_gain=0.0,
            bench_seconds=1,
        )
    )
    rows = {row["variant"]: row for row in report["candidates"]}
    assert rows["ort-fp32"]["details"]["transformer_fusions"]["Attention"] == 4
    int8 = rows["int8-dynamic"]
    assert int8["details"]["quantized_ops"]["QAttention"] == 4
    assert int8["passed"] and int8["delta"] >= -0.01 and int8["top1_agreement"] >= 0.99
    assert report["published"] is not None
