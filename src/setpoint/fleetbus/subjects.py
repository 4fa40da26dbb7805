"""Subjects and commit notices of the fan-out. No I/O; does not import ``nats``.

A source's subject is ``setpoint.source.<first 16 hex digits of sha256(url_key(URL))>``,
where :func:`setpoint.api.webhook.url_key` is the normalisation the webhook matching
uses (scheme, user, port, a trailing ``.git`` and ``/`` and the host's case ignored),
so ``https://git.example/ops/infra.git`` and ``git@git.example:ops/infra`` share one
subject. Hashing keeps repository names out of subject names (and their dots out of
the subject's tokens). The payload is JSON ``{"url": ..., "ref": ..., "commit": ...}``
(ref and commit may be null: "something moved, check").

Used by :mod:`setpoint.fleetbus.bus` (agents) and :mod:`setpoint.fleetbus.relay`.

Example::

    >>> subject_for("https://git.example/ops/infra.git") == subject_for("git@git.example:ops/infra")
    True
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from setpoint.api.webhook import payload_urls, url_key

SUBJECT_PREFIX = "setpoint.source."
MAX_NOTICE_BYTES = 4096  # a notice is three short strings; anything larger is not ours
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def source_key(url: str) -> str:
    """The 16 hex digits that name a repository on the bus."""
    return hashlib.sha256(url_key(url).encode()).hexdigest()[:16]


def subject_for(url: str) -> str:
    return SUBJECT_PREFIX + source_key(url)


@dataclass(frozen=True)
class CommitNotice:
    """"``ref`` of ``url`` is now at ``commit``" (either may be None: "check it")."""

    url: str
    ref: str | None = None
    commit: str | None = None

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @property
    def subject(self) -> str:
        return subject_for(self.url)


def decode_notice(data: bytes) -> CommitNotice | None:
    """The notice in a message, or None when it is not one (ignored, never an error)."""
    if len(data) > MAX_NOTICE_BYTES:
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("url"), str) or not obj["url"]:
        return None
    ref, commit = obj.get("ref"), obj.get("commit")
    ref = ref if isinstance(ref, str) and ref else None
    commit = commit.lower() if isinstance(commit, str) and _SHA.match(commit.lower()) else None
    return CommitNotice(obj["url"], ref, commit)


def push_info(body: bytes) -> tuple[str | None, str | None]:
    """``(ref, commit)`` a push webhook announces (GitHub/Gitea/GitLab/plain ``after``)."""
    try:
        data: Any = json.loads(body) if body.strip() else None
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    ref = data.get("ref") if isinstance(data.get("ref"), str) else None
    commit = None
    for key in ("after", "checkout_sha", "commit"):
        value = data.get(key)
        if isinstance(value, str) and _SHA.match(value.lower()) and set(value) != {"0"}:
            commit = value.lower()  # all zeros: the ref was deleted
            break
    return ref, commit


def notices_from_webhook(body: bytes) -> list[CommitNotice]:
    """One notice per repository a (verified) webhook body names; [] if it names none."""
    ref, commit = push_info(body)
    seen: dict[str, CommitNotice] = {}
    for url in payload_urls(body):
        seen.setdefault(source_key(url), CommitNotice(url, ref, commit))
    return list(seen.values())


def notices_for_sources(
    body: bytes, sources: list[str], urls: dict[str, str]
) -> list[CommitNotice]:
    """An agent's webhook: one notice per matched source's repository (its own URL)."""
    ref, commit = push_info(body)
    seen: dict[str, CommitNotice] = {}
    for name in sources:
        url = urls[name]
        seen.setdefault(source_key(url), CommitNotice(url, ref, commit))
    return list(seen.values())


def ref_may_match(source_ref: str, pushed: str | None) -> bool:
    """False only when both name branches and they differ (a push to another branch).

    Tags, semver ranges, commits and anything unclear count as a match: the cost of a
    false match is one ls-remote, the cost of a false miss a poll interval.
    """
    if pushed is None or not pushed.startswith("refs/heads/"):
        return True
    mine = source_ref.removeprefix("refs/heads/")
    if mine.startswith("refs/") or _SHA.match(mine) or re.fullmatch(r"[0-9a-f]{7,39}", mine):
        return True
    return pushed.removeprefix("refs/heads/") == mine
