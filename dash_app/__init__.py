"""Dash segmentation UI (issue 6)."""
