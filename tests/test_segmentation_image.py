"""The job's image holds `segmentation/` and its requirements only: check they suffice and agree."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
BLOCKED = ("prefect", "dash", "plotly", "ingester", "stack", "flows", "dash_app", "stomp", "h5py", "zarr")
# What of mlex_tomo the image ships (segmentation/Containerfile); the rest of it is blocked.
SHIPPED_CORE = {
    "mlex_tomo": "mlex_tomo/__init__.py",
    "mlex_tomo.tiled_names": "mlex_tomo/tiled_names.py",
    "mlex_tomo.validation": "mlex_tomo/validation.py",
}


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;#]+)\s*", line)
        if match:
            found[match.group(1).lower()] = match.group(3)
    return found


def test_requirements_and_base_image_agree_with_pyproject():
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    declared = pins(project["dependencies"] + project["optional-dependencies"]["segmentation"])
    required = pins((REPOSITORY / "segmentation" / "requirements.txt").read_text().splitlines())
    assert required, "segmentation/requirements.txt pins nothing"
    for name, version in required.items():
        assert declared.get(name) == version, f"{name}=={version} in requirements.txt, {declared.get(name)} in pyproject"
    containerfile = (REPOSITORY / "segmentation" / "Containerfile").read_text()
    base_torch = re.search(r"ARG BASE_IMAGE=\S+/pytorch:(\d+\.\d+\.\d+)-cuda", containerfile)
    assert base_torch and base_torch.group(1) == declared["torch"]


def test_the_job_runs_without_the_rest_of_the_stack(tmp_path):
    """Import everything the job can reach with the stack's other packages made unimportable."""
    blocker = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {BLOCKED!r} or (name.startswith("mlex_tomo") and name not in {tuple(SHIPPED_CORE)!r}):
            raise ImportError("the job image does not hold " + name)
sys.meta_path.insert(0, Block())
import importlib, pkgutil, runpy, segmentation
for module in pkgutil.iter_modules(segmentation.__path__):
    if module.name != "__main__":
        importlib.import_module("segmentation." + module.name)
sys.argv = ["segmentation", "--help"]
runpy.run_module("segmentation", run_name="__main__")
"""
    completed = subprocess.run(
        [sys.executable, "-c", blocker], cwd=REPOSITORY, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage: python -m segmentation" in completed.stdout
    containerfile = (REPOSITORY / "segmentation" / "Containerfile").read_text()
    assert f"COPY {' '.join(SHIPPED_CORE.values())} mlex_tomo/" in containerfile
