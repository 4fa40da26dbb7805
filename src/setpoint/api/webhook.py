"""Webhook authentication and payload matching for ``POST /hooks/git``. No I/O.

Three ways to sign a call, each checked in constant time against the configured
secret (``--webhook-secret-file`` / ``webhookSecretFile:``):

- GitHub (and Gitea, Forgejo): ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``
- GitLab: ``X-Gitlab-Token: <the secret itself>``
- anything else (a CI job, a git hook): ``X-Setpoint-Signature: sha256=<hex HMAC-SHA256>``

Which sources a valid call refreshes: the repository URLs in the payload
(GitHub's ``repository.clone_url/ssh_url/git_url/html_url/url``, GitLab's
``project.git_http_url/git_ssh_url/web_url`` and ``repository.url/homepage``,
or a plain ``{"repository": {"url": ...}}``) are compared with each source's
URL, ignoring the scheme, user, a trailing ``.git`` and ``/`` and the host's
case. A payload naming no URL refreshes every source; one naming URLs that
match no source refreshes none.

Example::

    sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert verify_signature({"x-setpoint-signature": sig}, body, secret)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

GITHUB_HEADER = "x-hub-signature-256"
GITLAB_HEADER = "x-gitlab-token"
GENERIC_HEADER = "x-setpoint-signature"


def _hmac_ok(given: str, secret: bytes, body: bytes) -> bool:
    want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.strip().lower().encode(), want.encode())


def verify_signature(headers: Mapping[str, str], body: bytes, secret: bytes | None) -> bool:
    """True when the call carries a valid signature or token (headers: lower-case names)."""
    if not secret:
        return False  # no secret configured: webhooks are off
    if GITHUB_HEADER in headers:
        return _hmac_ok(headers[GITHUB_HEADER], secret, body)
    if GENERIC_HEADER in headers:
        return _hmac_ok(headers[GENERIC_HEADER], secret, body)
    if GITLAB_HEADER in headers:
        return hmac.compare_digest(headers[GITLAB_HEADER].encode(), secret)
    return False


def payload_urls(body: bytes) -> list[str]:
    """Repository URLs named in a GitHub, GitLab or plain JSON payload ([] if none or not JSON)."""
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    out: list[str] = []
    for section, keys in (
        ("repository", ("clone_url", "ssh_url", "git_url", "html_url", "url", "homepage")),
        ("project", ("git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url")),
    ):
        part: Any = data.get(section)
        if isinstance(part, dict):
            out += [v for k in keys if isinstance(v := part.get(k), str) and v]
    return out


def url_key(url: str) -> str:
    """A comparable form of a Git URL: host (lower case) + path, no scheme/user/.git/slash."""
    u = url.strip()
    m = re.match(r"^[a-z][a-z0-9+.-]*://(?:[^/@]*@)?([^/]*)(/.*)?$", u, re.IGNORECASE)
    if m:
        host, path = m.group(1).lower(), m.group(2) or ""
        if u.lower().startswith("file://"):
            host, path = "", os.path.normpath(path)
        host = re.sub(r":\d+$", "", host)
    elif re.match(r"^[^/]*:", u):  # scp-like user@host:path
        hostpart, _, path = u.partition(":")
        host = hostpart.rpartition("@")[2].lower()
        path = "/" + path.lstrip("/")
    else:
        host, path = "", os.path.normpath(os.path.abspath(u))
    path = path.rstrip("/")
    if path.endswith(".git"):
        path = path[:-4]
    return f"{host}{path}"


def match_sources(urls: Iterable[str], sources: Mapping[str, str]) -> list[str]:
    """Names of the sources (name -> URL) whose URL is one of ``urls``; all if ``urls`` is empty."""
    keys = {url_key(u) for u in urls}
    if not keys:
        return sorted(sources)
    return sorted(name for name, url in sources.items() if url_key(url) in keys)
