"""`ferry optimize` fuses the attention of exported Hugging Face encoders (BERT, DistilBERT, ViT)
into ONNX Runtime's Attention op, padding masks included, and INT8 makes it QAttention."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporters.pipeline import ExportOptions, run_export
from optimizers.attention_fusion import fuse_attention_file
from tests.support import hf_models
from tests.support.onnx_models import run_reference

pytestmark = pytest.mark.slow
M = "tests.support.hf_models"
SEQ = 12


def text_batch(rows: int, seed: int, types: bool) -> dict[str, np.ndarray]:
    return hf_models.token_batch(rows, SEQ, np.random.default_rng(seed), token_types=types)


EXPORTS = {
    "bert": (
        ("input_ids:INT64:seq", "attention_mask:INT64:seq", "token_type_ids:INT64:seq"),
        ("logits",),
        {},
    ),
    "distilbert": (("input_ids:INT64:seq", "attention_mask:INT64:seq"), (), {}),
    "vit": (
        ("pixel_values:FP32:3,32,32",),
        ("logits",),
        {},
    ),
}


def samples(name: str, rows: int, seed: int) -> dict[str, np.ndarray]:
    if name == "vit":
        pixels = np.random.default_rng(seed).standard_normal((rows, 3, 32, 32))
        return {"pixel_values": pixels.astype(np.float32)}
    return text_batch(rows, seed, types=name == "bert")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf-optimize")
    for name, (inputs, outputs, forward_kwargs) in EXPORTS.items():
        run_export(
            ExportOptions(
                source=f"{M}:{name}",
                name=name,
                repository=root,
                inputs=inputs,
                outputs=outputs,
                forward_kwargs=forward_kwargs,
                max_batch_size=8,
            )
        )
    return root


@pytest.mark.parametrize("name", list(EXPORTS))
def test_hf_attention_is_fused_and_matches(repo: Path, tmp_path: Path, name: str) -> None:
    source = repo / name / "1" / "model.onnx"
    fused = tmp_path / "fused.onnx"
    assert fuse_attention_file(source, fused, samples(name, 4, 0)) == 2
    nodes = onnx.load(str(fused)).graph.node
    attention = [n for n in nodes if n.op_type == "Attention"]
    assert len(attention) == 2 and not [n for n in nodes if n.op_type == "Softmax"]
    # text models: the padding mask reaches the op as its 2-D mask_index
    assert (len(attention[0].input) == 4) == (name != "vit")
    for rows, seed in ((1, 5), (7, 6)):  # other batches, other padding than the check saw
        x = samples(name, rows, seed)
        want, got = run_reference(source, x), run_reference(fused, x)
        for key in want:
            scale = float(np.abs(want[key]).max())
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4 * scale)


def test_a_causal_mask_is_not_taken_for_a_padding_mask(tmp_path: Path) -> None:
    """GPT-2's bias is causal as well as padding: fusing it as mask_index would be wrong."""
    repo = tmp_path / "repo"
    run_export(
        ExportOptions(
            source=f"{M}:gpt2",
            name="gpt2",
            repository=repo,
            inputs=("input_ids:INT64:seq", "attention_mask:INT64:seq"),
            outputs=("logits",),
            max_batch_size=4,
        )
    )
    source = repo / "gpt2" / "1" / "model.onnx"
    assert fuse_attention_file(source, tmp_path / "fused.onnx", text_batch(4, 0, False)) == 0


def test_ferry_optimize_reports_fused_attention_and_quantizes_it(
    repo: Path, tmp_path: Path
) -> None:
    eval_data = tmp_path / "eval.npz"
    arrays = text_batch(48, 3, types=True)
    with torch.inference_mode():
        logits = hf_models.bert()(**{k: torch.from_numpy(v) for k, v in arrays.items()}).logits
    np.savez(eval_data, labels=logits.argmax(-1).numpy(), **arrays)
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "ferry", "optimize", "bert"),
            *("--model-repository", str(repo), "--eval-data", str(eval_data)),
            *("--variants", "ort-fp32,int8-dynamic", "--max-drop", "0.1"),
            *("--min-gain", "0", "--bench-seconds", "1", "--no-publish"),
            *("--report", str(report_path)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = " ".join(result.stdout.split())
    assert "ort-fp32: 2 attention block(s) fused" in text
    assert "int8-dynamic: 2 attention block(s) fused" in text
    rows = {row["variant"]: row for row in json.loads(report_path.read_text())["candidates"]}
    assert rows["ort-fp32"]["details"]["fused_attention"] == 2
    assert rows["int8-dynamic"]["details"]["quantized_ops"]["QAttention"] == 2
    assert rows["int8-dynamic"]["passed"] and rows["ort-fp32"]["passed"]
