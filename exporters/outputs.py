"""The outputs kept from a forward result: by key for dicts and ModelOutputs, by position for
tuples; values that are not tensors (caches, None) are left out with a note."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporters.errors import ExportError

OutputPath = tuple[str | int, ...]  # keys / indices from the forward result to one tensor


@dataclass(frozen=True)
class OutputSelection:
    """Which tensors of the forward result become outputs, under which names."""

    names: tuple[str, ...]
    paths: tuple[OutputPath, ...]
    notes: tuple[str, ...] = ()
    complete: bool = True  # every value of the result is kept, in order (nothing to select)

    def pick(self, result: Any) -> tuple[Any, ...]:
        """The selected tensors of one forward result."""
        picked = []
        for path in self.paths:
            value = result
            for step in path:
                value = value[step]
            picked.append(value)
        return tuple(picked)

    def to_json(self) -> dict[str, str]:
        """Output name -> where in the forward result it comes from."""
        return {
            name: "result" + "".join(f"[{step!r}]" for step in path)
            for name, path in zip(self.names, self.paths, strict=True)
        }


def _is_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)


def _leaves(value: Any, path: OutputPath) -> list[tuple[OutputPath, Any]]:
    """Every (path, leaf) of nested tuples/lists/dicts; a leaf is anything else."""
    if isinstance(value, (tuple, list)):
        return [leaf for i, item in enumerate(value) for leaf in _leaves(item, (*path, i))]
    if _is_mapping(value):
        return [leaf for key, item in value.items() for leaf in _leaves(item, (*path, key))]
    return [(path, value)]


def _describe(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def select_outputs(result: Any, requested: Sequence[str]) -> OutputSelection:
    """Outputs of one forward result: by key for dicts/ModelOutputs, else by position."""
    import torch

    if len(set(requested)) != len(requested):
        raise ExportError("--output names must be unique", stage="load")
    if isinstance(result, torch.Tensor):
        names = tuple(requested) or ("output",)
        if len(names) != 1:
            raise ExportError(
                f"{len(names)} --output names given, but the model returns 1 tensor", stage="load"
            )
        return OutputSelection(names, ((),))
    if _is_mapping(result):
        tensor_keys = [k for k, v in result.items() if isinstance(v, torch.Tensor)]
        if requested:
            for name in requested:
                if name not in result:
                    raise ExportError(
                        f"--output {name}: the model's result has no key '{name}' (its tensor "
                        f"keys: {', '.join(tensor_keys) or 'none'})",
                        stage="load",
                    )
                if not isinstance(result[name], torch.Tensor):
                    raise ExportError(
                        f"--output {name}: '{name}' is a {_describe(result[name])}, not a tensor "
                        f"(tensor keys: {', '.join(tensor_keys) or 'none'})",
                        stage="load",
                    )
            kept = list(requested)
        else:
            kept = tensor_keys
        dropped = [
            f"{key} ({_describe(value)})"
            for key, value in result.items()
            if key not in kept and not isinstance(value, torch.Tensor)
        ]
        notes = (f"not exported (not tensors): {', '.join(dropped)}",) if dropped else ()
        if not kept:
            raise ExportError(
                f"the model's result holds no tensor (keys: {', '.join(result) or 'none'})",
                stage="load",
            )
        complete = kept == list(result)
        return OutputSelection(tuple(kept), tuple((k,) for k in kept), notes, complete)
    if not isinstance(result, (tuple, list)):
        raise ExportError(
            f"the model returned a {type(result).__name__}; ferry exports models that return "
            "tensors, tuples/lists of tensors, dicts or ModelOutputs",
            stage="load",
        )
    leaves = _leaves(result, ())
    tensors = [(path, v) for path, v in leaves if isinstance(v, torch.Tensor)]
    dropped = [
        f"result{''.join(f'[{s!r}]' for s in path)} ({_describe(v)})"
        for path, v in leaves
        if not isinstance(v, torch.Tensor)
    ]
    notes = (f"not exported (not tensors): {', '.join(dropped)}",) if dropped else ()
    if not tensors:
        raise ExportError("the model's result holds no tensor", stage="load")
    names = tuple(requested) or (
        ("output",) if len(tensors) == 1 else tuple(f"output_{i}" for i in range(len(tensors)))
    )
    if len(names) != len(tensors):
        raise ExportError(
            f"{len(names)} --output names given, but the model returns {len(tensors)} tensors "
            "(a tuple: names go by position)",
            stage="load",
        )
    return OutputSelection(names, tuple(path for path, _ in tensors), notes, not dropped)
