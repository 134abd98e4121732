"""Replays the Dockerfile's cpu image on the host (no Docker engine here): runs the cpu-builder
stage's instructions into a fresh virtualenv (/opt/venv and /src mapped to temp folders, the
pip cache as in the build's cache mount), then runs the cpu stage's ENTRYPOINT + CMD (tini
included when installed) on loopback as the image's uid, runs its HEALTHCHECK command, sends
SIGTERM and expects a clean exit."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.onnx_models import mlp_model, write_model
from tests.support.server_process import ServerProcess, free_port, wait_until_live
from tests.unit.deploy.support import REPO, load_validate

validate = load_validate()
pytestmark = pytest.mark.slow


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)


def _env_pairs(value: str) -> list[tuple[str, str]]:
    words = shlex.split(value)
    if len(words) == 2 and "=" not in words[0]:  # legacy `ENV KEY value`
        return [(words[0], words[1])]
    return [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]


class Replay:
    """Runs one stage's instructions with the image's paths mapped into a temp root."""

    def __init__(self, root: Path, paths: dict[str, Path]) -> None:
        self.root = root
        self.paths = paths
        self.args = validate.dockerfile_args()
        shims = root / "shims"  # `python` = a CPython 3.11 outside any venv, like the base image
        shims.mkdir(exist_ok=True)
        if not (shims / "python").exists():
            (shims / "python").symlink_to(sys._base_executable)  # type: ignore[attr-defined]
        self.env = {
            "PATH": f"{shims}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(root / "home"),
            "PIP_CACHE_DIR": str(Path.home() / ".cache" / "pip"),
            "LANG": "C.UTF-8",
        }
        for key in ("PIP_FIND_LINKS", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_CONFIG_FILE"):
            if key in os.environ:
                self.env[key] = os.environ[key]
        (root / "home").mkdir(exist_ok=True)
        self.workdir = root

    def map(self, text: str) -> str:
        for image_path, host_path in sorted(self.paths.items(), key=lambda kv: -len(kv[0])):
            text = re.sub(rf"(?<![\w/]){re.escape(image_path)}(?=/|\b|$)", str(host_path), text)
        return text

    def run_stage(self, stage: validate.Stage) -> None:  # type: ignore[name-defined]
        for ins in stage.instructions:
            kind, value = ins["instruction"], ins["value"]
            if kind == "ENV":
                for key, raw in _env_pairs(value):
                    self.env[key] = _expand(self.map(raw), self.env)
            elif kind == "ARG":
                name = value.split("=", 1)[0]
                self.env[name] = (
                    shlex.split(value)[0].split("=", 1)[1]
                    if "=" in value
                    else self.args.get(name, "")
                )
            elif kind == "WORKDIR":
                self.workdir = Path(self.map(value))
                self.workdir.mkdir(parents=True, exist_ok=True)
            elif kind == "COPY" and "--from=" not in value:
                *sources, dest = shlex.split(value)
                for source in sources:
                    origin = REPO / source
                    target = (
                        self.workdir / dest if not dest.startswith("/") else Path(self.map(dest))
                    )
                    if origin.is_dir():
                        shutil.copytree(
                            origin,
                            target / "" if dest.endswith("/") else target,
                            dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        )
                    else:
                        target.mkdir(parents=True, exist_ok=True)
                        shutil.copy(origin, target / origin.name)
            elif kind == "RUN":
                command = self.map(re.sub(r"^(--mount=\S+\s+)+", "", value))
                result = subprocess.run(
                    ["/bin/sh", "-c", command],
                    cwd=self.workdir,
                    env=self.env,
                    capture_output=True,
                    text=True,
                )
                assert result.returncode == 0, (
                    f"RUN {value!r} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
                )


@pytest.fixture(scope="module")
def image_root() -> Iterator[tuple[Path, dict[str, Path], float]]:
    """The cpu-builder stage replayed once; yields (root, path map, seconds it took)."""
    root = Path(tempfile.mkdtemp(prefix="ferry-image-replay-"))
    root.chmod(0o755)
    paths = {
        "/opt/venv": root / "opt-venv",
        "/src": root / "src",
        "/models": root / "models",
        "/home/ferry": root / "home-ferry",
    }
    stages = validate.dockerfile_stages()
    builder = re.search(
        r"--from=(\S+)\s+/opt/venv",
        " ".join(i["value"] for i in stages["cpu"].instructions if i["instruction"] == "COPY"),
    )
    assert builder, "the cpu stage copies no /opt/venv from a builder stage"
    started = time.monotonic()
    Replay(root, paths).run_stage(stages[builder.group(1)])
    elapsed = time.monotonic() - started
    print(f"\ncpu-builder replay (fresh venv, pip cache): {elapsed:.1f}s")
    try:
        yield root, paths, elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_serving_install_has_no_torch_and_fits_a_slim_image(
    image_root: tuple[Path, dict[str, Path], float],
) -> None:
    _, paths, _ = image_root
    python = paths["/opt/venv"] / "bin" / "python"
    probe = (
        "import importlib.util as u, sys; "
        "sys.exit(any(u.find_spec(m) for m in ('torch', 'tensorrt', 'onnxscript')))"
    )
    assert subprocess.run([str(python), "-c", probe]).returncode == 0, "torch in the cpu image"
    assert (paths["/opt/venv"] / "bin" / "ferry").exists()
    size_mb = sum(f.stat().st_size for f in paths["/opt/venv"].rglob("*") if f.is_file()) / 2**20
    print(f"\n/opt/venv of the cpu image: {size_mb:.0f} MB")
    assert size_mb < 1024


def test_entrypoint_cmd_healthcheck_and_sigterm(
    image_root: tuple[Path, dict[str, Path], float],
) -> None:
    root, paths, _ = image_root
    cpu = validate.dockerfile_stages()["cpu"]
    replay = Replay(root, paths)
    for ins in cpu.instructions:  # ENV and WORKDIR of the final stage
        if ins["instruction"] in ("ENV", "WORKDIR"):
            replay.run_stage(validate.Stage("cpu-env", cpu.base, [ins]))
    write_model(paths["/models"], "mlp", mlp_model())
    entrypoint = validate.exec_form(cpu.last("ENTRYPOINT"))
    cmd = validate.exec_form(cpu.last("CMD"))
    if not Path(entrypoint[0]).exists():  # tini not installed on this host: ferry runs as PID
        entrypoint = entrypoint[entrypoint.index("--") + 1 :]  # child of pytest instead
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    overrides = [
        a
        for role, port in ports.items()
        for a in (f"--{role}-port", str(port), f"--{role}-address", "127.0.0.1")
    ]
    argv = [replay.map(a) for a in entrypoint + cmd] + overrides
    uid = int((cpu.last("USER") or "0").split(":")[0])
    run_as = {"user": uid, "group": uid} if os.geteuid() == 0 else {}
    venv_python = str(paths["/opt/venv"] / "bin" / "python")
    if run_as:
        try:
            usable = (
                subprocess.run([venv_python, "-c", ""], capture_output=True, **run_as).returncode
                == 0
            )  # type: ignore[call-overload]
        except OSError:
            usable = False
        if not usable:
            # The venv's base interpreter lies under a home the image's uid cannot read (pyenv
            # in /root); in the image it is /usr/local/bin/python. Run as the current user.
            run_as = {}
    replay.env["TINI_SUBREAPER"] = "1"  # tini is PID 1 in the container, a child of pytest here
    if run_as:
        for path in (paths["/home/ferry"],):
            path.mkdir(exist_ok=True)
            os.chown(path, uid, uid)
        replay.env["HOME"] = str(paths["/home/ferry"])
    log = root / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=replay.env, stdout=out, stderr=subprocess.STDOUT, cwd=root, **run_as
        )  # type: ignore[call-overload]
    server = ServerProcess(process, ports["http"], ports["grpc"], ports["metrics"], log)
    try:
        wait_until_live(server, timeout=120, ready=True)
        health = [
            replay.map(a).replace("127.0.0.1:8000/", f"127.0.0.1:{ports['http']}/")
            for a in validate.healthcheck_command(cpu)
        ]
        check = subprocess.run(health, env=replay.env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, server.log()
        after = subprocess.run(health, env=replay.env, capture_output=True, timeout=30)
        assert after.returncode != 0, "HEALTHCHECK passes with the server stopped"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
