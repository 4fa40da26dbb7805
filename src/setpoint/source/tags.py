"""Sources that follow ``ref: {semver: RANGE}``: the highest matching tag, and tags that move.

Role: pure helpers for :class:`setpoint.source.git.GitSource`. :func:`pick_tag`
chooses, from ``git ls-remote --tags`` output, the highest tag whose name is a
version in the range (``v`` prefix allowed; pre-releases only when the range
names one, :mod:`setpoint.model.semver`). :func:`moved_message` words the
refusal of a tag that now points to another commit than the one the mirror
recorded: a released version must not change under the hosts that run it.
"""

from __future__ import annotations

from setpoint.model.errors import SourceError
from setpoint.model.semver import Range, highest

TAGS = "refs/tags/"


def pick_tag(listing: str, range_: Range, source: str, url: str) -> tuple[str, str, str | None]:
    """(full tag ref, the sha it points to, the peeled commit of an annotated tag)."""
    refs: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        if name.startswith(TAGS):
            refs[name] = sha
    names = [n[len(TAGS) :] for n in refs if not n.endswith("^{}")]
    # Sorted first: of two spellings of one version (v1.2.0, 1.2.0) the choice is stable.
    best = highest(range_, sorted(names))
    if best is None:
        shown = ", ".join(sorted(names)[-8:]) or "none"
        raise SourceError(
            f"source {source}: no tag of {url} matches the semver range {range_.text!r} "
            f"(tags: {shown}); push a matching tag or widen the range"
        )
    name = TAGS + best
    return name, refs[name], refs.get(f"{name}^{{}}")


def moved_message(source: str, tag: str, old: str, new: str) -> str:
    return (
        f"source {source}: history rewritten: tag {tag} moved from {old[:12]} to {new[:12]} "
        "(a released tag must not change; tag a new version instead); refused: set "
        "allowRewrites: true on the source to accept it"
    )
