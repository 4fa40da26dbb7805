"""Who may use the HTTP API: bearer tokens with a scope, anonymous reads, TLS.

Rules (``api:`` in the config; README "HTTP API"):

- ``STATE/api-token`` (written by the agent, 0600) is a write token; ``api.tokens``
  add more, each ``{file, scope: read|write}``; a token file must be mode 0600
  (not readable by group or others), else the agent refuses to start, naming it.
- Reads (``GET``) are anonymous when ``anonymousRead`` is true; it defaults to
  true on a loopback listener and false elsewhere. Writes always need a write token.
- A listener on a non-loopback address needs TLS (``api.tls``), else the agent
  refuses to start.
- A wrong or missing token is answered 401; tokens are compared in constant time
  and never logged. The web UI may hold a read token in the ``setpoint_token``
  cookie (reads only: a cookie is sent by the browser on its own, so it must never
  authorise a write).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from setpoint.config import AgentConfig, ConfigError

if TYPE_CHECKING:  # FastAPI is loaded by the server only: `setpoint agent` checks its
    # config with check_startup before it knows whether it will listen at all
    from fastapi import Request

COOKIE = "setpoint_token"
READ, WRITE = "read", "write"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_host(listen: str) -> str:
    return listen.rpartition(":")[0].strip("[]")


def read_token_file(path: Path, what: str) -> str:
    """The token in ``path``; refused unless the file is mode 0600 or stricter."""
    try:
        st = os.stat(path)
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{what}: {path} has mode {mode:04o}; a token file must not be readable by "
            f"others (chmod 600 {path})"
        )
    if not text:
        raise ConfigError(f"{what}: {path} is empty")
    return text


def check_startup(cfg: AgentConfig) -> None:
    """Refuse to start on an unsafe API config (ConfigError saying what to do).

    With ``listen: off`` only what does not belong to the API (notification secrets)
    is checked: ``api:`` is unused then.
    """
    if cfg.api_on:
        _check_api(cfg)
    for st in cfg.stacks:
        for j, n in enumerate(st.notifications):
            if n.secret_file is not None:
                read_token_file(n.secret_file, f"stacks.{st.name}.notifications[{j}].secretFile")


def _check_api(cfg: AgentConfig) -> None:
    api = cfg.api
    if not is_loopback(listen_host(cfg.listen)) and api.tls is None:
        raise ConfigError(
            f"listen: {cfg.listen} is not a loopback address: the API would send tokens and "
            "status in clear; give api: {tls: {certFile: ..., keyFile: ...}} or listen on "
            "127.0.0.1"
        )
    if api.tls is not None:
        for p in (api.tls.cert_file, api.tls.key_file):
            if not p.is_file():
                raise ConfigError(f"api.tls: {p} does not exist or is not a file")
        read_token_file(api.tls.key_file, "api.tls.keyFile")  # a private key: 0600 too
    for i, t in enumerate(api.tokens):
        read_token_file(t.file, f"api.tokens[{i}]")


@dataclass
class ApiAuth:
    anonymous_read: bool
    tokens: list[tuple[bytes, str]] = field(default_factory=list)  # (token, scope)

    @classmethod
    def from_config(cls, cfg: AgentConfig, write_token: str) -> ApiAuth:
        anon = cfg.api.anonymous_read
        if anon is None:
            anon = is_loopback(listen_host(cfg.listen))
        tokens = [(write_token.encode(), WRITE)]
        for i, t in enumerate(cfg.api.tokens):
            tokens.append((read_token_file(t.file, f"api.tokens[{i}]").encode(), t.scope))
        return cls(anon, tokens)

    def scope_of(self, token: str) -> str | None:
        given = token.encode()
        found = None
        for tok, scope in self.tokens:  # every one compared: no early exit to time
            if hmac.compare_digest(given, tok):
                found = scope if found != WRITE else found
        return found

    def allowed(self, request: Request, need: str) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        scope = self.scope_of(token.strip()) if scheme.lower() == "bearer" and token else None
        if scope is None and need == READ:
            cookie = request.cookies.get(COOKIE)
            scope = self.scope_of(cookie) if cookie else None
        if need == READ:
            return scope is not None or self.anonymous_read
        return scope == WRITE

    def require(self, request: Request, need: str) -> None:
        if not self.allowed(request, need):
            from fastapi import HTTPException

            raise HTTPException(
                status_code=401,
                detail=f"missing or wrong token ({need} access needs a {need} token)",
                headers={"WWW-Authenticate": "Bearer"},
            )
