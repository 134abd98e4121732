"""ferry's triton_python_backend_utils: the API model.py files use, with Triton's behaviour."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.runtimes.python import triton_python_backend_utils as pb_utils


def test_tensors_hold_numpy_arrays_and_bytes_as_object_arrays() -> None:
    tensor = pb_utils.Tensor("x", np.ones((2, 3), np.float32))
    assert tensor.name() == "x" and tensor.is_cpu() and tensor.shape() == [2, 3]
    assert tensor.triton_dtype() == 11  # TYPE_FP32
    text = pb_utils.Tensor("t", np.array(["ab", "c"]))  # numpy unicode becomes bytes objects
    assert text.as_numpy().dtype == np.object_ and text.as_numpy().tolist() == [b"ab", b"c"]
    mixed = pb_utils.Tensor("m", np.array([b"x", 2, "y"], dtype=np.object_))
    assert mixed.as_numpy().tolist() == [b"x", b"2", b"y"]  # as Triton serializes them
    with pytest.raises(TypeError):
        pb_utils.Tensor("x", [1, 2])  # type: ignore[arg-type]
    back = pb_utils.Tensor.from_dlpack("y", tensor)
    np.testing.assert_array_equal(back.as_numpy(), tensor.as_numpy())


def test_errors_and_responses() -> None:
    error = pb_utils.TritonError("boom")
    assert error.code() == pb_utils.TritonError.INTERNAL and error.message() == "boom"
    assert pb_utils.TritonError("x", pb_utils.TritonError.INVALID_ARG).code() == 3
    response = pb_utils.InferenceResponse(error=error)
    assert response.has_error() and response.output_tensors() == []
    ok = pb_utils.InferenceResponse([pb_utils.Tensor("y", np.zeros(1))], parameters={"k": 1})
    assert not ok.has_error() and json.loads(ok.parameters()) == {"k": 1}
    assert pb_utils.get_output_tensor_by_name(ok, "y") is not None
    assert pb_utils.get_output_tensor_by_name(ok, "z") is None
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceResponse([], parameters={"k": 1.5})  # bool, int or str only


def test_requests_and_the_helpers_model_files_use() -> None:
    request = pb_utils.InferenceRequest(
        request_id="r",
        correlation_id="seq-1",
        inputs=[pb_utils.Tensor("a", np.ones(2))],
        requested_output_names=["b"],
        model_name="m",
        parameters={"p": True},
    )
    assert request.request_id() == "r" and request.correlation_id() == "seq-1"
    assert pb_utils.get_input_tensor_by_name(request, "a") is not None
    assert pb_utils.get_input_tensor_by_name(request, "nope") is None
    assert json.loads(request.parameters()) == {"p": True}
    with pytest.raises(pb_utils.TritonModelException, match="inside a model served by ferry"):
        request.exec()  # BLS needs the server
    config = {"input": [{"name": "a", "data_type": "TYPE_FP32"}], "output": []}
    assert pb_utils.get_input_config_by_name(config, "a") == config["input"][0]
    assert pb_utils.get_output_config_by_name(config, "a") is None
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    assert pb_utils.triton_to_numpy_type(13) is np.object_
    assert pb_utils.numpy_to_triton_type(np.int64) == 9
    assert not pb_utils.using_decoupled_model_transaction_policy(config)
    strings = np.array([b"x", b"yz"], dtype=np.object_)
    wire = pb_utils.serialize_byte_tensor(strings)
    assert wire == b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"
    assert pb_utils.deserialize_bytes_tensor(wire).tolist() == [b"x", b"yz"]


def test_a_response_sender_closes_after_the_final_flag() -> None:
    sent: list[tuple[object, int]] = []
    sender = pb_utils.InferenceResponseSender((0, 0), lambda key, r, f: sent.append((r, f)))
    sender.send(pb_utils.InferenceResponse([]))
    with pytest.raises(pb_utils.TritonModelException, match="must be provided"):
        sender.send()  # no response and no FINAL flag
    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    with pytest.raises(pb_utils.TritonModelException, match="has been closed"):
        sender.send(pb_utils.InferenceResponse([]))
    assert [flags for _, flags in sent] == [0, 1]


def test_auto_complete_model_config() -> None:
    config = pb_utils.ModelConfig(json.dumps({"name": "m", "max_batch_size": 0, "input": []}))
    config.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [3]})
    config.add_input({"name": "X", "data_type": "TYPE_FP32", "dims": [3]})  # same: no change
    config.add_output({"name": "Y", "data_type": "TYPE_FP32", "dims": [3]})
    config.set_max_batch_size(4)
    config.set_dynamic_batching()
    config.set_model_transaction_policy({"decoupled": True})
    assert config.as_dict()["input"] == [{"name": "X", "data_type": "TYPE_FP32", "dims": [3]}]
    assert config.as_dict()["max_batch_size"] == 4
    assert config.as_dict()["model_transaction_policy"] == {"decoupled": True}
    with pytest.raises(ValueError, match="expects datatype TYPE_FP32"):
        config.add_input({"name": "X", "data_type": "TYPE_INT32", "dims": [3]})
    with pytest.raises(ValueError, match="missing 'dims' property"):
        config.add_output({"name": "Z", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="specified max_batch_size 4"):
        config.set_max_batch_size(2)


def test_custom_metrics_say_they_are_not_supported() -> None:
    with pytest.raises(pb_utils.TritonModelException, match="not supported by ferry"):
        pb_utils.MetricFamily("m", "d", pb_utils.MetricFamily.COUNTER)
