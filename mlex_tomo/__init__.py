"""Shared core of mlex-tomo: settings, Tiled layout, models, CLI and the local stack."""
