"""The Dockerfile: its stages, ARGs and instructions, and the checks on the runtime stages."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .objects import Obj
from .paths import DOCKERFILE, K8S
from .serve_args import parse_serve_args


@dataclass
class Stage:
    """One FROM ... AS name stage: its base image and instructions."""

    name: str
    base: str
    instructions: list[Obj]

    def last(self, instruction: str) -> str | None:
        """The value of the stage's last such instruction (the one Docker uses)."""
        values = [i["value"] for i in self.instructions if i["instruction"] == instruction]
        return values[-1] if values else None


def _structure(path: Path) -> list[Obj]:
    """The Dockerfile's instructions as dockerfile-parse reads them."""
    from dockerfile_parse import DockerfileParser

    return list(DockerfileParser(str(path)).structure)


def dockerfile_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """Global ARG defaults (before the first FROM), unquoted like Docker does."""
    args: dict[str, str] = {}
    for ins in _structure(path):
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            key, value = shlex.split(ins["value"])[0].split("=", 1)
            args[key] = value
    return args


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """Stages by name (unnamed ones by index), in Dockerfile order."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for ins in _structure(path):
        if ins["instruction"] == "FROM":
            words = ins["value"].split()
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
            current = stages[name] = Stage(name, words[0], [])
        elif current is not None:
            current.instructions.append(ins)
    return stages


def exec_form(value: str | None) -> list[str]:
    """An ENTRYPOINT/CMD value as argv: JSON exec form, or shell form under /bin/sh -c."""
    if value is None:
        return []
    value = value.strip()
    return list(json.loads(value)) if value.startswith("[") else ["/bin/sh", "-c", value]


def healthcheck_command(stage: Stage) -> list[str]:
    """The argv of the stage's HEALTHCHECK CMD."""
    value = stage.last("HEALTHCHECK") or ""
    cmd = value[value.index("CMD") + 3 :] if "CMD" in value else ""
    return exec_form(cmd)


def _check_runtime_stage(target: str, stage: Stage, args: dict[str, str]) -> list[str]:
    """A runtime stage is slim, non-root, under tini, healthchecked, on pinned bases."""
    problems: list[str] = []
    where = f"Dockerfile stage {target}"
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), stage.base)
    if ":" not in base.rsplit("/", 1)[-1] or base.endswith(":latest"):
        problems.append(f"{where}: base image {base!r} needs a pinned tag")
    if target == "gpu" and not re.search(r"nvidia|tensorrt|cuda", base):
        problems.append(f"{where}: base {base!r} is not an NVIDIA CUDA/TensorRT image")
    user = (stage.last("USER") or "").split(":")[0]
    if not user.isdigit() or int(user) == 0:
        problems.append(f"{where}: USER {user!r} must be a numeric non-root uid")
    entry = exec_form(stage.last("ENTRYPOINT"))
    if entry[-2:] != ["ferry", "serve"] or not any("tini" in w for w in entry[:-2]):
        problems.append(f"{where}: ENTRYPOINT {entry} must be `ferry serve` under tini")
    cmd = exec_form(stage.last("CMD"))
    try:
        params = parse_serve_args(cmd)
        if str(params["model_repository"]) != "/models":
            problems.append(f"{where}: CMD {cmd} should serve /models")
    except ValueError as error:
        problems.append(f"{where}: CMD {cmd} rejected by `ferry serve`: {error}")
    exposed = sorted(int(p.split("/")[0]) for p in (stage.last("EXPOSE") or "").split())
    if exposed != [8000, 8001, 8002]:
        problems.append(f"{where}: EXPOSE {exposed} should be 8000 8001 8002")
    health = " ".join(healthcheck_command(stage))
    if "127.0.0.1:8000/v2/health/live" not in health:
        problems.append(f"{where}: HEALTHCHECK must GET :8000/v2/health/live, got {health!r}")
    copies = [i["value"] for i in stage.instructions if i["instruction"] == "COPY"]
    if not any("--from=" in c and "/opt/venv" in c for c in copies):
        problems.append(f"{where}: the venv must come from a builder stage (COPY --from)")
    runs = " ".join(i["value"] for i in stage.instructions if i["instruction"] == "RUN")
    if re.search(r"\b(gcc|g\+\+|build-essential|pip install)\b", runs):
        problems.append(f"{where}: the final stage installs compilers or Python packages")
    return problems


def _check_build_context(path: Path, stages: dict[str, Stage]) -> list[str]:
    """Everything the builders COPY exists and is in the build context (.dockerignore)."""
    problems: list[str] = []
    ignore = (path.parent / ".dockerignore").read_text().split()
    for stage in stages.values():
        for ins in stage.instructions:
            if ins["instruction"] != "COPY" or "--from=" in ins["value"]:
                continue
            for src in shlex.split(ins["value"])[:-1]:
                if src.startswith("--"):
                    continue
                if (
                    f"!{src}" not in ignore
                    and f"!{src.rstrip('/')}/" not in ignore
                    and f"!{src.rstrip('/')}" not in ignore
                ):
                    problems.append(
                        f"Dockerfile line {ins['startline'] + 1}: COPY {src} is "
                        "excluded by .dockerignore"
                    )
                if not (path.parent / src).exists():
                    problems.append(
                        f"Dockerfile line {ins['startline'] + 1}: COPY {src} does not exist"
                    )
    return problems


def check_dockerfile(path: Path = DOCKERFILE, k8s: Path = K8S) -> list[str]:
    """The runtime stages: slim, non-root, init, healthcheck, ports, entrypoint, pinned bases."""
    problems: list[str] = []
    stages = dockerfile_stages(path)
    args = dockerfile_args(path)
    names = list(stages)
    if names[-1:] != ["cpu"]:
        problems.append(f"Dockerfile: the last (default) stage must be `cpu`, got {names[-1:]}")
    for target in ("cpu", "gpu"):
        stage = stages.get(target)
        if stage is None:
            problems.append(f"Dockerfile: no `{target}` stage (`docker build --target {target}`)")
            continue
        problems += _check_runtime_stage(target, stage, args)
    for stage in stages.values():
        for ins in stage.instructions:
            if ins["instruction"] == "ADD" and re.search(r"https?://", ins["value"]):
                problems.append(f"Dockerfile line {ins['startline'] + 1}: ADD from a URL")
    # The cpu image must not pull torch: ferry's runtime dependencies are serving-only.
    project = tomllib.loads((path.parent / "pyproject.toml").read_text())["project"]
    heavy = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    if heavy:
        problems.append(
            f"pyproject.toml: runtime dependencies include {heavy}; the serving image must not"
        )
    return problems + _check_build_context(path, stages)
