"""`ferry export` end to end (in process through typer, plus one real subprocess): every SOURCE
form, several model families, versions, the drift reference, and every bad-input case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from exporters.repository import STAGING_PREFIX
from tests.support import torch_models as tm
from tests.support.export_cli import ferry_export

M = "tests.support.torch_models"
runner = CliRunner()


def assert_exported(repo: Path, name: str = "m", version: int = 1) -> dict[str, object]:
    """The entry exists and its report says parity passed; returns the report."""
    folder = repo / name / str(version)
    assert (folder / "model.onnx").is_file() and (repo / name / "config.pbtxt").is_file()
    assert not list(folder.glob("*.data"))
    report: dict[str, object] = json.loads((folder / "export_report.json").read_text())
    assert report["parity"]["passed"]  # type: ignore[index]
    return report


def assert_untouched(repo: Path) -> None:
    """Nothing of a failed export in the repository."""
    leftovers = [p.name for p in repo.iterdir()] if repo.exists() else []
    assert leftovers == [] or all(not p.startswith(STAGING_PREFIX) and p != "m" for p in leftovers)
    assert not (repo / "m").exists()


def onnx_matches_torch(path: Path, model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> None:
    """ORT on the saved file equals eager torch (used at batch 37: the batch dim is dynamic)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, inputs)
    with torch.inference_mode():
        expected = model.eval()(*(torch.from_numpy(v) for v in inputs.values()))
    expected = expected if isinstance(expected, tuple) else (expected,)
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-4)


# --- SOURCE forms -----------------------------------------------------------------------------


@pytest.mark.parametrize("attr", ["TinyMLP", "make_tiny_mlp", "TINY_MLP_INSTANCE"])
def test_module_attr_sources(tmp_path: Path, attr: str) -> None:
    code, out = ferry_export(tmp_path, f"{M}:{attr}", "--input", "x:FP32:8")
    assert code == 0, out
    report = assert_exported(tmp_path)
    assert report["exporter"] == "dynamo" and report["opset"] == 20
    assert "parity" in out and "ferry export" in out
    x = np.random.default_rng(0).standard_normal((37, 8)).astype(np.float32)
    onnx_matches_torch(tmp_path / "m" / "1" / "model.onnx", tm.TinyMLP(), {"x": x})


