"""How config.pbtxt maps to ONNX Runtime session options and execution providers."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from server.errors import ServingError
from server.model import instance_count
from server.repository_format import parse_config
from server.runtimes import RuntimeContext
from server.runtimes.onnxruntime import OnnxRuntime, execution_providers, session_options
from tests.support.onnx_models import mlp_model, write_model


def test_cpu_by_default() -> None:
    assert execution_providers(parse_config("")) == ["CPUExecutionProvider"]


def test_kind_gpu_uses_cuda_on_the_configured_device() -> None:
    config = parse_config("instance_group [{ kind: KIND_GPU count: 2 gpus: [1] }]")
    assert execution_providers(config, 1) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert instance_count(config) == 2


def test_tensorrt_accelerator_in_triton_form() -> None:
    config = parse_config("""
        instance_group [{ kind: KIND_GPU }]
        optimization { execution_accelerators { gpu_execution_accelerator [{
          name: "tensorrt"
          parameters { key: "precision_mode" value: "FP16" }
          parameters { key: "max_workspace_size_bytes" value: "1073741824" }
          parameters { key: "trt_engine_cache_path" value: "/tmp/trt-cache" } }] } }""")
    providers = execution_providers(config)
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider"
    assert options["trt_fp16_enable"] is True and options["trt_int8_enable"] is False
    assert options["trt_max_workspace_size"] == 1073741824
    assert options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == "/tmp/trt-cache"
    assert providers[1][0] == "CUDAExecutionProvider" and providers[-1] == "CPUExecutionProvider"


def test_unknown_accelerator_is_refused() -> None:
    config = parse_config(
        "optimization { execution_accelerators { gpu_execution_accelerator "
        '[{ name: "openvino" }] } }'
    )
    with pytest.raises(ServingError, match="openvino"):
        execution_providers(config)


def test_session_options_follow_triton_parameters() -> None:
    config = parse_config("""
        optimization { graph { level: 1 } }
        parameters { key: "intra_op_thread_count" value: { string_value: "3" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "2" } }
        parameters { key: "execution_mode" value: { string_value: "1" } }
        parameters { key: "enable_mem_arena" value: { string_value: "false" } }""")
    options = session_options(config)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 2
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.enable_cpu_mem_arena is False
    basic = session_options(parse_config("optimization { graph { level: -1 } }"))
    assert basic.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert (
        session_options(parse_config("")).graph_optimization_level
        == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )


def test_instance_counts_like_triton() -> None:
    assert instance_count(parse_config("")) == 1
    assert instance_count(parse_config("instance_group [{ kind: KIND_CPU }]")) == 2
    assert (
        instance_count(
            parse_config(
                "instance_group [{ kind: KIND_CPU count: 3 }, { kind: KIND_CPU count: 1 }]"
            )
        )
        == 4
    )


def test_a_workers_share_of_threads_applies_only_where_the_config_names_none() -> None:
    assert session_options(parse_config(""), 1).intra_op_num_threads == 1
    assert session_options(parse_config("")).intra_op_num_threads == 0  # ORT's own default
    named = parse_config('parameters { key: "intra_op_thread_count" value: { string_value: "3" } }')
    assert session_options(named, 1).intra_op_num_threads == 3


def test_an_instance_takes_the_thread_share_of_its_context(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "mlp", mlp_model())
    runtime = OnnxRuntime(parse_config(""), model_dir / "1", 0, RuntimeContext(cpu_threads=1))
    try:
        assert runtime._session.get_session_options().intra_op_num_threads == 1
    finally:
        runtime.close()
