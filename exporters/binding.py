"""How ferry calls the model: inputs bound by name to forward's parameters and fixed keyword
arguments; the module the exporter traces (the call plus the outputs kept)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporters.errors import ExportError
from exporters.outputs import OutputSelection
from exporters.sources import LoadedModel
from exporters.specs import IOSpec


@dataclass(frozen=True)
class ForwardSignature:
    """The parameters of forward that inputs can bind to."""

    names: tuple[str, ...]
    required: tuple[str, ...]
    by_keyword: bool  # inputs are passed as keyword arguments (Python modules)
    var_keyword: bool  # forward also takes **kwargs (fixed keyword arguments may go there)

    @property
    def shown(self) -> str:
        """forward(a, b, ...) for error messages."""
        return f"forward({', '.join(self.names)}{', **kwargs' if self.var_keyword else ''})"


def forward_signature(loaded: LoadedModel) -> ForwardSignature | None:
    """forward's named parameters; None when it has none (only *args): bound by position."""
    if loaded.exported_program is not None:
        names = tuple(str(n) for n in loaded.exported_program.graph_signature.user_inputs)
        return ForwardSignature(names, names, False, False)
    forward = loaded.module.forward
    schema = getattr(forward, "schema", None)
    if schema is not None:  # TorchScript method: the schema's first argument is self
        arguments = list(schema.arguments)[1:]
        required = tuple(
            a.name for a in arguments if a.default_value is None and not a.has_default_value()
        )
        return ForwardSignature(tuple(a.name for a in arguments), required, False, False)
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        return None
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    positional_only = [p for p in parameters if p.kind == p.POSITIONAL_ONLY]
    var_keyword = any(p.kind == p.VAR_KEYWORD for p in parameters)
    if positional_only:
        names = tuple(p.name for p in [*positional_only, *named])
        required = tuple(p.name for p in positional_only if p.default is p.empty)
        return ForwardSignature(names, required, False, False)
    if not named:
        return None
    required = tuple(p.name for p in named if p.default is p.empty)
    return ForwardSignature(tuple(p.name for p in named), required, True, var_keyword)


def bind_inputs(specs: Sequence[IOSpec], signature: ForwardSignature | None) -> list[IOSpec]:
    """The specs in forward's parameter order; an error when a name is not a parameter."""
    if signature is None:
        return list(specs)
    by_name = {spec.name: spec for spec in specs}
    unknown = [name for name in by_name if name not in signature.names]
    if unknown:
        raise ExportError(
            f"input '{unknown[0]}' is not a parameter of the model's {signature.shown}; "
            f"inputs bind by name to: {', '.join(signature.names)}",
            stage="load",
        )
    missing = [name for name in signature.required if name not in by_name]
    if missing:
        raise ExportError(
            f"the model's {signature.shown} needs input '{missing[0]}': add "
            f"--input {missing[0]}:DTYPE:DIMS (or put it in --example)",
            stage="load",
        )
    ordered = [by_name[name] for name in signature.names if name in by_name]
    if not signature.by_keyword and [s.name for s in ordered] != list(
        signature.names[: len(ordered)]
    ):
        raise ExportError(
            f"inputs {', '.join(s.name for s in ordered)} skip a parameter of "
            f"{signature.shown}; this model takes its inputs by position",
            stage="load",
        )
    return ordered


def check_forward_kwargs(
    forward_kwargs: Mapping[str, Any], signature: ForwardSignature | None, inputs: Sequence[IOSpec]
) -> None:
    """Fixed keyword arguments must be parameters of a Python forward, and not inputs."""
    if not forward_kwargs:
        return
    if signature is None or not signature.by_keyword:
        raise ExportError(
            "--forward-kwargs needs a model whose forward takes keyword arguments "
            "(a Python nn.Module SOURCE)",
            stage="load",
        )
    for name in forward_kwargs:
        if name in {s.name for s in inputs}:
            raise ExportError(
                f"--forward-kwargs '{name}' is also an --input; give it one way", stage="load"
            )
        if name not in signature.names and not signature.var_keyword:
            raise ExportError(
                f"--forward-kwargs '{name}' is not a parameter of the model's {signature.shown}",
                stage="load",
            )


@dataclass
class ModelCall:
    """Calls the model the way the export binds it: inputs by name (or position) + fixed kwargs."""

    module: Any
    input_names: tuple[str, ...]
    by_keyword: bool
    forward_kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *tensors: Any) -> Any:
        if self.by_keyword:
            return self.module(
                **dict(zip(self.input_names, tensors, strict=True)), **self.forward_kwargs
            )
        return self.module(*tensors)

    def binding(self, signature: ForwardSignature | None) -> dict[str, Any]:
        """The report's record of how inputs reach forward."""
        left_out = (
            [
                n
                for n in signature.names
                if n not in self.input_names and n not in self.forward_kwargs
            ]
            if signature is not None
            else []
        )
        return {
            "by": "keyword" if self.by_keyword else "position",
            "inputs": {
                name: (name if self.by_keyword else f"positional argument {i}")
                for i, name in enumerate(self.input_names)
            },
            "forward_kwargs": self.forward_kwargs,
            "left_to_defaults": left_out,
        }


def export_module(call: ModelCall, selection: OutputSelection) -> Any:
    """An nn.Module taking the inputs by position and returning the selected tensors.

    TorchScript modules and ExportedPrograms are exported as they are (a Python wrapper around
    them traces in neither exporter), so they cannot drop outputs.
    """
    import torch

    if isinstance(call.module, torch.jit.ScriptModule) or not isinstance(
        call.module, torch.nn.Module
    ):
        if not selection.complete:
            raise ExportError(
                "this SOURCE returns values that are not tensors or not all named by "
                "--output; ferry can leave outputs out only for a Python nn.Module SOURCE",
                stage="load",
            )
        return call.module

    class BoundModel(torch.nn.Module):
        """forward(*inputs) -> the selected outputs of model(**inputs, **forward_kwargs)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = call.module

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            bound = ModelCall(self.model, call.input_names, call.by_keyword, call.forward_kwargs)
            return selection.pick(bound(*inputs))

    bound = BoundModel()
    bound.training = False  # the model is in eval mode already (an ExportedProgram refuses .eval())
    return bound