def test_file_source_with_weights(tmp_path: Path) -> None:
    source = tmp_path / "net.py"
    source.write_text(
        "import torch\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(5, 2)\n\n"
        "    def forward(self, x):\n        return self.fc(x)\n"
    )
    trained = torch.nn.Linear(5, 2)
    torch.save(
        {"fc.weight": trained.weight.detach(), "fc.bias": trained.bias.detach()}, tmp_path / "w.pt"
    )
    repo = tmp_path / "repo"
    code, out = ferry_export(
        repo, f"{source}:Net", "--input", "x:FP32:5", "--weights", str(tmp_path / "w.pt")
    )
    assert code == 0, out
    assert_exported(repo)
    x = np.ones((37, 5), np.float32)
    session = ort.InferenceSession(str(repo / "m" / "1" / "model.onnx"))
    np.testing.assert_allclose(
        session.run(None, {"x": x})[0],
        trained(torch.from_numpy(x)).detach().numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_torchscript_source_falls_back_and_records_it(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(tm.TinyMLP()), str(tmp_path / "model.pt"))
    repo = tmp_path / "repo"
    code, out = ferry_export(repo, str(tmp_path / "model.pt"), "--input", "x:FP32:8")
    assert code == 0, out
    report = assert_exported(repo)
    assert report["exporter"] == "torchscript" and report["dynamo_error"]
    assert report["source"]["kind"] == "torchscript"  # type: ignore[index]
    x = np.random.default_rng(1).standard_normal((37, 8)).astype(np.float32)
    onnx_matches_torch(repo / "m" / "1" / "model.onnx", tm.TinyMLP(), {"x": x})


def test_exported_program_source_infers_inputs(tmp_path: Path) -> None:
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(
        tm.TinyMLP().eval(), (torch.randn(2, 8),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(tmp_path / "model.pt2"))
    repo = tmp_path / "repo"
    code, out = ferry_export(repo, str(tmp_path / "model.pt2"))
    assert code == 0, out
    report = assert_exported(repo)
    assert report["inputs"] == [{"name": "x", "datatype": "FP32", "dims": [8], "dim_names": {}}]


def test_pickled_module_needs_the_trust_flag(tmp_path: Path) -> None:
    torch.save(tm.TinyMLP(), tmp_path / "whole.pt")
    repo = tmp_path / "repo"
    code, out = ferry_export(repo, str(tmp_path / "whole.pt"), "--input", "x:FP32:8")
    assert code == 1 and "--trust-pickled-module" in out
    assert_untouched(repo)
    code, out = ferry_export(
        repo, str(tmp_path / "whole.pt"), "--input", "x:FP32:8", "--trust-pickled-module"
    )
    assert code == 0, out
    assert assert_exported(repo)["source"]["kind"] == "pickled_module"  # type: ignore[index]


# --- model families ---------------------------------------------------------------------------


def test_two_inputs_two_outputs_from_example(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    example = {
        "features": rng.standard_normal((5, 6)).astype(np.float32),
        "ids": rng.integers(0, 10, (5, 3)).astype(np.int64),
        "labels": np.zeros(5),
    }
    np.savez(tmp_path / "example.npz", **example)
    repo = tmp_path / "repo"
    code, out = ferry_export(
        repo,
        f"{M}:TwoInTwoOut",
        "--example",
        str(tmp_path / "example.npz"),
        "--output",
        "scores",
        "--output",
        "total",
    )
    assert code == 0, out
    report = assert_exported(repo)
    assert [o["name"] for o in report["outputs"]] == ["scores", "total"]  # type: ignore[attr-defined]
    batch = {
        "features": rng.standard_normal((37, 6)).astype(np.float32),
        "ids": rng.integers(0, 10, (37, 3)).astype(np.int64),
    }
    onnx_matches_torch(repo / "m" / "1" / "model.onnx", tm.TwoInTwoOut(), batch)


@pytest.mark.parametrize(
    ("model", "spec", "dtype", "shape"),
    [
        ("ConvBNDropout", "image:FP32:3,16,16", np.float32, (3, 16, 16)),
        ("GRUClassifier", "sequence:FP32:12,5", np.float32, (12, 5)),
        ("LSTMTagger", "sequence:FP32:10,4", np.float32, (10, 4)),
        ("TinyEncoder", "tokens:INT64:16", np.int64, (16,)),
    ],
)
def test_model_families_pass_parity(
    tmp_path: Path, model: str, spec: str, dtype: type, shape: tuple[int, ...]
) -> None:
    code, out = ferry_export(tmp_path, f"{M}:{model}", "--input", spec, "--max-batch-size", "8")
    assert code == 0, out
    report = assert_exported(tmp_path)
    assert sorted({c["batch"] for c in report["parity"]["checks"]}) == [1, 2, 8]  # type: ignore[index]
    rng = np.random.default_rng(2)
    x = (
        rng.standard_normal((37, *shape))
        if dtype is np.float32
        else rng.integers(0, 10, (37, *shape))
    ).astype(dtype)
    onnx_matches_torch(
        tmp_path / "m" / "1" / "model.onnx", getattr(tm, model)(), {spec.split(":")[0]: x}
    )


def test_dict_outputs_are_named_by_their_keys(tmp_path: Path) -> None:
    code, out = ferry_export(tmp_path, f"{M}:DictOutput", "--input", "x:FP32:4")
    assert code == 0, out
    outputs = [o["name"] for o in assert_exported(tmp_path)["outputs"]]  # type: ignore[attr-defined]
    assert outputs == ["doubled", "negated"]


# --- versions and the drift reference ---------------------------------------------------------


def test_versions_overwrite_and_reference(tmp_path: Path) -> None:
    args = ("--input", "x:FP32:8")
    assert ferry_export(tmp_path, f"{M}:TinyMLP", *args)[0] == 0
    assert ferry_export(tmp_path, f"{M}:TinyMLP", *args)[0] == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2", "config.pbtxt"]
    code, out = ferry_export(tmp_path, f"{M}:TinyMLP", *args, "--version", "1")
    assert code == 1 and "already exists" in out and "--overwrite" in out
    np.savez(
        tmp_path / "ref.npz",
        x=np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32),
    )
    code, out = ferry_export(
        tmp_path,
        f"{M}:TinyMLP",
        *args,
        "--version",
        "1",
        "--overwrite",
        "--reference-data",
        str(tmp_path / "ref.npz"),
    )
    assert code == 0, out
    assert (tmp_path / "m" / "1" / "reference.npz").is_file()
    assert assert_exported(tmp_path)["reference"] == "reference.npz"


# --- bad input: clear message, exit 1, repository untouched ----------------------------------


@pytest.mark.parametrize(
    ("source", "args", "message"),
    [
        ("no_such_pkg.mod:Net", ("--input", "x:FP32:8"), "cannot import module 'no_such_pkg.mod'"),
        (f"{M}:Missing", ("--input", "x:FP32:8"), "'Missing' not found"),
        (f"{M}:not_a_module", ("--input", "x:FP32:8"), "returned a str, not an nn.Module"),
        (f"{M}:TinyMLP", ("--input", "x:FP32"), "does not parse"),
        (f"{M}:TinyMLP", ("--input", "y:FP32:8"), "not a parameter of the model's forward(x)"),
        (f"{M}:TinyMLP", ("--input", "x:FP32:9"), "fails on inputs of the declared specs"),
        (f"{M}:TinyMLP", (), "--input NAME:DTYPE:DIMS"),
        (f"{M}:TwoInTwoOut", ("--input", "features:FP32:6"), "needs input 'ids'"),
        (
            f"{M}:TinyMLP",
            ("--input", "x:FP32:8", "--output", "a", "--output", "b"),
            "2 --output names given",
        ),
        (f"{M}:Unexportable", ("--input", "x:FP32:4"), "cannot be exported to ONNX"),
        (f"{M}:ParityBreaker", ("--input", "x:FP32:4"), "parity gate failed"),
        (f"{M}:NaNInExport", ("--input", "x:FP32:4"), "NaN/Inf values that PyTorch did not"),
        (f"{M}:TinyMLP", ("--input", "x:FP32:8", "--weights", "missing.pt"), "file not found"),
        (f"{M}:TinyMLP", ("--input", "x:FP32:8", "--init-args", "[1]"), "must be a JSON object"),
        (f"{M}:TinyMLP", ("--input", "x:FP32:8", "--init-args", "{"), "is not valid JSON"),
        (
            f"{M}:GRUTextClassifier",
            ("--input", "tokens:INT64:-1", "--init-args", '{"hiden": 8}'),
            "calling 'tests.support.torch_models:GRUTextClassifier(hiden=8)' failed: TypeError",
        ),
        (
            f"{M}:TINY_MLP_INSTANCE",
            ("--input", "x:FP32:8", "--init-args", '{"a": 1}'),
            "already a model instance",
        ),
        (
            f"{M}:TinyMLP",
            ("--input", "x:FP32:8", "--forward-kwargs", '{"scale": 2}'),
            "'scale' is not a parameter of the model's forward(x)",
        ),
        (
            f"{M}:TinyMLP",
            ("--input", "x:FP32:8", "--dynamic-dim", "y:1=n"),
            "--dynamic-dim y:1=n: no input 'y'",
        ),
        (
            f"{M}:TinyMLP",
            ("--input", "x:FP32:-1", "--dim-sizes", "seq=3,4"),
            "--dim-sizes seq: no variable dim has that name (variable dims: dim_1)",
        ),
        (
            f"{M}:TinyMLP",
            ("--input", "x:FP32:features"),
            "other sizes with --dim-sizes (now features=16)",
        ),
        (f"{M}:KeywordModel", ("--input", "x:FP32:4", "--output", "aux"), "'aux' is a None"),
    ],
)
def test_bad_input(tmp_path: Path, source: str, args: tuple[str, ...], message: str) -> None:
    repo = tmp_path / "repo"
    code, out = ferry_export(repo, source, *args)
    assert code == 1, out
    assert message in " ".join(out.split()), out
    assert "Traceback" not in out and "nothing was written" in out
    assert_untouched(repo)


def test_missing_attribute_names_the_file_as_written(tmp_path: Path) -> None:
    source = tmp_path / "net.py"
    source.write_text("import torch\n\nclass Net(torch.nn.Module):\n    pass\n")
    code, out = ferry_export(tmp_path / "repo", f"{source}:Nett", "--input", "x:FP32:4")
    text = " ".join(out.split())
    assert code == 1 and f"'Nett' not found in {source}; it has: Net, torch" in text
    assert "_ferry_source" not in text


def test_narrow_integer_draws_are_said(tmp_path: Path) -> None:
    code, out = ferry_export(tmp_path, f"{M}:IndexedLookup", "--input", "codes:INT64:4")
    text = " ".join(out.split())
    assert code == 0, out
    assert "integer input 'codes' feeds no embedding ferry can see" in text
    assert "pass --example" in text and "narrow" in text
    report = assert_exported(tmp_path)
    assert report["generated_inputs"] == {
        "codes": {"low": 0, "high": 10, "origin": "no embedding reads it: narrow default"}
    }
    assert report["notes"]


def test_keyword_inputs_forward_kwargs_and_dict_outputs(tmp_path: Path) -> None:
    code, out = ferry_export(
        tmp_path,
        f"{M}:KeywordModel",
        *("--input", "offset:FP32:2", "--input", "x:FP32:4"),
        *("--forward-kwargs", '{"double": true}'),
    )
    text = " ".join(out.split())
    assert code == 0, out
    assert "not exported (not tensors): aux (None), n (int)" in text
    report = assert_exported(tmp_path)
    assert report["binding"] == {
        "by": "keyword",
        "inputs": {"x": "x", "offset": "offset"},
        "forward_kwargs": {"double": True},
        "left_to_defaults": ["scale"],
        "outputs": {"y": "result['y']", "x_sum": "result['x_sum']"},
    }
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    offset = rng.standard_normal((5, 2)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "m" / "1" / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["x", "offset"]
    y = session.run(["y"], {"x": x, "offset": offset})[0]
    model = tm.KeywordModel().eval()
    with torch.inference_mode():
        want = model(torch.from_numpy(x), offset=torch.from_numpy(offset), double=True)["y"]
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-5, atol=1e-6)


def test_example_axis_made_variable(tmp_path: Path) -> None:
    tokens = np.random.default_rng(2).integers(0, 500, (4, 20)).astype(np.int64)
    np.savez(tmp_path / "example.npz", tokens=tokens)
    code, out = ferry_export(
        tmp_path / "repo",
        f"{M}:GRUTextClassifier",
        *("--example", str(tmp_path / "example.npz"), "--dynamic-dim", "tokens:1=seq_len"),
    )
    assert code == 0, out
    report = assert_exported(tmp_path / "repo")
    assert report["variable_dims"] == {"seq_len": [10, 20]}  # the example's, and cropped to half
    assert report["generated_inputs"] == {}  # the example's rows, nothing drawn
    longer = np.random.default_rng(3).integers(0, 500, (3, 33)).astype(np.int64)
    onnx_matches_torch(
        tmp_path / "repo" / "m" / "1" / "model.onnx", tm.GRUTextClassifier(), {"tokens": longer}
    )


def test_unexportable_shows_both_exporters_reasons(tmp_path: Path) -> None:
    code, out = ferry_export(tmp_path, f"{M}:Unexportable", "--input", "x:FP32:4")
    text = " ".join(out.split())
    assert code == 1 and "No ONNX function found" in text and "TorchScript exporter:" in text
    assert "ferry_tests::mystery" in text and len(out.splitlines()) < 40


def test_parity_failure_prints_the_mismatch_table(tmp_path: Path) -> None:
    code, out = ferry_export(tmp_path, f"{M}:ParityBreaker", "--input", "x:FP32:4")
    assert code == 1 and "max abs err" in out and "FAIL" in out and "0.01" in out


def test_mismatched_weights(tmp_path: Path) -> None:
    torch.save({"net.0.weight": torch.zeros(3, 3)}, tmp_path / "w.pt")
    code, out = ferry_export(
        tmp_path / "repo",
        f"{M}:TinyMLP",
        "--input",
        "x:FP32:8",
        "--weights",
        str(tmp_path / "w.pt"),
    )
    assert code == 1 and "do not match the model" in out
    assert_untouched(tmp_path / "repo")


def test_files_that_are_not_models(tmp_path: Path) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"hello")
    code, out = ferry_export(tmp_path / "repo", str(tmp_path / "garbage.pt"))
    assert code == 1 and "neither a TorchScript file" in " ".join(out.split())
    (tmp_path / "garbage.pt2").write_bytes(b"hello")
    code, out = ferry_export(tmp_path / "repo", str(tmp_path / "garbage.pt2"))
    assert code == 1 and "not an ExportedProgram archive" in " ".join(out.split())
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")
    code, out = ferry_export(tmp_path / "repo", str(tmp_path / "state.pt"))
    assert code == 1 and "--weights" in out
    assert_untouched(tmp_path / "repo")


def test_static_batch_exported_program_is_refused(tmp_path: Path) -> None:
    program = torch.export.export(tm.TinyMLP().eval(), (torch.randn(2, 8),))
    torch.export.save(program, str(tmp_path / "static.pt2"))
    code, out = ferry_export(tmp_path / "repo", str(tmp_path / "static.pt2"))
    assert code == 1 and "static first dim" in " ".join(out.split())
    assert_untouched(tmp_path / "repo")


def test_real_cli_process_fails_cleanly(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry",
            "export",
            f"{M}:not_a_module",
            "--name",
            "m",
            "--model-repository",
            str(repo),
            "--input",
            "x:FP32:8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 1
    assert "not an nn.Module" in result.stdout and "Traceback" not in result.stderr
    assert_untouched(repo)
