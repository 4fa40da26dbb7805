"""Upkeep of a source's bare mirror (``repo.git``) on disk.

Called by :class:`setpoint.source.git.GitSource`, under its mirror lock and flock:
:func:`write_attributes` when it makes sure the mirror exists,
:func:`remove_stale_locks` before each fetch, and :func:`is_corruption` to read the
verdict of ``git fsck`` in :meth:`~setpoint.source.git.GitSource.repair`. Runs no
git itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The repository's own .gitattributes must not change what we export: the tree
# we render is exactly what was committed. This file has the highest precedence.
ATTRIBUTES = (
    "# Written by setpoint: export the exact committed bytes.\n"
    "* -export-ignore -export-subst -text -eol -ident -filter -working-tree-encoding\n"
)

# fsck's own findings (exit 1-127 is a bit mask of the kinds of damage found),
# or its fatal errors that mean unreadable objects: anything else (out of memory,
# cannot fork...) says nothing about the mirror.
_CORRUPTION_RE = re.compile(
    r"missing (blob|tree|commit|tag)|broken link|corrupt|bad object|hash mismatch"
    r"|sha1 mismatch|inflate|unable to (read|unpack|parse)|invalid (object|sha1|tree|commit)"
    r"|is empty|not a git repository|bad (tree|commit|tag|blob)|packfile",
    re.IGNORECASE,
)


def write_attributes(repo_dir: Path) -> None:
    """Write ``info/attributes`` (:data:`ATTRIBUTES`) unless it already holds exactly that."""
    attributes = repo_dir / "info" / "attributes"
    if not attributes.is_file() or attributes.read_text() != ATTRIBUTES:
        attributes.parent.mkdir(exist_ok=True)
        tmp = attributes.with_name(f"attributes.{os.getpid()}.tmp")
        tmp.write_text(ATTRIBUTES)
        tmp.replace(attributes)


def remove_stale_locks(repo_dir: Path) -> None:
    """Delete ``*.lock`` files a killed git left in the mirror.

    The caller holds the flock, and only it runs git in the mirror (gc never
    detaches), so any lock file now is stale; left alone, it would fail every later
    fetch with "cannot lock ref". Loose-object directories hold no locks and
    are skipped: they can be many.
    """
    for dirpath, dirnames, filenames in os.walk(repo_dir):
        if os.path.basename(dirpath) == "objects":
            dirnames[:] = [d for d in dirnames if d in ("info", "pack")]
        for name in filenames:
            if name.endswith(".lock"):
                os.unlink(os.path.join(dirpath, name))


def is_corruption(rc: int, report: str) -> bool:
    """Whether fsck exiting with ``rc`` and printing ``report`` found a corrupt mirror."""
    return 0 < rc < 128 or bool(_CORRUPTION_RE.search(report))
