"""Services never import one another; libraries never import services."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists())
SERVICE_PACKAGES = {f"passerelle_{s}" for s in SERVICES}


def imported_packages(source_dir: Path, root: Path = ROOT) -> dict[str, set[str]]:
    """Top-level package names imported, per file."""
    found: dict[str, set[str]] = {}
    for path in source_dir.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(root))] = names
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_service_imports_no_other_service(service: str) -> None:
    own = f"passerelle_{service}"
    for path, names in imported_packages(ROOT / "services" / service).items():
        foreign = (names & SERVICE_PACKAGES) - {own}
        assert not foreign, f"{path} imports {sorted(foreign)}"


def test_libraries_import_no_service() -> None:
    for path, names in imported_packages(ROOT / "libs").items():
        assert not (names & SERVICE_PACKAGES), f"{path} imports a service"


def test_the_check_catches_a_cross_import(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("from passerelle_matching.models import metadata\n")
    (tmp_path / "fine.py").write_text("from . import sibling\nimport passerelle_contracts\n")
    found = imported_packages(tmp_path, root=tmp_path)
    assert found["bad.py"] == {"passerelle_matching"}
    assert found["fine.py"] == {"passerelle_contracts"}
