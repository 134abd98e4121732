"""The baseline ferry must beat: a hand-written FastAPI + ONNX Runtime endpoint, no batching.

Run: FERRY_BASELINE_MODEL=path/model.onnx uvicorn bench.fastapi_baseline:app
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

session = ort.InferenceSession(
    os.environ.get("FERRY_BASELINE_MODEL", "model.onnx"), providers=["CPUExecutionProvider"]
)
input_name = session.get_inputs()[0].name
app = FastAPI()


class Request(BaseModel):
    inputs: list[list[float]]


@app.post("/predict")
def predict(request: Request) -> dict[str, list[list[float]]]:
    outputs = session.run(None, {input_name: np.asarray(request.inputs, dtype=np.float32)})
    return {"outputs": outputs[0].tolist()}
