"""Which part may import which: the layers of docs/architecture.md, checked on every module.

    stack (the command, the embedded stack)      imports anything
    flows, ingester, dash_app (the parts)        import the core and segmentation, not each other's servers
    segmentation (the job, shipped in its image) imports no other part and no server code
    mlex_tomo (the shared core)                  imports no part

Imports inside functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGES = ("mlex_tomo", "stack", "flows", "ingester", "dash_app", "segmentation")
FORBIDDEN = {
    "mlex_tomo": {"stack", "flows", "ingester", "dash_app", "segmentation"},
    "segmentation": {"mlex_tomo", "stack", "flows", "ingester", "dash_app"},
    "flows": {"stack", "ingester", "dash_app"},
    "ingester": {"stack", "flows", "dash_app", "segmentation"},
    "dash_app": {"stack", "ingester"},
    "stack": set(),
}


def imported_packages(source: str) -> set[str]:
    """Top-level names of every absolute import in `source`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((REPOSITORY / package).rglob("*.py")):
        for imported in sorted(imported_packages(path.read_text()) & FORBIDDEN[package]):
            found.append(f"{path.relative_to(REPOSITORY)} imports {imported}")
    return found


def test_every_package_is_in_the_contract():
    on_disk = {path.parent.name for path in REPOSITORY.glob("*/__init__.py")} - {"tests", "benchmarks", "tiled_config"}  # tiled_config: data only
    assert on_disk == set(PACKAGES) == set(FORBIDDEN)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_a_layer_above_or_beside_it(package):
    assert violations(package) == []


def test_the_check_sees_lazy_and_dotted_imports():
    source = "def handler():\n    from stack.supervisor import run_up\n    import ingester.processor\n"
    assert imported_packages(source) == {"stack", "ingester"}
