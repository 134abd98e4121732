"""Padding variable dims so requests of different sizes share a batch (server/padding.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from server.batching import Batcher
from server.padding import padding_plan
from server.repository_format import ModelConfigError, parse_config
from tests.unit.server.test_batcher import policy

TAGGER = """
max_batch_size: 8
input [{ name: "tokens" data_type: TYPE_INT64 dims: [-1] },
       { name: "mask" data_type: TYPE_FP32 dims: [-1] }]
output [{ name: "tags" data_type: TYPE_FP32 dims: [-1, 2] }]
"""


def _config(pad: str, base: str = TAGGER) -> object:
    return parse_config(
        base + f'parameters {{ key: "ferry.pad_variable_dims" value: {{ string_value: "{pad}" }} }}'
    )


def test_no_declaration_no_plan() -> None:
    assert padding_plan(parse_config(TAGGER)) is None


@pytest.mark.parametrize(
    ("pad", "message"),
    [
        ("tokens", "is not TENSOR:DIM"),
        ("words:0", "'words' is not an input or output"),
        ("tokens:1", "dim 1 of input 'tokens' must be -1"),
        ("tags:1", "dim 1 of output 'tags' must be -1"),
        ("tags:0", "names no input"),
        ("tokens:0=pad", "not a number"),
        ("tokens:0, tags:0=1", "takes no pad value"),
        (" ; ", "is empty"),
    ],
)
def test_declarations_that_do_not_fit_are_refused(pad: str, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        padding_plan(_config(pad))


def test_batching_models_only() -> None:
    with pytest.raises(ModelConfigError, match="needs a batching model"):
        padding_plan(_config("tokens:0", TAGGER.replace("max_batch_size: 8", "max_batch_size: 0")))


def test_pad_concatenate_and_cut() -> None:
    plan = padding_plan(_config("tokens:0=7, mask:0, tags:0"))
    assert plan is not None
    short = {"tokens": np.array([[1, 2]]), "mask": np.ones((1, 2), np.float32)}
    long = {"tokens": np.array([[3, 4, 5, 6], [7, 8, 9, 10]]), "mask": np.ones((2, 4), np.float32)}
    assert plan.shape_key(short) == plan.shape_key(long)
    batch = plan.concatenate([short, long])
    assert batch["tokens"].tolist() == [[1, 2, 7, 7], [3, 4, 5, 6], [7, 8, 9, 10]]
    assert batch["mask"].tolist()[0] == [1, 1, 0, 0]
    tags = {"tags": np.zeros((1, 4, 2), np.float32)}
    assert plan.cut(tags, plan.sizes(short))["tags"].shape == (1, 2, 2)
    with pytest.raises(Exception, match="must have the same size"):
        plan.shape_key({"tokens": np.zeros((1, 3), np.int64), "mask": np.ones((1, 2), np.float32)})


class MaskedSumRuntime:
    """Per position: tags[:, t] = (tokens * mask, mask); records the padded batch shapes."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        tokens, mask = inputs["tokens"], inputs["mask"]
        self.shapes.append(tokens.shape)
        return {"tags": np.stack([tokens * mask, mask], axis=-1).astype(np.float32)}

    def close(self) -> None:
        pass


def test_batcher_pads_a_batch_of_different_lengths_and_cuts_each_answer() -> None:
    async def scenario() -> None:
        runtime = MaskedSumRuntime()
        plan = padding_plan(_config("tokens:0, mask:0, tags:0"))
        batcher = Batcher([runtime], policy(max_queue_delay_s=0.05), ["tags"], padding=plan)
        lengths = [3, 1, 5, 2]
        results = await asyncio.gather(
            *(
                batcher.submit(
                    {
                        "tokens": np.arange(1, n + 1, dtype=np.int64)[None],
                        "mask": np.ones((1, n), np.float32),
                    },
                    1,
                )
                for n in lengths
            )
        )
        assert runtime.shapes == [(4, 5)]  # one padded batch
        for n, (outputs, _) in zip(lengths, results, strict=True):
            assert outputs["tags"].shape == (1, n, 2)
            assert outputs["tags"][0, :, 0].tolist() == list(range(1, n + 1))
        await batcher.drain()

    asyncio.run(scenario())
