"""Which part may import which: the layers of docs/architecture.md, checked on every module.

    stack (the command, the embedded stack)      imports anything
    flows, ingester, dash_app (the parts)        import the core and segmentation, not each other's servers
    segmentation (the job, shipped in its image) imports no other part and no server code:
                                                 of the core, only mlex_tomo.tiled_names, which its image ships
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
# Modules a package may import although their package is forbidden to it.
EXCEPTIONS = {"segmentation": {"mlex_tomo", "mlex_tomo.tiled_names", "mlex_tomo.validation"}}


def imported_modules(source: str) -> set[str]:
    """The dotted name of every absolute import in `source`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((REPOSITORY / package).rglob("*.py")):
        for module in sorted(imported_modules(path.read_text())):
            if module.split(".")[0] in FORBIDDEN[package] and module not in EXCEPTIONS.get(package, set()):
                found.append(f"{path.relative_to(REPOSITORY)} imports {module}")
    return found


def test_every_package_is_in_the_contract():
    on_disk = {path.parent.name for path in REPOSITORY.glob("*/__init__.py")} - {"tests", "benchmarks", "tiled_config"}  # tiled_config: data only
    assert on_disk == set(PACKAGES) == set(FORBIDDEN)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_a_layer_above_or_beside_it(package):
    assert violations(package) == []


def test_the_check_sees_lazy_and_dotted_imports():
    source = "def handler():\n    from stack.supervisor import run_up\n    import ingester.processor\n"
    assert imported_modules(source) == {"stack.supervisor", "ingester.processor"}


def test_the_job_may_use_the_tiled_names_and_the_error_format_and_nothing_else_of_the_core():
    assert EXCEPTIONS["segmentation"] == {"mlex_tomo", "mlex_tomo.tiled_names", "mlex_tomo.validation"}
    for module, allowed in (("tiled_names", {"__future__", "collections"}), ("validation", {"__future__", "collections", "pydantic"})):
        source = (REPOSITORY / "mlex_tomo" / f"{module}.py").read_text()
        assert {name.split(".")[0] for name in imported_modules(source)} <= allowed, f"{module}.py ships in the job image without the rest"
    assert (REPOSITORY / "mlex_tomo" / "__init__.py").read_text().count("import") == 0
