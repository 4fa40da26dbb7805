"""Credentials masked out of URLs before a URL is shown (plans, errors, the journal, status).

Pure (no I/O). Used by the Release kind (:mod:`setpoint.providers.services.release`: download
errors), the Service probes (:mod:`setpoint.providers.services.probes`: health messages) and the
spec validators; :func:`setpoint.source.git.redact_url` follows the same rule for Git URLs.

A URL can carry a secret in two places: its user part (``user:password@`` or, for
http(s), a token as the whole user part) and its query string (pre-signed URLs:
``?X-Amz-Signature=...``, ``?token=...``). Both are masked; the host and path stay, so an
operator still sees *what* was fetched.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
QUERY_MASK = "?…redacted"

_URL = re.compile(r"^([a-z][a-z0-9+.-]*://)([^/?#]*)(.*)$", re.IGNORECASE | re.DOTALL)


def redact_url(url: str, *, query: bool = True) -> str:
    """``url`` with its password (for http(s) the whole user part) and query string masked.

    ``query=False`` keeps the query string (Git URLs have none that carries a secret).
    Anything that is not ``scheme://...`` (a path, scp-like ``user@host:path``) is
    returned unchanged: it has no place for a password.
    """
    match = _URL.match(url)
    if not match:
        return url
    scheme, netloc, rest = match.groups()
    userinfo, at, host = netloc.rpartition("@")
    if at:
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + MASK
        elif scheme.lower().startswith("http"):
            userinfo = MASK
        netloc = userinfo + at + host
    if query and "?" in rest:
        rest = rest.partition("?")[0] + QUERY_MASK  # a fragment after it goes too
    return scheme + netloc + rest


def secrets_of(url: str) -> list[str]:
    """The parts of ``url`` that :func:`redact_url` masks (raw and percent-decoded)."""
    match = _URL.match(url)
    if not match:
        return []
    scheme, netloc, rest = match.groups()
    parts: list[str] = [url]
    userinfo, at, _host = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            parts.append(password)
        elif scheme.lower().startswith("http"):
            parts.append(user)
    if "?" in rest:
        parts.append(rest.partition("?")[2])
    out = {p for raw in parts if raw for p in (raw, unquote(raw))}
    return sorted(out, key=len, reverse=True)  # the whole URL first, then the longest


def redact_text(text: str, url: str) -> str:
    """``text`` (an error message about ``url``) with every secret part of ``url`` masked.

    A library's error may quote a piece of the URL (``nonnumeric port: 'pw@host'``):
    the URL itself becomes its redacted form, and a password, token or query string
    found anywhere else in the text becomes ``***``.
    """
    safe = redact_url(url)
    for secret in secrets_of(url):
        if secret == url:
            text = text.replace(url, safe)
        elif len(secret) >= 3:  # a one- or two-letter "secret" would mangle the message
            text = text.replace(secret, MASK)
    return text
