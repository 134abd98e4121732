"""Load-time work for Python models: the model file, what ferry refuses, auto_complete_config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import server
from server.repository_format import ModelConfig, ModelConfigError, config_from_json, config_to_json

DEFAULT_MODEL_FILENAME = "model.py"
AUTO_COMPLETE_TIMEOUT_S = 120.0


def model_file(config: ModelConfig, version_path: Path) -> Path:
    """REPO/NAME/<v>/model.py (or the config's default_model_filename)."""
    return version_path / (config.default_model_filename or DEFAULT_MODEL_FILENAME)


def stub_command(*arguments: str) -> list[str]:
    """The command line of a model process (stub.py) with the server's interpreter."""
    return [sys.executable, "-m", "server.runtimes.python.stub", *arguments]


def stub_environment() -> dict[str, str]:
    """The server's environment, with ferry's sources importable whatever the working folder."""
    env = dict(os.environ)
    source_root = str(Path(server.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    return env


def instance_kind(config: ModelConfig) -> str:
    """`model_instance_kind` for initialize: GPU for a KIND_GPU group, else CPU (ferry runs the
    process either way; the model decides what device it uses)."""
    kinds = {group.kind for group in config.instance_group}
    return "GPU" if 1 in kinds else "CPU"  # ModelInstanceGroup.Kind.KIND_GPU


def reject_unsupported(config: ModelConfig) -> None:
    """Refuse, with the reason, what ferry's Python models do not do."""
    if "EXECUTION_ENV_PATH" in config.parameters:
        raise ModelConfigError(
            'parameters { key: "EXECUTION_ENV_PATH" } is not supported by ferry: Python models '
            "run in the server's own Python environment; install the model's packages there "
            "(or build an image FROM ferry with them)"
        )


def complete_config(config: ModelConfig, name: str, version_path: Path) -> ModelConfig:
    """Check the model file, then run the model's static `auto_complete_config` (if model.py
    defines one) in a separate process, as Triton does, and return the completed config."""
    reject_unsupported(config)
    path = model_file(config, version_path)
    if not path.is_file():
        raise ModelConfigError(f"Python model file not found in '{path}'")
    if "auto_complete_config" not in path.read_text(errors="replace"):
        return config
    named = ModelConfig()
    named.CopyFrom(config)
    named.name = named.name or name
    try:
        done = subprocess.run(
            stub_command("--auto-complete", str(path), "--version", version_path.name),
            input=json.dumps(config_to_json(named)),
            capture_output=True,
            text=True,
            env=stub_environment(),
            timeout=AUTO_COMPLETE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelConfigError(f"auto_complete_config of '{name}' timed out") from exc
    if done.returncode != 0:
        raise ModelConfigError(
            f"auto_complete_config of '{name}' failed: {done.stderr.strip() or done.returncode}"
        )
    try:
        completed = config_from_json(json.loads(done.stdout))
    except (json.JSONDecodeError, ModelConfigError) as exc:
        raise ModelConfigError(
            f"auto_complete_config of '{name}' returned an invalid config: {exc}"
        ) from exc
    return completed
