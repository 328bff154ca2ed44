"""Fixtures every test module may use, and the service logs shown with a failure."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from tests.services import Services

pytest_plugins = ["tests.browser"]

LOG_LINES_ON_FAILURE = 15


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure against real services shows the end of their logs: CI keeps nothing else."""
    report = yield
    services = item.funcargs.get("services") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and isinstance(services, Services):
        for log in sorted(services.settings.logs_path.glob("*.log")):
            report.sections.append((f"{log.name}, last {LOG_LINES_ON_FAILURE} lines", _tail(log)))
    return report


def _tail(path: Path) -> str:
    with path.open(errors="replace") as lines:
        return "".join(deque(lines, maxlen=LOG_LINES_ON_FAILURE))
