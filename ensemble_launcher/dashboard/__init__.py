"""``el dashboard``: a live page of one run (or cluster) in the browser, read-only.

:class:`~ensemble_launcher.dashboard.server.DashboardServer` serves the page and its JSON
API behind a token; :mod:`~ensemble_launcher.dashboard.data` reads what the page shows from
the run directory, and writes nothing there.
"""

from ensemble_launcher.dashboard.data import RunView
from ensemble_launcher.dashboard.server import DEFAULT_BIND, DashboardServer, check_bind

__all__ = ["DEFAULT_BIND", "DashboardServer", "RunView", "check_bind"]
