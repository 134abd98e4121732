"""Turns a model folder into a validated, auto-completed config and the versions to load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.ensemble import is_ensemble, validate_ensemble
from server.padding import padding_plan
from server.repository_format import (
    CONFIG_FILENAME,
    DEFAULT_MODEL_FILENAME_BY_PLATFORM,
    ONNX_PLATFORM,
    ModelConfig,
    ModelConfigError,
    autocomplete_from_onnx,
    config_from_json,
    format_config,
    model_filename,
    normalize_config,
    read_config,
    tensor_specs,
    version_numbers,
)
from server.runtimes import complete_config
from server.sequence.policy import SequencePolicy


@dataclass(frozen=True)
class PreparedModel:
    """A model ready to load: its final config, the versions its policy selects, signatures."""

    config: ModelConfig
    versions: list[int]
    config_text: str
    version_files: dict[int, tuple[Any, ...]]
    scan_signature: tuple[Any, ...]

    def version_signature(self, number: int) -> tuple[Any, ...]:
        """Changes when the config or the version's files change (poll-mode reloads)."""
        return (self.config_text, self.version_files.get(number, ()))


# Python's bytecode caches: importing a version's model.py writes one into the version folder,
# which must not read as a change of the model (a poll would reload every Python model once after
# its first load)
BYTECODE_CACHE = "__pycache__"


def _files_signature(folder: Path) -> tuple[Any, ...]:
    if not folder.is_dir():
        return ()
    entries = []
    for path in sorted(folder.rglob("*")):
        if BYTECODE_CACHE in path.relative_to(folder).parts:
            continue
        if path.is_file():
            stat = path.stat()
            entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def scan_signature(model_dir: Path) -> tuple[Any, ...]:
    """Cheap fingerprint of a model folder: config + every version file's size and mtime."""
    config_path = model_dir / CONFIG_FILENAME
    config_stat = config_path.stat() if config_path.is_file() else None
    return (
        (config_stat.st_size, config_stat.st_mtime_ns) if config_stat else None,
        tuple((n, _files_signature(model_dir / str(n))) for n in version_numbers(model_dir)),
    )


def select_versions(config: ModelConfig, available: list[int]) -> list[int]:
    """Apply the version policy: latest N (default 1), all, or specific."""
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return list(available)
    if kind == "specific":
        return [v for v in sorted(set(policy.specific.versions)) if v in available]
    count = policy.latest.num_versions if kind == "latest" else 1
    return available[-max(int(count), 1) :] if available else []


def _infer_platform(config: ModelConfig, model_dir: Path, versions: list[int]) -> None:
    if config.platform or config.backend:
        return
    for number in reversed(versions):
        for platform, filename in DEFAULT_MODEL_FILENAME_BY_PLATFORM.items():
            if (model_dir / str(number) / (config.default_model_filename or filename)).exists():
                config.platform = platform
                return
    config.platform = ONNX_PLATFORM


def validate(config: ModelConfig, name: str) -> None:
    """Reject configs Triton would reject, with a message naming the field."""
    if config.name and config.name != name:
        raise ModelConfigError(
            f"config name '{config.name}' does not match the model folder '{name}'"
        )
    if config.max_batch_size < 0:
        raise ModelConfigError("max_batch_size must be >= 0")
    if not config.input or not config.output:
        raise ModelConfigError("the model needs at least one input and one output")
    for tensor in list(config.input) + list(config.output):
        if any(d == 0 or d < -1 for d in tensor.dims):
            raise ModelConfigError(f"tensor '{tensor.name}' has invalid dims {list(tensor.dims)}")
    tensor_specs(config)  # raises on an invalid data_type
    if config.response_cache.enable and config.HasField("sequence_batching"):
        raise ModelConfigError(
            f"Response Cache does not currently support model {name} with sequence batching "
            "scheduler. Please disable the response cache."
        )
    if config.response_cache.enable and config.model_transaction_policy.decoupled:
        raise ModelConfigError(
            f"Response Cache does not currently support model {name} with 'decoupled' "
            "transaction policy. Please disable the response cache."
        )
    padding_plan(config)  # raises on a padding declaration that does not fit the config
    if is_ensemble(config):
        validate_ensemble(config)
    if config.HasField("dynamic_batching"):
        dyn = config.dynamic_batching
        for size in dyn.preferred_batch_size:
            if size <= 0 or size > config.max_batch_size:
                raise ModelConfigError(
                    f"preferred_batch_size {size} must be in "
                    f"[1, max_batch_size={config.max_batch_size}]"
                )
        if dyn.priority_levels and not 1 <= dyn.default_priority_level <= dyn.priority_levels:
            raise ModelConfigError("default_priority_level must be in [1, priority_levels]")
        for level in dyn.priority_queue_policy:
            if not 1 <= level <= dyn.priority_levels:
                raise ModelConfigError(
                    f"priority_queue_policy level {level} is outside "
                    f"[1, priority_levels={dyn.priority_levels}]"
                )


def prepare(
    name: str, model_dir: Path, config_json: str | None, default_max_batch_size: int
) -> PreparedModel:
    """Read (or take the given) config, pick versions, auto-complete from ONNX, validate."""
    config = config_from_json(config_json) if config_json else read_config(model_dir)
    available = version_numbers(model_dir)
    if not available:
        raise ModelConfigError(f"no version folders (e.g. '1/') in {model_dir}")
    base = config or ModelConfig()
    versions = select_versions(base, available)
    if not versions:
        raise ModelConfigError(f"the version policy selects none of the versions {available}")
    _infer_platform(base, model_dir, versions)
    if base.platform == ONNX_PLATFORM and (not base.input or not base.output):
        onnx_path = model_dir / str(versions[-1]) / model_filename(base)
        if not onnx_path.exists():
            raise ModelConfigError(f"model file not found: {onnx_path}")
        try:
            base = autocomplete_from_onnx(config and base, onnx_path, name, default_max_batch_size)
        except ModelConfigError:
            raise
        except Exception as exc:  # onnx raises DecodeError and friends on a corrupt file
            raise ModelConfigError(
                f"cannot read {onnx_path.name} to auto-complete the config: {exc}"
            ) from exc
    # platforms completed elsewhere (an upstream Triton, a Python model's auto_complete_config)
    base = complete_config(base, name, model_dir / str(versions[-1]))
    base.name = base.name or name
    validate(base, name)
    if base.HasField("sequence_batching"):  # Triton's checks; reads initial_state files
        SequencePolicy.from_config(base, model_dir)
    normalize_config(base)
    return PreparedModel(
        config=base,
        versions=versions,
        config_text=format_config(base),
        version_files={n: _files_signature(model_dir / str(n)) for n in versions},
        scan_signature=scan_signature(model_dir),
    )
