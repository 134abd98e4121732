"""Inputs bound by name, outputs kept by key, value ranges from embeddings, size plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporters.binding import (
    ModelCall,
    bind_inputs,
    check_forward_kwargs,
    forward_signature,
)
from exporters.errors import ExportError
from exporters.inputs import MASK_RANGE, InputBatches, padding_mask, plan_sizes
from exporters.outputs import select_outputs
from exporters.sources import LoadedModel
from exporters.specs import IOSpec
from exporters.value_ranges import probe_arrays, probe_value_ranges
from tests.support import torch_models as tm


def loaded(module: torch.nn.Module) -> LoadedModel:
    return LoadedModel(module.eval(), "module", "test")


def test_keyword_parameters_bind_by_name_in_forward_order() -> None:
    signature = forward_signature(loaded(tm.KeywordModel()))
    assert signature is not None
    assert signature.names == ("x", "scale", "offset", "double") and signature.var_keyword
    specs = [IOSpec("offset", "FP32", (2,)), IOSpec("x", "FP32", (4,))]
    assert [s.name for s in bind_inputs(specs, signature)] == ["x", "offset"]


def test_a_name_forward_does_not_take_is_refused_with_the_names_it_does() -> None:
    signature = forward_signature(loaded(tm.KeywordModel()))
    # **kwargs would swallow it: only the named parameters count
    with pytest.raises(ExportError, match="inputs bind by name to: x, scale, offset, double"):
        bind_inputs([IOSpec("x", "FP32", (4,)), IOSpec("mask", "INT64", (4,))], signature)
    with pytest.raises(ExportError, match="needs input 'x'"):
        bind_inputs([IOSpec("scale", "FP32", (2,))], signature)


def test_forward_kwargs_are_checked() -> None:
    signature = forward_signature(loaded(tm.KeywordModel()))
    inputs = [IOSpec("x", "FP32", (4,))]
    check_forward_kwargs({"double": True, "output_attentions": False}, signature, inputs)
    with pytest.raises(ExportError, match="also an --input"):
        check_forward_kwargs({"x": 1}, signature, inputs)
    strict = forward_signature(loaded(tm.TinyMLP()))
    with pytest.raises(ExportError, match="'double' is not a parameter"):
        check_forward_kwargs({"double": True}, strict, inputs)


def test_keyword_call_leaves_the_rest_to_defaults() -> None:
    model = tm.KeywordModel().eval()
    call = ModelCall(model, ("x", "offset"), True, {"double": True})
    x, offset = torch.randn(2, 4), torch.randn(2, 2)
    torch.testing.assert_close(call(x, offset)["y"], (model.proj(x) + offset) * 2)
    binding = call.binding(forward_signature(loaded(model)))
    assert binding["left_to_defaults"] == ["scale"]
    assert binding["forward_kwargs"] == {"double": True}


def test_dict_outputs_keep_tensor_keys_and_note_the_rest() -> None:
    result = tm.KeywordModel().eval()(torch.randn(2, 4))
    selection = select_outputs(result, [])
    assert selection.names == ("y", "x_sum")
    assert selection.notes == ("not exported (not tensors): aux (None), n (int)",)
    assert not selection.complete
    only = select_outputs(result, ["x_sum"])
    assert only.names == ("x_sum",) and only.pick(result)[0] is result["x_sum"]
    with pytest.raises(ExportError, match="no key 'logits' \\(its tensor keys: y, x_sum\\)"):
        select_outputs(result, ["logits"])
    with pytest.raises(ExportError, match="'aux' is a None, not a tensor"):
        select_outputs(result, ["aux"])


def test_tuple_outputs_drop_non_tensors_and_name_by_position() -> None:
    result = (torch.zeros(2, 1), None, [torch.ones(2, 3)])
    selection = select_outputs(result, [])
    assert selection.names == ("output_0", "output_1")
    assert selection.paths == ((0,), (2, 0))
    assert "result[1] (None)" in selection.notes[0]
    with pytest.raises(ExportError, match="1 --output names given, but the model returns 2"):
        select_outputs(result, ["a"])


def test_embedding_ranges_are_found_and_narrow_ones_said() -> None:
    model = tm.GRUTextClassifier(vocab_size=37).eval()
    specs = [IOSpec("tokens", "INT64", ("seq",))]
    call = ModelCall(model, ("tokens",), True)
    ranges = probe_value_ranges(call, model, specs, probe_arrays(specs, 2, {"seq": 5}))
    assert (ranges["tokens"].high, ranges["tokens"].narrow) == (37, False)
    assert "embed" in ranges["tokens"].origin
    lookup = tm.IndexedLookup().eval()
    codes = [IOSpec("codes", "INT64", (4,))]
    narrow = probe_value_ranges(
        ModelCall(lookup, ("codes",), True), lookup, codes, probe_arrays(codes, 2, {})
    )
    assert narrow["codes"].narrow and narrow["codes"].high == 10


def test_random_batches_respect_ranges_sizes_and_masks() -> None:
    specs = [IOSpec("tokens", "INT64", ("seq",)), IOSpec("attention_mask", "INT64", ("seq",))]
    model = tm.GRUTextClassifier(vocab_size=500).eval()
    ranges = probe_value_ranges(
        ModelCall(model, ("tokens",), True),
        model,
        specs[:1],
        probe_arrays(specs[:1], 2, {"seq": 4}),
    )
    batches = InputBatches(specs, None, 0, {**ranges, "attention_mask": MASK_RANGE})
    batch = batches.batch(64, {"seq": 40})
    assert batch["tokens"].shape == (64, 40) and batch["tokens"].max() > 100
    mask = batch["attention_mask"]
    assert mask[0].all() and not mask.all()
    # padding only at the end: each row is ones then zeros
    assert all(np.all(np.diff(row) <= 0) for row in mask)
    np.testing.assert_array_equal(batches.batch(64, {"seq": 40})["tokens"], batch["tokens"])


def test_padding_mask_keeps_a_token_in_every_row() -> None:
    mask = padding_mask((100, 6), np.random.default_rng(1))
    assert mask.sum(axis=1).min() >= 3


def test_size_plans() -> None:
    specs = [IOSpec("a", "FP32", (3, "h", "w"))]
    plan = plan_sizes(specs, {}, None)
    assert plan.sets == ({"h": 16, "w": 17}, {"h": 9, "w": 10})
    plan = plan_sizes(specs, {"h": (3, 17, 64)}, None)
    assert [s["h"] for s in plan.sets] == [3, 17, 64] and plan.to_json()["w"] == [10, 17]
    with_example = plan_sizes(specs, {}, {"h": 30, "w": 7})
    assert with_example.sets == ({"h": 30, "w": 7}, {"h": 15, "w": 4})
    with pytest.raises(ExportError, match="larger than the --example's 30"):
        plan_sizes(specs, {"h": (31,)}, {"h": 30, "w": 7})
    with pytest.raises(ExportError, match="no variable dim has that name"):
        plan_sizes(specs, {"seq": (3,)}, None)


def test_example_rows_are_cropped_to_the_other_sizes() -> None:
    example = {"x": np.arange(2 * 6, dtype=np.float32).reshape(2, 6)}
    batches = InputBatches([IOSpec("x", "FP32", ("seq",))], example)
    np.testing.assert_array_equal(batches.batch(3, {"seq": 2})["x"], [[0, 1], [6, 7], [0, 1]])
