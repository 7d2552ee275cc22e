"""The live dashboard at ``/dashboard`` on the REST port (``--dashboard=false`` turns it off).

``snapshot.py`` builds the state document from the server's own sources, ``series.py`` keeps
the per-model request time series, ``loads.py`` records load times and memory growth,
``examples.py`` builds "try it" requests, ``routes.py`` serves the page (``static/``: one
HTML, one JS and one CSS file, no external asset) and its JSON API. See docs/dashboard.md.
"""

from pyserving.server.dashboard.routes import install_dashboard_routes
from pyserving.server.dashboard.snapshot import Dashboard, ServerInfo

__all__ = ["Dashboard", "ServerInfo", "install_dashboard_routes"]
