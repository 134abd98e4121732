"""`ferry optimize` on the trained examples: train, `ferry export`, optimize, print ratios vs FP32.

    python -m bench.optimize_examples [encoder digits hf_bert ...] [--variants ...] [--keep DIR]

`hf_bert` is a Hugging Face BertForSequenceClassification sized like the encoder (4 layers,
hidden 256, 4 heads, feed-forward 1024, seq 64; tiny vocabulary, random weights, built from a
config: no download), labelled by its own FP32 predictions on padded random token batches, so
its metric is agreement with FP32; random weights give small logit margins, so its gate is
--max-drop 0.05 (the agreement is printed).

Every ratio is measured in the same run against the FP32 version (interleaved benchmark), and
the wall time of the whole `ferry optimize` command is printed for the < 3 minute target.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("examples", nargs="*", default=["encoder"])
    parser.add_argument("--variants", default=None)
    parser.add_argument("--bench-seconds", default="20")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="ferry-bench-optimize-"))
    for name in args.examples:
        repo, artifacts = prepare(name, root)
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
