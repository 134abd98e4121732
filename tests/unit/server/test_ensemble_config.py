"""Ensemble configs are checked at load: maps that do not connect the inputs to every output
(an unknown tensor, a cycle), a tensor written twice, no steps; each with Triton's reason."""

from __future__ import annotations

import pytest

from server.ensemble import composing_models, ensemble_steps, validate_ensemble
from server.repository_format import ModelConfigError, parse_config

HEAD = """name: "e" platform: "ensemble" max_batch_size: 8
input [{ name: "X" data_type: TYPE_FP32 dims: [4] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [4] }]
"""


def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = "".join(f'input_map {{ key: "{k}" value: "{v}" }} ' for k, v in inputs.items())
    maps += "".join(f'output_map {{ key: "{k}" value: "{v}" }} ' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: -1 {maps}}}'


def ensemble(*steps: str) -> object:
    return parse_config(HEAD + f"ensemble_scheduling {{ step [{', '.join(steps)}] }}")


def test_a_chain_is_valid_and_lists_its_composing_models() -> None:
    config = ensemble(
        step("pre", {"IN": "X"}, {"OUT": "t"}), step("net", {"IN": "t"}, {"OUT": "Y"})
    )
    validate_ensemble(config)
    assert composing_models(config) == ["pre", "net"]
    assert ensemble_steps(config)[1].input_map == {"IN": "t"}
    assert ensemble_steps(config)[1].model_version == ""


def test_an_unknown_tensor_in_a_map_is_refused_with_the_reason() -> None:
    config = ensemble(step("net", {"A": "X", "B": "NOPE"}, {"OUT": "Y"}))
    with pytest.raises(ModelConfigError) as caught:
        validate_ensemble(config)
    assert str(caught.value) == (
        "output 'Y' for ensemble 'e' is not written: at least one of its depending tensors, "
        "'NOPE', is not connected"
    )


def test_a_cycle_is_refused_with_the_reason() -> None:
    config = ensemble(
        step("a", {"A": "X", "B": "T2"}, {"OUT": "T1"}),
        step("b", {"A": "T1", "B": "X"}, {"OUT": "T2", "OTHER": "Y"}),
    )
    with pytest.raises(ModelConfigError, match="depending tensors, 'T2', is not connected"):
        validate_ensemble(config)


def test_a_tensor_written_twice_and_an_empty_ensemble_are_refused() -> None:
    twice = ensemble(step("a", {"A": "X"}, {"OUT": "Y"}), step("b", {"A": "X"}, {"OUT": "Y"}))
    with pytest.raises(ModelConfigError, match="can appear in an output map only once"):
        validate_ensemble(twice)
    with pytest.raises(ModelConfigError, match="one or more 'step'"):
        validate_ensemble(parse_config(HEAD))
