"""End-to-end pipelines around the exported example models: Python steps (model.py files in this
folder, Triton's python backend) and the ensembles that chain them with the tensor model, so
requests go from raw input to a useful answer:

    encoder_text             TEXT (BYTES)          -> LABEL (colour named most), PROBABILITY
    digits_image             PIXELS (UINT8 8x8)    -> DIGIT (INT32), PROBABILITY
    breast_cancer_diagnosis  FEATURES (FP32 30)    -> LABEL (malignant | benign), P_MALIGNANT

`write_pipelines(REPO)` writes each step (REPO/STEP/config.pbtxt + 1/model.py) and ensemble
(REPO/NAME/config.pbtxt + empty 1/) next to the exported model; the tensor model stays as
exported, so drift monitoring keeps watching it inside the ensemble. This is also the recipe for
your own model: copy a step, adapt its config, and point an ensemble at your exported model.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Step:
    """A Python step: its model.py source in this folder and its config.pbtxt body."""

    name: str
    source: str
    config: str
    files: tuple[tuple[str, str], ...] = ()  # (file name in 1/, text) written beside model.py


def _tensor(name: str, data_type: str, dims: str) -> str:
    return f'{{ name: "{name}" data_type: {data_type} dims: {dims} }}'


def _step_config(inputs: list[str], outputs: list[str], extra: str = "") -> str:
    return (
        'backend: "python"\nmax_batch_size: 64\n'
        f"input [{', '.join(inputs)}]\noutput [{', '.join(outputs)}]\n"
        "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
        "instance_group [{ kind: KIND_CPU count: 1 }]\n" + extra
    )


def _ensemble_config(inputs: list[str], outputs: list[str], steps: list[str]) -> str:
    joined = ",\n  ".join(steps)
    return (
        'platform: "ensemble"\nmax_batch_size: 64\n'
        f"input [{', '.join(inputs)}]\noutput [{', '.join(outputs)}]\n"
        f"ensemble_scheduling {{ step [\n  {joined}\n] }}\n"
    )


def _map(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += " " + " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1 {maps} }}'


def pipelines() -> dict[str, tuple[str, list[Step], str]]:
    """Ensemble name -> (the exported model it wraps, its Python steps, its config)."""
    from examples import breast_cancer, digits, encoder

    label_parameter = 'parameters {{ key: "labels" value: {{ string_value: "{}" }} }}\n'
    return {
        "encoder_text": (
            "encoder",
            [
                Step(
                    "encoder_tokenize",
                    "encoder_tokenize.py",
                    _step_config(
                        [_tensor("TEXT", "TYPE_STRING", "[1]")],
                        [_tensor("TOKENS", "TYPE_INT64", f"[{encoder.SEQ_LEN}]")],
                    ),
                    (("vocab.txt", "\n".join(encoder.VOCABULARY) + "\n"),),
                ),
                Step(
                    "encoder_label",
                    "argmax_label.py",
                    _step_config(
                        [_tensor("PROBABILITIES", "TYPE_FP32", f"[{encoder.CLASSES}]")],
                        [
                            _tensor("LABEL", "TYPE_STRING", "[1]"),
                            _tensor("PROBABILITY", "TYPE_FP32", "[1]"),
                        ],
                        label_parameter.format(",".join(encoder.CLASS_NAMES)),
                    ),
                ),
            ],
            _ensemble_config(
                [_tensor("TEXT", "TYPE_STRING", "[1]")],
                [
                    _tensor("LABEL", "TYPE_STRING", "[1]"),
                    _tensor("PROBABILITY", "TYPE_FP32", "[1]"),
                ],
                [
                    _map("encoder_tokenize", {"TEXT": "TEXT"}, {"TOKENS": "tokens"}),
                    _map("encoder", {encoder.INPUT: "tokens"}, {encoder.OUTPUT: "probabilities"}),
                    _map(
                        "encoder_label",
                        {"PROBABILITIES": "probabilities"},
                        {"LABEL": "LABEL", "PROBABILITY": "PROBABILITY"},
                    ),
                ],
            ),
        ),
        "digits_image": (
            "digits",
            [
                Step(
                    "digits_preprocess",
                    "digits_preprocess.py",
                    _step_config(
                        [_tensor("PIXELS", "TYPE_UINT8", "[8, 8]")],
                        [_tensor("IMAGE", "TYPE_FP32", "[1, 8, 8]")],
                    ),
                ),
                Step(
                    "digits_postprocess",
                    "digits_postprocess.py",
                    _step_config(
                        [_tensor("PROBABILITIES", "TYPE_FP32", "[10]")],
                        [
                            _tensor("DIGIT", "TYPE_INT32", "[1]"),
                            _tensor("PROBABILITY", "TYPE_FP32", "[1]"),
                        ],
                    ),
                ),
            ],
            _ensemble_config(
                [_tensor("PIXELS", "TYPE_UINT8", "[8, 8]")],
                [_tensor("DIGIT", "TYPE_INT32", "[1]"), _tensor("PROBABILITY", "TYPE_FP32", "[1]")],
                [
                    _map("digits_preprocess", {"PIXELS": "PIXELS"}, {"IMAGE": "image"}),
                    _map("digits", {digits.INPUT: "image"}, {digits.OUTPUT: "probabilities"}),
                    _map(
                        "digits_postprocess",
                        {"PROBABILITIES": "probabilities"},
                        {"DIGIT": "DIGIT", "PROBABILITY": "PROBABILITY"},
                    ),
                ],
            ),
        ),
        "breast_cancer_diagnosis": (
            "breast_cancer",
            [
                Step(
                    "breast_cancer_label",
                    "breast_cancer_label.py",
                    _step_config(
                        [_tensor("PROBABILITIES", "TYPE_FP32", "[2]")],
                        [
                            _tensor("LABEL", "TYPE_STRING", "[1]"),
                            _tensor("P_MALIGNANT", "TYPE_FP32", "[1]"),
                        ],
                        'parameters { key: "threshold" value: { string_value: "0.5" } }\n',
                    ),
                ),
            ],
            _ensemble_config(
                [_tensor("FEATURES", "TYPE_FP32", "[30]")],
                [
                    _tensor("LABEL", "TYPE_STRING", "[1]"),
                    _tensor("P_MALIGNANT", "TYPE_FP32", "[1]"),
                ],
                [
                    _map(
                        "breast_cancer",
                        {breast_cancer.INPUT: "FEATURES"},
                        {breast_cancer.OUTPUT: "probabilities"},
                    ),
                    _map(
                        "breast_cancer_label",
                        {"PROBABILITIES": "probabilities"},
                        {"LABEL": "LABEL", "P_MALIGNANT": "P_MALIGNANT"},
                    ),
                ],
            ),
        ),
    }


def write_pipelines(repository: Path, names: list[str] | None = None) -> list[str]:
    """Write the steps and ensembles of the pipelines whose exported model is in `repository`
    (skipping any folder already there); returns the ensembles written."""
    written = []
    for name, (model, steps, config) in pipelines().items():
        if names is not None and model not in names:
            continue
        if not (repository / model).is_dir() or (repository / name).exists():
            continue
        for step in steps:
            step_dir = repository / step.name
            if step_dir.exists():
                continue
            (step_dir / "1").mkdir(parents=True)
            shutil.copyfile(HERE / step.source, step_dir / "1" / "model.py")
            for file_name, text in step.files:
                (step_dir / "1" / file_name).write_text(text)
            (step_dir / "config.pbtxt").write_text(step.config)
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(config)
        written.append(name)
    return written
