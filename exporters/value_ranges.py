"""Valid values for integer inputs: the embedding each one feeds, found by running the model."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from exporters.inputs import MASK_RANGE, NARROW_INT_HIGH, NARROW_ORIGIN, ValueRange, is_mask_name
from exporters.specs import IOSpec


def probe_value_ranges(
    call: Callable[..., Any],
    module: Any,
    specs: Sequence[IOSpec],
    probe: Mapping[str, np.ndarray],
) -> dict[str, ValueRange]:
    """The range of every integer input: masks by name, else the embeddings that read it.

    The model runs once on `probe` (integer inputs zero, masks one) with a pre-hook on every
    nn.Embedding: an input whose tensor (or a view of it) reaches an embedding is drawn below
    that embedding's num_embeddings (the smallest, when several read it). Inputs no embedding
    reads get the narrow default, which the report and the console say.
    """
    import torch

    ranges: dict[str, ValueRange] = {}
    integer = [s for s in specs if s.numpy_dtype.kind in "iu"]
    for spec in integer:
        if is_mask_name(spec.name):
            ranges[spec.name] = MASK_RANGE
    wanted = [s for s in integer if s.name not in ranges]
    if not wanted:
        return ranges
    tensors = {
        spec.name: torch.from_numpy(np.ascontiguousarray(probe[spec.name])) for spec in specs
    }
    storage = {
        tensors[s.name].untyped_storage().data_ptr(): s.name
        for s in wanted
        if tensors[s.name].numel()
    }
    found: dict[str, tuple[int, str]] = {}

    def hook_for(path: str, embedding: Any) -> Callable[..., None]:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            indices = args[0] if args else None
            if not isinstance(indices, torch.Tensor) or not indices.numel():
                return
            name = storage.get(indices.untyped_storage().data_ptr())
            if name is not None:
                size = int(embedding.num_embeddings)
                if name not in found or size < found[name][0]:
                    found[name] = (size, path)

        return hook

    handles = [
        sub.register_forward_pre_hook(hook_for(path, sub))
        for path, sub in (module.named_modules() if hasattr(module, "named_modules") else [])
        if isinstance(sub, (torch.nn.Embedding, torch.nn.EmbeddingBag))
    ]
    try:
        with torch.inference_mode():
            call(*(tensors[s.name] for s in specs))
    except Exception:
        pass
    finally:
        for handle in handles:
            handle.remove()
    for spec in wanted:
        if spec.name in found:
            size, path = found[spec.name]
            ranges[spec.name] = ValueRange(0, size, f"embedding {path} (num_embeddings {size})")
        else:
            ranges[spec.name] = ValueRange(0, NARROW_INT_HIGH, NARROW_ORIGIN)
    return ranges


def probe_arrays(
    specs: Sequence[IOSpec], rows: int, sizes: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """Inputs any model should take: zeros (masks: ones), floats standard normal."""
    rng = np.random.default_rng(0)
    arrays = {}
    for spec in specs:
        shape = spec.shape(rows, sizes)
        if spec.numpy_dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.numpy_dtype)
        elif is_mask_name(spec.name):
            arrays[spec.name] = np.ones(shape, dtype=spec.numpy_dtype)
        else:
            arrays[spec.name] = np.zeros(shape, dtype=spec.numpy_dtype)
    return arrays
