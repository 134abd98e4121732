"""Python-backend (model.py) models for the tests, written the way Triton users write them, so the
same folders load in ferry and in a real Triton.

Each `write_*` writes REPO/NAME/config.pbtxt and REPO/NAME/1/model.py and returns the model dir.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.onnx_models import mlp_model, write_model

ADD_SUB_PY = '''\
"""OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1. A NaN in INPUT0 answers an INVALID_ARG
error for that request; a value >= 1e6 raises (the whole execute call fails)."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        config = pb_utils.get_output_config_by_name(self.model_config, "OUTPUT0")
        self.output_dtype = pb_utils.triton_string_to_numpy(config["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            if np.isnan(in0).any():
                error = pb_utils.TritonError("INPUT0 must not contain NaN",
                                             pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            if (in0 >= 1e6).any():
                raise ValueError("INPUT0 is too large")
            out0 = pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(self.output_dtype))
            out1 = pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(self.output_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses
'''

# Records how execute() saw each batch: BATCH is the request count of the execute() call that
# answered, PID the instance's process. Sleeps `delay_s` (config parameter) per execute.
BATCH_PROBE_PY = """\
import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.delay_s = float(config["parameters"].get("delay_s", {}).get("string_value", "0"))
        self.instance_name = args["model_instance_name"]

    def execute(self, requests):
        if self.delay_s:
            time.sleep(self.delay_s)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            rows = x.shape[0]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", x.copy()),
                pb_utils.Tensor("BATCH", np.full((rows, 1), len(requests), np.int32)),
                pb_utils.Tensor("PID", np.full((rows, 1), os.getpid(), np.int64)),
            ]))
        return responses

    def finalize(self):
        marker = os.environ.get("FERRY_TEST_FINALIZE_DIR")
        if marker:
            with open(os.path.join(marker, f"{self.instance_name}.{os.getpid()}"), "w") as f:
                f.write("finalized")
"""

# Decoupled: N (INT32 [1]) responses OUT = [i] in order, then the FINAL flag alone; N == 5
# answers an error as its third response and goes on.
REPEAT_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            count = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            sender = request.get_response_sender()
            for index in range(count):
                if count == 5 and index == 2:
                    error = pb_utils.TritonError("response 2 of 5 fails")
                    sender.send(pb_utils.InferenceResponse(error=error))
                    continue
                out = pb_utils.Tensor("OUT", np.array([index], np.int32))
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""

# BLS: asks the model named in the `target` parameter of config.pbtxt for OUTPUT, passing INPUT
# on, in the way the `mode` parameter says: `sync` (exec() in a loop), `async` (execute returns a
# coroutine gathering async_exec() calls, as `async def execute` does) or `threads` (exec() from a
# thread pool while execute waits, as models did before async_exec).
BLS_PY = """\
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.target = params["target"]["string_value"]
        self.target_input = params["target_input"]["string_value"]
        self.target_output = params["target_output"]["string_value"]
        self.mode = params["mode"]["string_value"]
        self.pool = ThreadPoolExecutor(4)

    def call(self, request):
        x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
        return pb_utils.InferenceRequest(
            model_name=self.target, requested_output_names=[self.target_output],
            inputs=[pb_utils.Tensor(self.target_input, x)])

    def respond(self, answer):
        if answer.has_error():
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError("BLS call failed: " + answer.error().message()))
        y = pb_utils.get_output_tensor_by_name(answer, self.target_output).as_numpy()
        return pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", y)])

    def execute(self, requests):
        if self.mode == "async":
            return self.gather(requests)
        if self.mode == "threads":
            return list(self.pool.map(lambda r: self.respond(self.call(r).exec()), requests))
        return [self.respond(self.call(request).exec()) for request in requests]

    async def gather(self, requests):
        answers = await asyncio.gather(*(self.call(r).async_exec() for r in requests))
        return [self.respond(answer) for answer in answers]

    def finalize(self):
        self.pool.shutdown()
"""

# BLS to a decoupled model: N (INT32 [1]) -> the OUT values `repeat` streamed for N, in order,
# and the number of responses the iterator yielded (the flag-only final one included).
BLS_STREAM_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            count = pb_utils.get_input_tensor_by_name(request, "N")
            call = pb_utils.InferenceRequest(
                model_name="repeat", requested_output_names=["OUT"], inputs=[count])
            values, seen = [], 0
            for answer in call.exec(decoupled=True):
                seen += 1
                if answer.has_error():
                    values.append(-1)
                    continue
                out = pb_utils.get_output_tensor_by_name(answer, "OUT")
                if out is not None:
                    values.append(int(out.as_numpy()[0]))
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("VALUES", np.array(values, np.int32)),
                pb_utils.Tensor("RESPONSES", np.array([seen], np.int32)),
            ]))
        return responses
"""

# Runs an ONNX model with onnxruntime inside a Python model: how the real Triton of the tests
# (python backend only) serves the ONNX steps ferry serves natively.
ONNX_IN_PYTHON_PY = """\
import json
from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = Path(__file__).with_name("model.onnx")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name in self.inputs}
            results = self.session.run(self.outputs, feed)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(n, r) for n, r in zip(self.outputs, results)]))
        return responses
"""

# Ensemble steps around a 16 -> 4 classifier: `scale` turns UINT8 pixels into FP32 features;
# `label` turns the 4 scores into the best class (BYTES label) and its probability.
SCALE_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "RAW").as_numpy()
            features = (raw.astype(np.float32) / 255.0 - 0.5) * 4.0
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("FEATURES", features)]))
        return responses
"""

LABEL_PY = """\
import numpy as np
import triton_python_backend_utils as pb_utils

LABELS = np.array([b"cat", b"dog", b"bird", b"fish"], dtype=np.object_)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            scores = pb_utils.get_input_tensor_by_name(request, "SCORES").as_numpy()
            shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=1, keepdims=True)
            best = probabilities.argmax(axis=1)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("LABEL", LABELS[best].reshape(-1, 1)),
                pb_utils.Tensor("PROBABILITY",
                                probabilities.max(axis=1, keepdims=True).astype(np.float32)),
            ]))
        return responses
"""

# What execute() sees of a request: its id, correlation id, flags, parameters, requested outputs
# and input names, as a JSON output SEEN (X passes through as Y).
REQUEST_ECHO_PY = """\
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            seen = {
                "request_id": request.request_id(),
                "correlation_id": request.correlation_id(),
                "flags": request.flags(),
                "parameters": json.loads(request.parameters()),
                "requested": sorted(request.requested_output_names()),
                "inputs": [t.name() for t in request.inputs()],
            }
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            summary = np.array([json.dumps(seen, sort_keys=True).encode()], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SEEN", summary), pb_utils.Tensor("Y", x)]))
        return responses
"""

INIT_RAISES_PY = """\
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("cannot load the weights")

    def execute(self, requests):
        return []
"""

EXECUTE_RAISES_PY = """\
class TritonPythonModel:
    def execute(self, requests):
        raise ValueError("execute failed on purpose")
"""

WRONG_COUNT_PY = """\
class TritonPythonModel:
    def execute(self, requests):
        return []
"""

AUTO_COMPLETE_PY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        auto_complete_model_config.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [3]})
        auto_complete_model_config.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [3]})
        auto_complete_model_config.set_max_batch_size(8)
        auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 3)]) for r in requests]
"""


# INPUT0, INPUT1 (FP32 [4]) -> OUTPUT0, without batching: the config of the failing models
NO_BATCH_CONFIG = """max_batch_size: 0
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] },
       { name: "INPUT1" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }]
"""


def write_python_model(
    repository: Path, name: str, source: str, config: str, version: int = 1
) -> Path:
    """REPO/NAME/config.pbtxt (backend python) and REPO/NAME/<version>/model.py."""
    model_dir = repository / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / str(version) / "model.py").write_text(source)
    (model_dir / "config.pbtxt").write_text('backend: "python"\n' + config)
    return model_dir


def write_add_sub(repository: Path, name: str = "add_sub", extra: str = "") -> Path:
    """INPUT0, INPUT1 (FP32 [4]) -> OUTPUT0 = sum, OUTPUT1 = difference; batches up to 8."""
    return write_python_model(
        repository,
        name,
        ADD_SUB_PY,
        """max_batch_size: 8
input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] },
       { name: "INPUT1" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] },
        { name: "OUTPUT1" data_type: TYPE_FP32 dims: [4] }]
"""
        + extra,
    )


def write_batch_probe(
    repository: Path,
    name: str = "batch_probe",
    max_batch_size: int = 64,
    delay_s: float = 0.0,
    queue_delay_us: int = 20000,
    instances: int = 1,
    width: int = 4,
) -> Path:
    """X (FP32 [width]) -> Y = X, BATCH = requests in the execute() call, PID = instance pid."""
    return write_python_model(
        repository,
        name,
        BATCH_PROBE_PY,
        f"""max_batch_size: {max_batch_size}
input [{{ name: "X" data_type: TYPE_FP32 dims: [{width}] }}]
output [{{ name: "Y" data_type: TYPE_FP32 dims: [{width}] }},
        {{ name: "BATCH" data_type: TYPE_INT32 dims: [1] }},
        {{ name: "PID" data_type: TYPE_INT64 dims: [1] }}]
dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}
instance_group [{{ kind: KIND_CPU count: {instances} }}]
parameters {{ key: "delay_s" value: {{ string_value: "{delay_s}" }} }}
""",
    )


def write_request_echo(repository: Path, name: str = "request_echo") -> Path:
    """X (FP32 [2]) -> Y = X and SEEN (BYTES [1]): the request as execute() saw it, in JSON."""
    return write_python_model(
        repository,
        name,
        REQUEST_ECHO_PY,
        """max_batch_size: 0
input [{ name: "X" data_type: TYPE_FP32 dims: [2] }]
output [{ name: "SEEN" data_type: TYPE_STRING dims: [1] },
        { name: "Y" data_type: TYPE_FP32 dims: [2] }]
""",
    )


def write_repeat(repository: Path, name: str = "repeat") -> Path:
    """Decoupled: N (INT32 [1]) -> N responses OUT (INT32 [1]) = 0..N-1, then FINAL."""
    return write_python_model(
        repository,
        name,
        REPEAT_PY,
        """max_batch_size: 0
input [{ name: "N" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_INT32 dims: [1] }]
model_transaction_policy { decoupled: true }
""",
    )


def write_bls_stream(repository: Path, name: str = "bls_stream") -> Path:
    """N -> the values `repeat` streams for N (BLS exec(decoupled=True))."""
    return write_python_model(
        repository,
        name,
        BLS_STREAM_PY,
        """max_batch_size: 0
input [{ name: "N" data_type: TYPE_INT32 dims: [1] }]
output [{ name: "VALUES" data_type: TYPE_INT32 dims: [-1] },
        { name: "RESPONSES" data_type: TYPE_INT32 dims: [1] }]
""",
    )


def write_bls(
    repository: Path,
    name: str,
    target: str,
    target_input: str,
    target_output: str,
    dims: str = "[-1, 16]",
    output_dims: str = "[-1, 4]",
    mode: str = "sync",
) -> Path:
    """INPUT -> the `target` model's `target_output` for INPUT given as `target_input` (BLS;
    `mode`: sync, async or threads)."""
    return write_python_model(
        repository,
        name,
        BLS_PY,
        f"""max_batch_size: 0
input [{{ name: "INPUT" data_type: TYPE_FP32 dims: {dims} }}]
output [{{ name: "OUTPUT" data_type: TYPE_FP32 dims: {output_dims} }}]
parameters {{ key: "target" value: {{ string_value: "{target}" }} }}
parameters {{ key: "target_input" value: {{ string_value: "{target_input}" }} }}
parameters {{ key: "target_output" value: {{ string_value: "{target_output}" }} }}
parameters {{ key: "mode" value: {{ string_value: "{mode}" }} }}
""",
    )


CLASSIFIER_CONFIG = """max_batch_size: 8
input [{ name: "input" data_type: TYPE_FP32 dims: [16] }]
output [{ name: "output" data_type: TYPE_FP32 dims: [4] }]
"""


def write_classifier_step(repository: Path, name: str = "mlp", python: bool = False) -> Path:
    """The 16 -> 4 MLP: an ONNX model (ferry) or the same model.onnx run by onnxruntime inside
    a Python model (`python=True`: how the tests' Triton, which has only the python backend,
    serves it)."""
    if not python:
        return write_model(
            repository, name, mlp_model(), 'platform: "onnxruntime_onnx"\n' + CLASSIFIER_CONFIG
        )
    model_dir = write_python_model(repository, name, ONNX_IN_PYTHON_PY, CLASSIFIER_CONFIG)
    write_model(repository, name, mlp_model())
    return model_dir


def write_classify_pipeline(repository: Path, name: str = "classify") -> None:
    """`scale` (Python) -> the MLP -> `label` (Python) as the ensemble `name`: RAW UINT8 [16] in,
    LABEL (BYTES [1]) and PROBABILITY (FP32 [1]) out. The MLP itself is written separately."""
    write_python_model(
        repository,
        "scale",
        SCALE_PY,
        """max_batch_size: 8
input [{ name: "RAW" data_type: TYPE_UINT8 dims: [16] }]
output [{ name: "FEATURES" data_type: TYPE_FP32 dims: [16] }]
""",
    )
    write_python_model(
        repository,
        "label",
        LABEL_PY,
        """max_batch_size: 8
input [{ name: "SCORES" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "LABEL" data_type: TYPE_STRING dims: [1] },
        { name: "PROBABILITY" data_type: TYPE_FP32 dims: [1] }]
""",
    )
    write_ensemble(
        repository,
        name,
        """max_batch_size: 8
input [{ name: "RAW" data_type: TYPE_UINT8 dims: [16] }]
output [{ name: "LABEL" data_type: TYPE_STRING dims: [1] },
        { name: "PROBABILITY" data_type: TYPE_FP32 dims: [1] }]
ensemble_scheduling { step [
  { model_name: "scale" model_version: -1
    input_map { key: "RAW" value: "RAW" } output_map { key: "FEATURES" value: "features" } },
  { model_name: "mlp" model_version: -1
    input_map { key: "input" value: "features" } output_map { key: "output" value: "scores" } },
  { model_name: "label" model_version: -1
    input_map { key: "SCORES" value: "scores" }
    output_map { key: "LABEL" value: "LABEL" }
    output_map { key: "PROBABILITY" value: "PROBABILITY" } }
] }
""",
    )


def write_ensemble(repository: Path, name: str, config: str) -> Path:
    """An ensemble folder: config.pbtxt (platform ensemble) and an empty version folder."""
    model_dir = repository / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text('platform: "ensemble"\n' + config)
    return model_dir


def stream_repeat(
    grpc_url: str, count: int, empty_final: bool, quiet_s: float = 1.0
) -> list[tuple[Any, ...]]:
    """Every message of one gRPC ModelStreamInfer request to `repeat` (N = count), in order:
    ('ok', OUT value or None, triton_final_response) or ('error', message). Collection ends at a
    final response, or after `quiet_s` without a message (Triton sends no final flag unless the
    request enables the empty final response)."""
    import tritonclient.grpc as grpcclient

    received: queue.Queue[tuple[Any, ...]] = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)

    def callback(result: Any, error: Any) -> None:
        if error is not None:
            received.put(("error", error.message()))
            return
        final = result.get_response().parameters["triton_final_response"].bool_param
        out = result.as_numpy("OUT")
        received.put(("ok", None if out is None else int(out[0]), final))

    client.start_stream(callback=callback)
    tensor = grpcclient.InferInput("N", [1], "INT32")
    tensor.set_data_from_numpy(np.array([count], np.int32))
    client.async_stream_infer(
        "repeat", [tensor], request_id=f"n{count}", enable_empty_final_response=empty_final
    )
    items: list[tuple[Any, ...]] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                item = received.get(timeout=quiet_s)
            except queue.Empty:
                break
            items.append(item)
            if item[0] == "ok" and item[2]:
                break
    finally:
        client.stop_stream()
    return items


@contextlib.contextmanager
def killed_under_load(
    pid: int, load: Callable[[threading.Event], None], threads: int, after_s: float
) -> Iterator[None]:
    """Run `load(stop)` on `threads` threads, SIGKILL `pid` after `after_s`, and on leaving
    the block stop the threads and wait for them."""
    stop = threading.Event()
    running = [threading.Thread(target=load, args=(stop,)) for _ in range(threads)]
    for thread in running:
        thread.start()
    try:
        time.sleep(after_s)
        os.kill(pid, signal.SIGKILL)
        yield
    finally:
        stop.set()
        for thread in running:
            thread.join()
