"""Semver ranges in Flux's convention (the constraint grammar of Masterminds/semver).

Role: pure parsing and matching, no I/O. Used by ``update-versions`` (a Release's
``versionPolicy.semver``) and by sources following ``ref: {semver: RANGE}``, so a
range means the same thing wherever a user writes one, and the same as in Flux.

Grammar (ported from Masterminds/semver v3 ``constraints.go``, whose test tables
``tests/test_semver.py`` carries over):

- comparisons ``=`` ``!=`` ``>`` ``<`` ``>=`` ``<=`` (also ``=>`` ``=<``), a bare
  version meaning ``=``;
- a space or a comma between comparisons means AND; ``||`` means OR;
- ``^1.4`` (same major; for 0.x the same minor), ``~1.4`` / ``~>1.4`` (same minor),
  ``1.x`` / ``1.*`` / ``1`` (wildcards), ``1.2 - 1.4`` (inclusive hyphen range);
- a version may start with ``v``; missing minor/patch parts are wildcards;
- pre-releases match only when the OR group they are checked against names a
  pre-release itself (``>=1.0.0-0`` admits every pre-release of 1.x and later).

Example::

    r = Range.parse(">=1.4 <2")
    r.matches("1.4.3")                        # True
    highest(r, ["1.3.9", "1.9.0", "2.0.0"])   # "1.9.0"
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Masterminds' version regex: "loose" in that 1 and 1.4 are versions (1.0.0, 1.4.0).
_NUM = r"(?:0|[1-9]\d*)"
_PRE_ID = r"(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
_VERSION_RE = re.compile(
    rf"^v?({_NUM})(?:\.({_NUM}))?(?:\.({_NUM}))?"
    rf"(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

# The constraint regexes, as in constraints.go (Go's regexp and Python's re pick
# the same leftmost-first match, so the port keeps the behaviour exactly). The
# character classes [0-9|x|X|\*] admit "|" as Masterminds' do; such a version is
# refused when it is parsed.
_CV = (
    r"v?([0-9|x|X|\*]+)(\.[0-9|x|X|\*]+)?(\.[0-9|x|X|\*]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
    r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
)
_OPS = r"=||!=|>|<|>=|=>|<=|=<|~|~>|\^"
_CONSTRAINT_RE = re.compile(rf"^\s*({_OPS})\s*({_CV})\s*$")
_HYPHEN_RE = re.compile(rf"\s*({_CV})\s+-\s+({_CV})\s*")
_FIND_RE = re.compile(rf"({_OPS})\s*({_CV})")
_VALID_RE = re.compile(rf"^(\s*({_OPS})\s*({_CV})\s*)((?:\s+|,\s*)({_OPS})\s*({_CV})\s*)*$")
_X = frozenset({"x", "X", "*"})
_EXAMPLES = (
    "e.g. '>=1.4 <2', '^1.4', '~1.4.2', '1.x', '>=1.4 || 0.9.x', '>=2.0.0-0' for pre-releases"
)


class InvalidRange(ValueError):
    """A range or a version that does not parse; the message says what is accepted."""


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A semantic version; ordering follows semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    pre: str = ""
    metadata: str = ""
    original: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        """``1.4.2``, ``v1.4.2``, ``1.4`` (= 1.4.0), ``1.4.2-rc.1+build.5``; else InvalidRange."""
        m = _VERSION_RE.match(text)
        if m is None:
            raise InvalidRange(
                f"{text!r} is not a semantic version (MAJOR[.MINOR[.PATCH]][-PRE][+BUILD], "
                "e.g. 1.4.2, v1.4.2-rc.1)"
            )
        return cls(
            int(m.group(1)),
            int(m.group(2) or 0),
            int(m.group(3) or 0),
            m.group(4) or "",
            m.group(5) or "",
            text,
        )

    def compare(self, other: Version) -> int:
        for a, b in (
            (self.major, other.major),
            (self.minor, other.minor),
            (self.patch, other.patch),
        ):
            if a != b:
                return 1 if a > b else -1
        if self.pre == other.pre:
            return 0
        if not self.pre:
            return 1
        if not other.pre:
            return -1
        return _compare_pre(self.pre, other.pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.compare(other) == 0

    def __lt__(self, other: Version) -> bool:
        return self.compare(other) < 0

    def __hash__(self) -> int:
        return hash((self.major, self.minor, self.patch, self.pre))

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        text += f"-{self.pre}" if self.pre else ""
        return text + (f"+{self.metadata}" if self.metadata else "")


def _compare_pre(a: str, b: str) -> int:
    pa, pb = a.split("."), b.split(".")
    for i in range(max(len(pa), len(pb))):
        d = _compare_part(pa[i] if i < len(pa) else "", pb[i] if i < len(pb) else "")
        if d:
            return d
    return 0


def _compare_part(s: str, o: str) -> int:
    if s == o:
        return 0
    if not s:
        return -1
    if not o:
        return 1
    s_num, o_num = s.isdigit(), o.isdigit()
    if s_num and o_num:
        return 1 if int(s) > int(o) else -1
    if s_num:  # numeric identifiers sort before alphanumeric ones
        return -1
    if o_num:
        return 1
    return 1 if s > o else -1


@dataclass(frozen=True)
class _Constraint:
    """One comparison: the operator, the version it compares to, and its wildcards."""

    op: str
    orig: str
    con: Version
    dirty: bool  # some part is a wildcard (or missing)
    minor_dirty: bool  # the minor part is (e.g. 1.x, 1)
    patch_dirty: bool  # only the patch part is (e.g. 1.4.x, 1.4)

    def check(self, v: Version, include_pre: bool) -> bool:
        if v.pre and not include_pre:
            return False
        return _CHECKS[self.op](v, self)

    def __str__(self) -> str:
        return self.op + self.orig


def _parse_constraint(text: str) -> _Constraint:
    if not text:  # the empty range is "*"
        return _Constraint("", "", Version(0, 0, 0), True, False, False)
    m = _CONSTRAINT_RE.match(text)
    if m is None:
        raise InvalidRange(f"{text.strip()!r} is not a comparison ({_EXAMPLES})")
    op, orig = m.group(1), m.group(2)
    major, minor, patch = m.group(3), m.group(4) or "", m.group(5) or ""
    pre = m.group(6) or ""
    dirty = minor_dirty = patch_dirty = False
    ver = orig
    if major in _X:
        ver, dirty = f"0.0.0{pre}", True
    elif minor.lstrip(".") in _X or not minor:
        ver, dirty, minor_dirty = f"{major}.0.0{pre}", True, True
    elif patch.lstrip(".") in _X or not patch:
        ver, dirty, patch_dirty = f"{major}{minor}.0{pre}", True, True
    try:
        con = Version.parse(ver)
    except InvalidRange:
        raise InvalidRange(f"{text.strip()!r}: {orig!r} is not a version ({_EXAMPLES})") from None
    return _Constraint(op, orig, con, dirty, minor_dirty, patch_dirty)


def _rewrite_hyphens(text: str) -> str:
    """``A - B`` becomes ``>= A, <= B `` (inclusive), exactly as Masterminds rewrites it."""
    out = text
    for m in _HYPHEN_RE.finditer(text):
        out = out.replace(m.group(0), f">= {m.group(1)}, <= {m.group(11)} ", 1)
    return out


@dataclass(frozen=True)
class Range:
    """A parsed range: OR of AND groups of comparisons. Build it with :meth:`parse`."""

    text: str
    groups: tuple[tuple[_Constraint, ...], ...]
    group_has_pre: tuple[bool, ...]

    @classmethod
    def parse(cls, text: str) -> Range:
        """Parse ``text``; raise :class:`InvalidRange` naming the part that is wrong."""
        if not isinstance(text, str):
            raise InvalidRange(f"a semver range is a string ({_EXAMPLES})")
        groups: list[tuple[_Constraint, ...]] = []
        has_pre: list[bool] = []
        for part in _rewrite_hyphens(text).split("||"):
            if not _VALID_RE.match(part):
                raise InvalidRange(
                    f"{text!r} is not a semver range: {part.strip()!r} ({_EXAMPLES})"
                )
            found = [m.group(0) for m in _FIND_RE.finditer(part)] or [part]
            group = tuple(_parse_constraint(s) for s in found)
            groups.append(group)
            has_pre.append(any(c.con.pre for c in group))
        return cls(text, tuple(groups), tuple(has_pre))

    def allows(self, version: Version) -> bool:
        return any(
            all(c.check(version, pre) for c in group)
            for group, pre in zip(self.groups, self.group_has_pre, strict=True)
        )

    def matches(self, version: str) -> bool:
        """Whether ``version`` (``v`` prefix allowed) is in the range; False if it is invalid."""
        try:
            parsed = Version.parse(version)
        except InvalidRange:
            return False
        return self.allows(parsed)

    def __str__(self) -> str:
        return " || ".join(" ".join(str(c) for c in group) for group in self.groups)


def highest(range_: Range, versions: Iterable[str]) -> str | None:
    """The highest of ``versions`` (strings, as given) in ``range_``; None if none is.

    Strings that are not versions are skipped (a tag list holds other tags too);
    of two equal versions (``v1.2.0`` and ``1.2.0``) the first given wins.
    """
    best: Version | None = None
    for text in versions:
        try:
            v = Version.parse(text)
        except InvalidRange:
            continue
        if range_.allows(v) and (best is None or v > best):
            best = v
    return best.original if best is not None else None


# --- the comparisons (constraints.go's constraint* functions, pre-release gate hoisted) ---


def _not_equal(v: Version, c: _Constraint) -> bool:
    if c.dirty:
        if c.con.major != v.major:
            return True
        if c.con.minor != v.minor and not c.minor_dirty:
            return True
        if c.minor_dirty:
            return False
        if c.con.patch != v.patch and not c.patch_dirty:
            return True
        if c.patch_dirty:
            if v.pre or c.con.pre:
                return _compare_pre(v.pre, c.con.pre) != 0
            return False
    return v != c.con


def _greater(v: Version, c: _Constraint) -> bool:
    if not c.dirty:
        return v.compare(c.con) > 0
    if v.major != c.con.major:
        return v.major > c.con.major
    if c.minor_dirty:  # >11 needs 12 or higher
        return False
    if c.patch_dirty:  # >11.1 needs 11.2 or higher
        return v.minor > c.con.minor
    return v.compare(c.con) > 0


def _less(v: Version, c: _Constraint) -> bool:
    return v.compare(c.con) < 0


def _greater_equal(v: Version, c: _Constraint) -> bool:
    return v.compare(c.con) >= 0


def _less_equal(v: Version, c: _Constraint) -> bool:
    if not c.dirty:
        return v.compare(c.con) <= 0
    if v.major > c.con.major:
        return False
    return not (v.major == c.con.major and v.minor > c.con.minor and not c.minor_dirty)


def _tilde(v: Version, c: _Constraint) -> bool:
    if v < c.con:
        return False
    con = c.con
    if (con.major, con.minor, con.patch) == (0, 0, 0) and not (c.minor_dirty or c.patch_dirty):
        return True  # ~0.0.0 and ~* accept everything
    if v.major != con.major:
        return False
    return not (v.minor != con.minor and not c.minor_dirty)


def _tilde_or_equal(v: Version, c: _Constraint) -> bool:
    return _tilde(v, c) if c.dirty else v == c.con


def _caret(v: Version, c: _Constraint) -> bool:
    con = c.con
    if v < con:
        return False
    if con.major > 0 or c.minor_dirty:
        return v.major == con.major
    if v.major > 0:
        return False
    if con.minor > 0 or c.patch_dirty:
        return v.minor == con.minor
    if v.minor > 0:
        return False
    return v.patch == con.patch


_CHECKS: dict[str, Callable[[Version, _Constraint], bool]] = {
    "": _tilde_or_equal,
    "=": _tilde_or_equal,
    "!=": _not_equal,
    ">": _greater,
    "<": _less,
    ">=": _greater_equal,
    "=>": _greater_equal,
    "<=": _less_equal,
    "=<": _less_equal,
    "~": _tilde,
    "~>": _tilde,
    "^": _caret,
}
