"""Load the model named by SOURCE: `pkg.module:attr`, `file.py:attr`, TorchScript `.pt`, `.pt2`."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporters.errors import ExportError, summarize_exception

_MODULE_SOURCE = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")
_FILE_SOURCE = re.compile(r"^(?P<path>.+\.py):(?P<attr>[A-Za-z_][\w.]*)$")
TRUST_FLAG = "--trust-pickled-module"


@dataclass
class LoadedModel:
    """A model ready to export: the module to call and, for `.pt2`, its ExportedProgram."""

    module: Any
    kind: str
    description: str
    exported_program: Any | None = None


def classify_source(source: str) -> str:
    """One of: file, module, exported_program, serialized (a `.pt`-like file)."""
    if _FILE_SOURCE.match(source):
        return "file"
    if source.endswith(".pt2"):
        return "exported_program"
    if _MODULE_SOURCE.match(source) and not Path(source).exists():
        return "module"
    if Path(source).suffix or Path(source).exists():
        return "serialized"
    raise ExportError(
        f"SOURCE '{source}' is none of: package.module:attr, path/file.py:attr, "
        "a TorchScript .pt file, an ExportedProgram .pt2 archive",
        stage="load",
    )


def load_source(
    source: str,
    weights: Path | None = None,
    trust_pickled: bool = False,
    init_args: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load SOURCE (and `--weights`) into an eval-mode model; `init_args` go to a class or
    factory SOURCE as keyword arguments."""
    kind = classify_source(source)
    if init_args and kind not in ("module", "file"):
        raise ExportError(
            "--init-args needs a class or factory SOURCE (package.module:Class or "
            "file.py:Class), not a serialized model",
            stage="load",
        )
    if kind == "exported_program":
        if weights is not None:
            raise ExportError(
                "--weights cannot be applied to an ExportedProgram (.pt2): its "
                "weights are inside the archive",
                stage="load",
            )
        return _load_exported_program(Path(source))
    if kind == "serialized":
        loaded = _load_serialized(Path(source), trust_pickled)
    else:
        obj = _import_module_attr(source) if kind == "module" else _import_file_attr(source)
        loaded = LoadedModel(_as_module(obj, source, dict(init_args or {})), kind, source)
    if weights is not None:
        _apply_weights(loaded.module, weights)
    loaded.module.eval()
    return loaded


def _import_module_attr(source: str) -> Any:
    match = _MODULE_SOURCE.match(source)
    assert match is not None
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    module_name = match["module"]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ExportError(
            f"cannot import module '{module_name}' of SOURCE '{source}': {exc}", stage="load"
        ) from None
    except Exception as exc:
        raise ExportError(
            f"importing '{module_name}' failed: {summarize_exception(exc)}", stage="load"
        ) from None
    return _get_attr(module, match["attr"], f"module {module_name}")


def _import_file_attr(source: str) -> Any:
    match = _FILE_SOURCE.match(source)
    assert match is not None
    path = Path(match["path"])
    if not path.is_file():
        raise ExportError(f"SOURCE file {path} not found", stage="load")
    module_name = f"_ferry_source_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ExportError(f"cannot import {path} as Python", stage="load")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ExportError(
            f"running {path} failed: {summarize_exception(exc)}", stage="load"
        ) from None
    return _get_attr(module, match["attr"], str(path))


def _get_attr(module: Any, attr: str, where: str) -> Any:
    """`attr` (dotted) of `module`; `where` names the module as the user wrote it."""
    obj = module
    for depth, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            found = ".".join(attr.split(".")[:depth])
            names = sorted(n for n in dir(obj) if not n.startswith("_"))
            hint = f"; it has: {', '.join(names[:20])}{' …' if len(names) > 20 else ''}"
            raise ExportError(
                f"'{attr}' not found in {where}"
                + (f" ('{found}' has no '{part}')" if found else "")
                + (hint if names else ""),
                stage="load",
            )
        obj = getattr(obj, part)
    return obj


