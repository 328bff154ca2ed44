"""Tiled server configuration shipped with mlex-tomo.

`config.yml` is an ordinary Tiled config file; the paths and the API key come from
environment variables that `mlex-tomo up` (or the compose file) sets, so the same file
serves a laptop and a beamline deployment.
"""

from pathlib import Path

CONFIG_PATH = Path(__file__).with_name("config.yml")
