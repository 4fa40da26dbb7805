"""``setpoint update-versions``: follow each Release's ``versionPolicy`` in Git.

Role: for every Release of the stack whose effective spec has
``versionPolicy: {semver: RANGE, index: URL}``, reads the index (a JSON list of
``{version, url, sha256}``; ``file://`` or ``https://``; an entry's relative
``url`` is taken relative to the index), picks the newest version in RANGE
(:mod:`setpoint.model.semver`, Flux's grammar), downloads that archive and checks
its SHA-256, then sets ``spec.version``, ``spec.url`` and ``spec.sha256`` where
they are declared (:class:`~setpoint.writeback.setfield.FieldSetter`). An entry
whose archive does not match its ``sha256`` is refused (no older version is
tried in its place: a mismatch is a fault to look at, not to route around).
It changes Git only, never the host.

The decisions (and downloads) are made once; a retry on a moved branch
re-applies them, with the same conflict rule as ``set``.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from setpoint.model.errors import SetpointError
from setpoint.model.semver import InvalidRange, Range, Version, highest
from setpoint.writeback.setfield import FieldSetter
from setpoint.writeback.stack import assemble
from setpoint.writeback.transaction import Change
from setpoint.writeback.yamledit import Path as FieldPath
from setpoint.writeback.yamledit import get_in

POLICY = ("spec", "versionPolicy")
MAX_INDEX = 8 << 20
TIMEOUT = 60.0
_CHUNK = 1 << 20


class PolicyError(SetpointError):
    """A Release's policy could not be followed; the message names the Release."""


def _open(url: str) -> Any:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return open(unquote(parts.path), "rb")
    if parts.scheme == "https":
        return urllib.request.urlopen(url, timeout=TIMEOUT)  # noqa: S310 (scheme checked)
    raise PolicyError(f"{url}: only file:// and https:// URLs are followed")


def read_index(url: str) -> list[dict[str, str]]:
    try:
        with _open(url) as fh:
            data = fh.read(MAX_INDEX + 1)
    except OSError as exc:
        raise PolicyError(f"cannot read the index {url}: {exc}") from exc
    if len(data) > MAX_INDEX:
        raise PolicyError(f"the index {url} is larger than {MAX_INDEX} bytes")
    try:
        entries = json.loads(data)
    except ValueError as exc:
        raise PolicyError(f"the index {url} is not JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise PolicyError(f"the index {url} must be a JSON list of {{version, url, sha256}}")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not all(
            isinstance(e.get(k), str) for k in ("version", "url", "sha256")
        ):
            raise PolicyError(f"the index {url}: entry {i} needs string version, url and sha256")
        out.append(
            {"version": e["version"], "url": urljoin(url, e["url"]), "sha256": e["sha256"].lower()}
        )
    return out


def sha256_of(url: str) -> str:
    digest = hashlib.sha256()
    try:
        with _open(url) as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise PolicyError(f"cannot download {url}: {exc}") from exc
    return digest.hexdigest()


@dataclass
class Decision:
    rid: str
    version: str
    url: str
    sha256: str


@dataclass
class VersionUpdate:
    """The edit of ``update-versions`` for one stack path."""

    stack_path: str
    decisions: list[Decision] | None = None
    errors: list[str] = field(default_factory=list)
    setters: dict[str, FieldSetter] = field(default_factory=dict)

    def decide(self, tree: Path) -> list[Decision]:
        out = []
        for doc in assemble(tree, self.stack_path).docs:
            if doc.kind != "Release":
                continue
            eff = doc.effective()
            policy = get_in(eff, POLICY)
            if policy is None:
                continue
            try:
                decision = self._decide(doc.id, policy, get_in(eff, ("spec", "version")))
            except PolicyError as exc:
                self.errors.append(str(exc))
                continue
            if decision is not None:
                out.append(decision)
        return out

    def _decide(self, rid: str, policy: Any, current: Any) -> Decision | None:
        if (
            not isinstance(policy, dict)
            or not isinstance(policy.get("semver"), str)
            or not isinstance(policy.get("index"), str)
        ):
            raise PolicyError(f"{rid}: versionPolicy needs semver: RANGE and index: URL")
        try:
            wanted = Range.parse(policy["semver"])
        except InvalidRange as exc:
            raise PolicyError(f"{rid}: versionPolicy.semver: {exc}") from None
        entries = read_index(policy["index"])
        best = highest(wanted, [e["version"] for e in entries])
        if best is None:
            raise PolicyError(
                f"{rid}: no version in {policy['index']} matches {policy['semver']!r}"
            )
        if isinstance(current, str | int | float) and _not_older(str(current), best, wanted):
            return None
        entry = next(e for e in entries if e["version"] == best)
        got = sha256_of(entry["url"])
        if got != entry["sha256"]:
            raise PolicyError(
                f"{rid}: refused {best}: the archive {entry['url']} has SHA-256 {got}, the index "
                f"says {entry['sha256']}; the Release stays at {current}"
            )
        return Decision(rid, best, entry["url"], entry["sha256"])

    def __call__(self, tree: Path) -> list[Change]:
        if self.decisions is None:
            self.decisions = self.decide(tree)
        changes = []
        for d in self.decisions:
            setter = self.setters.get(d.rid)
            if setter is None:
                pairs: list[tuple[FieldPath, str]] = [
                    (("spec", "version"), d.version),
                    (("spec", "url"), d.url),
                    (("spec", "sha256"), d.sha256),
                ]
                setter = self.setters[d.rid] = FieldSetter(self.stack_path, d.rid, pairs)
            changes.extend(setter(tree))
        return changes


def _not_older(current: str, best: str, wanted: Range) -> bool:
    """Whether the declared version already is the newest in range (or newer, and in range)."""
    if current == best:
        return True
    try:
        return wanted.allows(Version.parse(current)) and Version.parse(current) >= Version.parse(
            best
        )
    except InvalidRange:
        return False


def subject(changes: list[Change]) -> str:
    bumps = sorted(
        {f"{c.rid.partition('/')[2]} {c.new}" for c in changes if c.field == "spec.version"}
    )
    text = "update-versions: " + ", ".join(bumps)
    return text if len(text) <= 72 else text[:69] + "..."
