"""The real NVIDIA Triton serving the sequence benchmark's GRU step through its sequence batcher.

The `tritonserver` of the nvidia-pytriton wheel has only the Python backend, and the Python
backend has no implicit state (`sequence_batching { state [...] }` is for backends that read and
write state buffers: ONNX Runtime, TensorRT...). So the model here is a Python-backend `model.py`
that runs the same `model.onnx` with onnxruntime (same session options as ferry's config) on the
whole batch the sequence batcher forms, and keeps each live sequence's hidden state itself, in a
dict keyed by the correlation id that Triton feeds through the CONTROL_SEQUENCE_CORRID control
input: a START row begins from zeros, an END row drops the state, a row with READY false (a
direct-strategy slot without a request) is ignored. Same `max_batch_size`, strategy (`direct`
with the same fields) and idle time as ferry's config, one instance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

GRU_SEQUENCE_MODEL_PY = '''\
"""The GRU step of model.onnx (beside this file) with each sequence's state kept here, keyed by
the correlation id: the Python backend has no implicit state."""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()  # as ferry's: ORT defaults unless the config says
        if "intra_op_thread_count" in parameters:
            options.intra_op_num_threads = int(parameters["intra_op_thread_count"])
        if "inter_op_thread_count" in parameters:
            options.inter_op_num_threads = int(parameters["inter_op_thread_count"])
        for key, value in parameters.items():
            if key.startswith("session."):
                options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(
            str(Path(__file__).with_name("model.onnx")), options,
            providers=["CPUExecutionProvider"])
        state_in = {i.name: i for i in self.session.get_inputs()}["STATE_IN"]
        hidden = state_in.shape[1]  # [batch, hidden]
        self.zeros = np.zeros(hidden, np.float32)
        self.states = {}  # correlation id -> hidden state [hidden] of a live sequence

    def execute(self, requests):
        get = pb_utils.get_input_tensor_by_name
        inputs, starts, ends, readies, corrids = [], [], [], [], []
        for request in requests:
            inputs.append(get(request, "INPUT").as_numpy())
            starts.append(get(request, "START").as_numpy())
            ends.append(get(request, "END").as_numpy())
            readies.append(get(request, "READY").as_numpy())
            corrids.append(get(request, "CORRID").as_numpy())
        rows = [len(x) for x in inputs]
        x = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        start = np.concatenate(starts).reshape(-1).tolist()
        end = np.concatenate(ends).reshape(-1).tolist()
        ready = np.concatenate(readies).reshape(-1).tolist()
        corrid = np.concatenate(corrids).reshape(-1).tolist()
        states = self.states
        zeros = self.zeros
        state_in = np.stack([
            zeros if s or not r else states.get(c, zeros)
            for s, r, c in zip(start, ready, corrid)])
        output, state_out = self.session.run(
            ["OUTPUT", "STATE_OUT"], {"INPUT": x, "STATE_IN": state_in})
        for row, (e, r, c) in enumerate(zip(end, ready, corrid)):
            if not r:
                continue
            if e:
                states.pop(c, None)
            else:
                states[c] = state_out[row]
        responses, offset = [], 0
        for n in rows:
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT", output[offset:offset + n])]))
            offset += n
        return responses
'''


def _controls() -> str:
    flag = "int32_false_true: [0, 1]"
    return f"""  control_input [
    {{ name: "START" control [{{ kind: CONTROL_SEQUENCE_START {flag} }}] }},
    {{ name: "END" control [{{ kind: CONTROL_SEQUENCE_END {flag} }}] }},
    {{ name: "READY" control [{{ kind: CONTROL_SEQUENCE_READY {flag} }}] }},
    {{ name: "CORRID" control [{{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }}] }}
  ]"""


def write_repository(
    target: Path,
    onnx_path: Path,
    *,
    max_batch_size: int,
    input_size: int,
    output_size: int,
    parameters: dict[str, str],
    direct: str,
    idle_us: int,
) -> Path:
    """TARGET/gru: config.pbtxt and 1/{model.py, model.onnx} (TARGET is replaced)."""
    shutil.rmtree(target, ignore_errors=True)
    model_dir = target / "gru"
    (model_dir / "1").mkdir(parents=True)
    shutil.copyfile(onnx_path, model_dir / "1" / "model.onnx")
    (model_dir / "1" / "model.py").write_text(GRU_SEQUENCE_MODEL_PY)
    lines = [
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
        for k, v in parameters.items()
    ]
    (model_dir / "config.pbtxt").write_text(
        f"""backend: "python"
max_batch_size: {max_batch_size}
input [{{ name: "INPUT" data_type: TYPE_FP32 dims: [{input_size}] }}]
output [{{ name: "OUTPUT" data_type: TYPE_FP32 dims: [{output_size}] }}]
instance_group [{{ kind: KIND_CPU count: 1 }}]
{chr(10).join(lines)}
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  direct {{ {direct} }}
{_controls()}
}}
"""
    )
    return target
