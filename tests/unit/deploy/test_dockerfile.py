"""The Dockerfile's static contract (dockerfile-parse) and hadolint, plus broken copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.deploy.support import REPO, edit, load_validate

validate = load_validate()


@pytest.fixture
def context(tmp_path: Path) -> Path:
    """A build context with a copy of the Dockerfile to break (packages as empty folders)."""
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    for package in ("ferry", "server", "monitoring", "exporters", "optimizers"):
        (tmp_path / package).mkdir()
    return tmp_path


def test_dockerfile_contract_holds() -> None:
    assert validate.check_dockerfile() == []


def test_hadolint_is_clean() -> None:
    assert validate.hadolint() == []


def test_default_target_is_cpu_and_gpu_uses_an_nvidia_base() -> None:
    stages = validate.dockerfile_stages()
    assert list(stages)[-1] == "cpu"
    args = validate.dockerfile_args()
    assert "nvidia" in args["CUDA_IMAGE"] and args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    gpu_builder_runs = " ".join(i["value"] for i in stages["gpu-builder"].instructions)
    assert '"$REQUIREMENTS_PY" gpu' in gpu_builder_runs  # the gpu extra: onnxruntime-gpu, tensorrt
    for target in ("cpu", "gpu"):
        assert validate.exec_form(stages[target].last("ENTRYPOINT"))[-2:] == ["ferry", "serve"]
        assert validate.exec_form(stages[target].last("CMD")) == ["--model-repository", "/models"]


def test_makefile_targets_build_the_two_stages() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "docker build --target cpu" in makefile and "docker build --target gpu" in makefile


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "USER 10001:10001\nWORKDIR /home/ferry\nEXPOSE 8000 8001 8002\n"
            "HEALTHCHECK --interval=30s --timeout=5s --start-period=60s",
            "USER root\nWORKDIR /home/ferry\nEXPOSE 8000 8001 8002\n"
            "HEALTHCHECK --interval=30s --timeout=5s --start-period=60s",
            "numeric non-root uid",
        ),
        (
            'ENTRYPOINT ["/usr/bin/tini", "--", "ferry", "serve"]\nCMD ["--model-repository", '
            '"/models"]\n',
            'ENTRYPOINT ["ferry", "serve"]\nCMD ["--model-repository", "/models"]\n',
            "under tini",
        ),
        (
            "ARG PYTHON_IMAGE=python:3.11-slim-bookworm",
            "ARG PYTHON_IMAGE=python:latest",
            "needs a pinned tag",
        ),
        (
            'CMD ["--model-repository", "/models"]\n',
            'CMD ["--model-repo", "/models"]\n',
            "rejected by `ferry serve`",
        ),
        (
            "COPY monitoring/ monitoring/\nCOPY exporters/ exporters/\n"
            "COPY optimizers/ optimizers/\nCOPY measure/ measure/\n"
            "RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps .\n\n"
            "FROM ${PYTHON_IMAGE} AS cpu",
            "COPY monitoring/ monitoring/\nCOPY exporters/ exporters/\n"
            "COPY optimizers/ optimizers/\nCOPY measure/ measure/\nCOPY tests/ tests/\n"
            "RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps .\n\n"
            "FROM ${PYTHON_IMAGE} AS cpu",
            "excluded by .dockerignore",
        ),
    ],
)
def test_broken_dockerfile_fails(context: Path, old: str, new: str, message: str) -> None:
    dockerfile = context / "Dockerfile"
    text = dockerfile.read_text()
    # Mutate the cpu stage (the last occurrence).
    index = text.rindex(old)
    dockerfile.write_text(text[:index] + new + text[index + len(old) :])
    problems = validate.check_dockerfile(dockerfile)
    assert any(message in p for p in problems), problems


def test_healthcheck_on_another_path_fails(context: Path) -> None:
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("/v2/health/live", "/healthz"))
    problems = validate.check_dockerfile(dockerfile)
    assert any("HEALTHCHECK must GET :8000/v2/health/live" in p for p in problems), problems


def test_hadolint_rejects_an_unpinned_apt_install(context: Path) -> None:
    dockerfile = context / "Dockerfile"
    edit(dockerfile, "tini=0.19.0-1+b3", "tini")
    (problem,) = validate.hadolint(dockerfile)
    assert "DL3008" in problem
