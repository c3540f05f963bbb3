"""Bearer-token authentication for our HTTP transports. Any user of a shared node can
reach one of its loopback ports, so a port alone proves nothing: a client must also send
``Authorization: Bearer <token>``, where the token is in a file only we can read.

    $XDG_RUNTIME_DIR/ensemble_launcher/       (0700)
        mcp-<port>.token                      (0600)  while the server on <port> serves

Without XDG_RUNTIME_DIR (batch nodes often have none), the directory is
``~/.ensemble_launcher/<host>/``, which a login node sharing the home directory can read
too. The token is random for each ``run()`` unless the server was given one, and lives in
that file and in the server's memory only: never in an environment, so no task sees it.
The SDK refuses the requests (its bearer middleware answers 401); we only check tokens.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from pydantic import AnyHttpUrl

from ensemble_launcher.cluster.checkpoint import private_directory, write_private
from ensemble_launcher.errors import ConfigError

log = logging.getLogger("ensemble_launcher")

#: Characters a token may have: those of secrets.token_urlsafe, and more, but nothing an
#: HTTP header would mangle (no spaces, nothing outside printable ASCII).
_TOKEN_CHARS = frozenset(map(chr, range(0x21, 0x7F)))
_MIN_TOKEN = 16


class BearerToken:
    """The SDK's ``TokenVerifier`` for one token: the server's, set while it serves HTTP.
    Before and after, no token is accepted."""

    def __init__(self, given: str | None) -> None:
        if given is not None:
            check_token(given)
        self.given = given
        self.token: str | None = None

    async def verify_token(self, token: str) -> AccessToken | None:
        expected = self.token
        if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
            return None
        return AccessToken(token=token, client_id="bearer", scopes=[])

    @contextlib.contextmanager
    def serving(self, port: int) -> Iterator[Path]:
        """The token for this run, in its file while the block runs; removed after."""
        path = token_path(port)
        private_directory(path.parent, "the MCP token directory")
        token = self.given or secrets.token_urlsafe(32)
        write_private(path, token.encode())
        self.token = token
        log.info("MCP clients must send 'Authorization: Bearer <token>'; the token is in %s",
                 path)
        try:
            yield path
        finally:
            self.token = None
            path.unlink(missing_ok=True)


def check_token(token: object) -> None:
    """A token given to a server must be one a header carries unchanged, and not short.
    The error never shows the token."""
    if not isinstance(token, str) or len(token) < _MIN_TOKEN or \
            not _TOKEN_CHARS.issuperset(token):
        raise ConfigError(f"token= must be a string of at least {_MIN_TOKEN} printable ASCII "
                          "characters without spaces (for instance secrets.token_urlsafe(32))"
                          f", not a {type(token).__name__}"
                          f"{f' of {len(token)} characters' if isinstance(token, str) else ''}")


def token_path(port: int) -> Path:
    """Where the server on ``port`` of this host keeps its token while it serves."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    directory = Path(runtime) / "ensemble_launcher" if runtime else \
        Path.home() / ".ensemble_launcher" / socket.gethostname()
    return directory / f"mcp-{port}.token"


def auth_settings() -> AuthSettings:
    """What the SDK needs to put its bearer middleware in front of every transport route.
    With no resource_server_url and no OAuth provider, the SDK serves no OAuth routes or
    metadata, and uses the issuer nowhere."""
    return AuthSettings(issuer_url=AnyHttpUrl("http://localhost"), resource_server_url=None)
