"""The web app for a WSGI server: `gunicorn --workers 1 --threads 8 -b 0.0.0.0:8075 dash_app.wsgi:server`.

Settings come from MLEX_TOMO_CONFIG and MLEX_TOMO_* variables, as for every part.
"""

from dash_app.app import create_app
from mlex_tomo.settings import load_settings

server = create_app(load_settings()).server
