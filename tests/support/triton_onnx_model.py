"""An ONNX model served by the real Triton of the nvidia-pytriton wheel.

That Triton has only the Python backend, so the model is a `model.py` that runs the `.onnx` file
with onnxruntime (installed into `.venv-triton` by `make triton-server`): each call to `execute`
gets the whole dynamic batch, concatenates it, runs one session call and splits the outputs back.
This is how Triton users without the ONNX Runtime backend serve ONNX, and how the benchmarks
compare ferry with a real Triton on the same model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ONNX_MODEL_PY = '''\
"""Runs model.onnx (beside this file) with onnxruntime on the whole dynamic batch at once."""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "1"))
        self.session = ort.InferenceSession(
            str(Path(__file__).with_name("model.onnx")), options,
            providers=["CPUExecutionProvider"])
        self.inputs = [spec["name"] for spec in config["input"]]
        self.outputs = [spec["name"] for spec in config["output"]]

    def execute(self, requests):
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                  for name in self.inputs} for request in requests]
        if len(feeds) == 1:
            batch = feeds[0]
        else:
            batch = {name: np.concatenate([feed[name] for feed in feeds]) for name in self.inputs}
        results = self.session.run(self.outputs, batch)
        responses, offset = [], 0
        for feed in feeds:
            rows = len(feed[self.inputs[0]])
            tensors = [pb_utils.Tensor(name, result[offset:offset + rows])
                       for name, result in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(tensors))
            offset += rows
        return responses
'''


def write_triton_onnx_model(repository: Path, name: str, onnx_path: Path, config: str) -> Path:
    """REPO/NAME with config.pbtxt (`config` plus `backend: "python"`) and 1/model.{py,onnx}.

    `config` must list the inputs and outputs (the Python backend cannot read them from the
    ONNX file).
    """
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True)
    shutil.copyfile(onnx_path, model_dir / "1" / "model.onnx")
    (model_dir / "1" / "model.py").write_text(ONNX_MODEL_PY)
    (model_dir / "config.pbtxt").write_text(f'backend: "python"\n{config}')
    return model_dir