def _as_module(obj: Any, source: str, init_args: dict[str, Any]) -> Any:
    """An nn.Module instance as is; a class or factory is called with `init_args`."""
    import torch

    if isinstance(obj, torch.nn.Module):
        if init_args:
            raise ExportError(
                f"--init-args: '{source}' is already a model instance; name its class or a "
                "factory function instead",
                stage="load",
            )
        return obj
    if not callable(obj):
        raise ExportError(
            f"'{source}' is a {type(obj).__name__}, not an nn.Module or a callable returning one",
            stage="load",
        )
    shown = ", ".join(f"{k}={v!r}" for k, v in init_args.items())
    try:
        made = obj(**init_args)
    except Exception as exc:
        hint = "" if init_args else " (pass constructor arguments with --init-args JSON)"
        raise ExportError(
            f"calling '{source}({shown})' failed: {summarize_exception(exc)}{hint}",
            stage="load",
        ) from None
    if not isinstance(made, torch.nn.Module):
        raise ExportError(
            f"'{source}({shown})' returned a {type(made).__name__}, not an nn.Module",
            stage="load",
        )
    return made


@contextlib.contextmanager
def _quiet_torch_loggers() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _load_exported_program(path: Path) -> LoadedModel:
    import torch

    if not path.is_file():
        raise ExportError(f"SOURCE file {path} not found", stage="load")
    try:
        with _quiet_torch_loggers():
            program = torch.export.load(str(path))
    except Exception as exc:
        raise ExportError(
            f"{path} is not an ExportedProgram archive (torch.export.save): "
            f"{summarize_exception(exc, max_lines=2)}",
            stage="load",
        ) from None
    return LoadedModel(program.module(), "exported_program", str(path), program)


def _load_serialized(path: Path, trust_pickled: bool) -> LoadedModel:
    """A TorchScript file; a whole pickled module only with the explicit trust flag."""
    import torch

    if not path.is_file():
        raise ExportError(f"SOURCE file {path} not found", stage="load")
    try:
        script = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        return LoadedModel(script, "torchscript", str(path))
    except Exception as exc:
        jit_error = summarize_exception(exc, max_lines=1, max_chars=200)
    if trust_pickled:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ExportError(
                f"{path} is neither TorchScript nor a pickled module: "
                f"{summarize_exception(exc, max_lines=1)}",
                stage="load",
            ) from None
        return LoadedModel(_as_module(obj, str(path), {}), "pickled_module", str(path))
    try:
        torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise ExportError(
                f"{path} is a pickled Python object, not TorchScript. Loading it runs arbitrary "
                f"code; if you created this file yourself, pass {TRUST_FLAG}. Safer: export "
                "from the model class with --weights STATE_DICT.",
                stage="load",
            ) from None
        raise ExportError(
            f"{path} is neither a TorchScript file (torch.jit.save) nor an "
            f"ExportedProgram archive (.pt2): {jit_error}",
            stage="load",
        ) from None
    raise ExportError(
        f"{path} holds tensors (a state dict?), not a model: give the model as "
        "SOURCE (package.module:Class) and this file as --weights",
        stage="load",
    )


def _apply_weights(module: Any, weights: Path) -> None:
    """Load a state dict with torch.load(weights_only=True) into the module, strictly."""
    import torch

    if not weights.is_file():
        raise ExportError(f"--weights {weights}: file not found", stage="load")
    try:
        state = torch.load(  # type: ignore[no-untyped-call]
            str(weights), map_location="cpu", weights_only=True
        )
    except Exception as exc:
        raise ExportError(
            f"--weights {weights} is not a state dict readable with "
            f"weights_only=True: {summarize_exception(exc, max_lines=1)}",
            stage="load",
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ExportError(
            f"--weights {weights} holds a {type(state).__name__}, not a state dict", stage="load"
        )
    try:
        module.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ExportError(
            f"--weights {weights} do not match the model: {summarize_exception(exc, max_lines=6)}",
            stage="load",
        ) from None
