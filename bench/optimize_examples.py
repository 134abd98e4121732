"""`ferry optimize` on the trained examples: train, `ferry export`, optimize, print ratios vs FP32.

    python -m bench.optimize_examples [encoder digits hf_bert ...] [--variants ...] [--keep DIR]
    python -m bench.optimize_examples hf_bert encoder --profile   # where the time goes, no optimize

`hf_bert` is a Hugging Face BertForSequenceClassification sized like the encoder (4 layers,
hidden 256, 4 heads, feed-forward 1024, seq 64; tiny vocabulary, random weights, built from a
config: no download), labelled by its own FP32 predictions on padded random token batches, so
its metric is agreement with FP32; random weights give small logit margins, so its gate is
--max-drop 0.05 (the agreement is printed).

Every ratio is measured in the same run against the FP32 version (interleaved benchmark), and
the wall time of the whole `ferry optimize` command is printed for the < 3 minute target.

`--profile` builds `ort-fp32` and `int8-dynamic` as `ferry optimize` does (same builders, the
first eval samples as the rewrite check) and, for them and the export, prints the op counts of
the file and of the graph an ONNX Runtime CPU session runs (ORT_ENABLE_ALL, as served), and
ONNX Runtime's profiler kernel time per op type at batch 32: which ops stayed float, which ORT
fused on load, where the time goes. Kernel times on a shared machine are noisy; compare the
shares within one run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPORT_ARGS = {  # example module -> its class attribute and batch size for the benchmark
    "encoder": ("EncoderClassifier", 32),
    "digits": ("DigitsCNN", 32),
    "breast_cancer": ("BreastCancerMLP", 32),
    "diabetes": ("DiabetesMLP", 32),
}


MAX_DROP = {"hf_bert": "0.05"}  # default: ferry optimize's own
HF_BERT_SEQ = 64
HF_BERT_ARGS = {"hidden": 256, "layers": 4, "heads": 4}


def prepare_hf_bert(root: Path) -> tuple[Path, Path]:
    """Export the encoder-sized HF BERT; eval/calibration data labelled by its FP32 logits."""
    import numpy as np
    import torch

    from exporters.inputs import padding_mask
    from tests.support import hf_models

    repo, artifacts = root / "repo", root / "artifacts" / "hf_bert"
    artifacts.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *(sys.executable, "-m", "ferry", "export", "tests.support.hf_models:bert"),
            *("--name", "hf_bert", "--model-repository", str(repo), "--max-batch-size", "32"),
            *("--init-args", json.dumps(HF_BERT_ARGS)),
            *("--input", "input_ids:INT64:seq_len", "--input", "attention_mask:INT64:seq_len"),
            *("--input", "token_type_ids:INT64:seq_len", "--output", "logits"),
            *("--dim-sizes", f"seq_len={HF_BERT_SEQ},17"),
        ],
        check=True,
    )
    model = hf_models.bert(**HF_BERT_ARGS)
    for split, seed, count in (("test", 1, 256), ("val", 2, 256)):
        rng = np.random.default_rng(seed)
        arrays = {
            "input_ids": rng.integers(0, hf_models.VOCAB, (count, HF_BERT_SEQ)),
            "attention_mask": padding_mask((count, HF_BERT_SEQ), rng),
            "token_type_ids": rng.integers(0, 2, (count, HF_BERT_SEQ)),
        }
        with torch.inference_mode():
            logits = model(**{k: torch.from_numpy(v) for k, v in arrays.items()}).logits
        np.savez(artifacts / f"{split}.npz", labels=logits.argmax(-1).numpy(), **arrays)
    return repo, artifacts


def prepare(name: str, root: Path) -> tuple[Path, Path]:
    """Train the example and export it into root/repo; returns (repo, artifacts dir)."""
    if name == "hf_bert":
        return prepare_hf_bert(root)
    module = importlib.import_module(f"examples.{name}")
    artifacts = root / "artifacts" / name
    module.train(artifacts)
    attr, max_batch = EXPORT_ARGS[name]
    repo = root / "repo"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ferry",
            "export",
            f"examples.{name}:{attr}",
            "--name",
            name,
            "--model-repository",
            str(repo),
            "--weights",
            str(artifacts / "weights.pt"),
            "--example",
            str(artifacts / "val.npz"),
            "--max-batch-size",
            str(max_batch),
        ],
        check=True,
    )
    return repo, artifacts


PROFILE_RUNS = 30


def profile(name: str, root: Path, repo: Path, artifacts: Path) -> None:
    """Op counts and per-op-type kernel time of the export, ort-fp32 and int8-dynamic."""
    from collections import Counter, defaultdict

    import numpy as np
    import onnx
    import onnxruntime as ort

    from optimizers import onnx_variants
    from optimizers.runners import default_threads, repeat_to, slice_inputs

    test = dict(np.load(artifacts / "test.npz"))
    test.pop("labels", None)
    count = len(next(iter(test.values())))
    samples = slice_inputs(test, 0, min(count, 8), True)
    batch = repeat_to(test, count, 32, True)
    work = root / "profile" / name
    work.mkdir(parents=True, exist_ok=True)
    source = repo / name / "1" / "model.onnx"
    graphs = {"export": source, "ort-fp32": work / "ort-fp32.onnx"}
    graphs["int8-dynamic"] = work / "int8-dynamic" / "model.onnx"  # it writes beside its output
    graphs["int8-dynamic"].parent.mkdir(exist_ok=True)
    fp32 = onnx_variants.build_ort_fp32(
        source, graphs["ort-fp32"], ["CPUExecutionProvider"], samples
    )
    int8 = onnx_variants.build_int8_dynamic(
        source, graphs["int8-dynamic"], per_channel=False, samples=samples
    )
    print(f"{name} ort-fp32: {json.dumps(fp32)}\n{name} int8-dynamic: {json.dumps(int8)}")
    for variant, path in graphs.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = default_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.optimized_model_filepath = str(work / f"{variant}.session.onnx")
        options.enable_profiling = True
        options.profile_file_prefix = str(work / f"{variant}.profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(PROFILE_RUNS):
            session.run(None, batch)
        events = json.loads(Path(session.end_profiling()).read_text())
        kernel: dict[str, float] = defaultdict(float)
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                kernel[event["args"]["op_name"]] += event["dur"] / 1000 / PROFILE_RUNS
        runs = [e["dur"] / 1000 for e in events if e.get("name") == "model_run"]
        in_file = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        loaded = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
        total = sum(kernel.values())
        print(
            f"\n{name} {variant}: median run {np.median(runs):.2f} ms at batch 32; "
            f"{sum(in_file.values())} nodes in the file, {sum(loaded.values())} in the session"
        )
        print(f"  file:    {dict(in_file.most_common())}")
        print(f"  session: {dict(loaded.most_common())}")
        for op, ms in sorted(kernel.items(), key=lambda item: -item[1])[:10]:
            print(f"  {op:>26} {ms:7.2f} ms/run {100 * ms / total:5.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("examples", nargs="*", default=["encoder"])
    parser.add_argument("--variants", default=None)
    parser.add_argument("--bench-seconds", default="20")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    parser.add_argument("--profile", action="store_true", help="profile the variants instead")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="ferry-bench-optimize-"))
    for name in args.examples:
        repo, artifacts = prepare(name, root)
        if args.profile:
            profile(name, root, repo, artifacts)
            continue
        command = [
            sys.executable,
            "-m",
            "ferry",
            "optimize",
            name,
            "--model-repository",
            str(repo),
            "--eval-data",
            str(artifacts / "test.npz"),
            "--calibration-data",
            str(artifacts / "val.npz"),
            "--bench-seconds",
            args.bench_seconds,
            "--report",
            str(root / f"{name}.json"),
        ]
        if args.variants:
            command += ["--variants", args.variants]
        if name in MAX_DROP:
            command += ["--max-drop", MAX_DROP[name]]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - started
        report = json.loads((root / f"{name}.json").read_text())
        reference = report["reference"]
        print(
            f"\n{name}: ferry optimize took {wall:.1f}s (target < 180 s); "
            f"FP32 {report['metric']} {reference['value']:.4f}, "
            f"{reference['throughput']:.1f}/s at batch {reference['throughput_batch']}; "
            f"CPU {report['fingerprint']['cpu']} {report['fingerprint']['cpu_flags']}"
        )
        for row in report["candidates"]:
            if "throughput" in row:
                print(
                    f"  {row['variant']:>14}: {row['throughput'] / reference['throughput']:.2f}x "
                    f"throughput, p95 batch 1 {reference['p95_ms'] / row['p95_ms']:.2f}x, "
                    f"{report['metric']} delta {row['delta']:+.4f}, "
                    f"top-1 agreement {row.get('top1_agreement')}"
                )
            else:
                print(f"  {row['variant']:>14}: {row.get('reason')}")
        print(f"  published: {report['published']}")


if __name__ == "__main__":
    main()
