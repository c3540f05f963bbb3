"""The dashboard's HTTP server: one page, its two assets and a JSON API, behind a token.

    GET /?token=T        sets the token's cookie and sends the browser to /
    GET /                the page (static/index.html), which polls:
    GET /api/run         the run's snapshot (:meth:`RunView.snapshot`)
    GET /api/search?q=   the tasks whose id holds q

Any user of a node can reach its loopback ports, so every request must carry the token
(the ``token`` query parameter, or the cookie the first visit set); any other gets 403.
The token is random for each server, compared in constant time, printed in the URL (as
Jupyter does) and kept nowhere else but in this process's memory.

We use the standard library's threading HTTP server rather than starlette and uvicorn:
the dashboard answers a few GET requests a second from one user, and so it works
wherever the launcher is installed, with no extra to install on a login or compute node.
It serves fixed routes only (no file paths from requests), and each connection is a
thread with a timeout, so a stalled client holds nothing else up.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
import socket
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ensemble_launcher.comm.addresses import check_not_wildcard
from ensemble_launcher.dashboard.data import RunView
from ensemble_launcher.errors import ConfigError, StoreError

log = logging.getLogger("ensemble_launcher")

DEFAULT_BIND = "127.0.0.1"
_ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
           "/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/style.css": ("style.css", "text/css; charset=utf-8")}
#: The page's scripts, styles and data come from this server only; nothing is framed.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store", "X-Frame-Options": "DENY"}
_REQUEST_TIMEOUT = 30.0


def asset(name: str) -> bytes:
    """One of the page's files, shipped in the package."""
    return (resources.files("ensemble_launcher.dashboard") / "static" / name).read_bytes()


def check_bind(address: str) -> str:
    """``address`` when it is one IP address (or ``localhost``); ConfigError otherwise,
    wildcards above all: they would serve the run to every network the host is on."""
    try:
        check_not_wildcard(address)
    except ValueError:
        raise ConfigError(f"--bind {address!r} listens on every interface of the host, "
                          f"which we never do; give one address (default {DEFAULT_BIND}) "
                          "and reach it from a laptop through ssh -L") from None
    if address == "localhost":
        return address
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        raise ConfigError(f"--bind {address!r} is not an IP address (default "
                          f"{DEFAULT_BIND})") from None
    return address.strip("[]")


class DashboardServer(ThreadingHTTPServer):
    """Serves one run's dashboard on ``bind``:``port`` (0: a free port) with a fresh token."""

    daemon_threads = True

    def __init__(self, run_dir: str | Path, *, port: int = 0, bind: str = DEFAULT_BIND,
                 token: str | None = None) -> None:
        bind = check_bind(bind)
        self.address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.view = RunView(run_dir)
        self.token = token or secrets.token_urlsafe(32)
        super().__init__((bind, port), _handler_for(self))

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def host(self) -> str:
        return str(self.server_address[0])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    @property
    def cookie_name(self) -> str:
        """One cookie per port: a browser keeps cookies per host, whatever the port, and
        two dashboards on one host must not replace each other's."""
        return f"el-dashboard-{self.port}"

    def authorized(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _handler_for(server: DashboardServer) -> Callable[..., BaseHTTPRequestHandler]:
    class Handler(_Handler):
        dashboard = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    dashboard: DashboardServer
    timeout = _REQUEST_TIMEOUT
    server_version = "ensemble_launcher-dashboard"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        given = query.get("token", [None])[0]
        if given is not None and self.dashboard.authorized(given) and url.path == "/":
            self._enter(given)
            return
        if not self.dashboard.authorized(given or self._cookie()):
            self._refuse()
            return
        if url.path in _ASSETS:
            name, kind = _ASSETS[url.path]
            self._send(HTTPStatus.OK, asset(name), kind)
        elif url.path == "/api/run":
            self._json(self.dashboard.view.snapshot)
        elif url.path == "/api/search":
            text = query.get("q", [""])[0].strip()
            self._json(lambda: self.dashboard.view.search(text))
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:  # noqa: N802
        self._refuse_or_not_allowed()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD  # noqa: N815

    def _refuse_or_not_allowed(self) -> None:
        if not self.dashboard.authorized(self._cookie()):
            self._refuse()
        else:
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"the dashboard only reads\n",
                       "text/plain; charset=utf-8")

    def _enter(self, token: str) -> None:
        """Keep the token in a cookie for this port, and take it out of the address bar."""
        self.send_response(HTTPStatus.SEE_OTHER)
        self.send_header("Location", "/")
        self.send_header("Set-Cookie", f"{self.dashboard.cookie_name}={token}; Path=/; "
                                       "HttpOnly; SameSite=Strict")
        self._finish_headers(0)

    def _cookie(self) -> str | None:
        cookies = SimpleCookie()
        try:
            cookies.load(self.headers.get("Cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no token
            return None
        morsel = cookies.get(self.dashboard.cookie_name)
        return None if morsel is None else morsel.value

    def _refuse(self) -> None:
        self._send(HTTPStatus.FORBIDDEN, b"403: this dashboard needs its token: open the URL "
                                         b"that el dashboard printed\n",
                   "text/plain; charset=utf-8")

    def _json(self, make: Callable[[], Any]) -> None:
        try:
            body, status = json.dumps(make(), default=str).encode(), HTTPStatus.OK
        except StoreError as exc:
            body = json.dumps({"error": str(exc)}).encode()
            status = HTTPStatus.SERVICE_UNAVAILABLE
        self._send(status, body, "application/json")

    def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self._finish_headers(len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _finish_headers(self, length: int) -> None:
        self.send_header("Content-Length", str(length))
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        """Requests are not logged: their URLs may hold the token."""
