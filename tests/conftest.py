"""Fixtures every test module may use."""

pytest_plugins = ["tests.browser"]
