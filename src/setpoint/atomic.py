"""The one atomic file write: temp file in the same directory, fsync, rename over.

A reader (or a crash) sees the old file or the new one, never half of either; the
temporary is removed on any error. Used for everything small the agent writes whole:
its own files (``engine/agent.py``: API and suspension files; ``engine/fleet.py``),
the service and release records (``providers/services``), the git cache's export
manifests (``source/export.py``), credential files (``source/credentials.py``) and
the CLI's rewrites (``cli_secrets.py``, ``cli_fleet.py``). Managed files on the
target go through the file provider's descriptor-based writes instead
(``providers/files/apply.py``: no path resolution, batched directory fsyncs).

Example::

    write_atomic(state / "agent.json", text.encode(), mode=0o600)
    write_json_atomic(record, {"pid": 42})
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    sync_dir: bool = False,
    tmp_prefix: str | None = None,
    tmp_suffix: str = ".tmp",
) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode``), atomically and durably.

    The temporary is ``<tmp_prefix>XXXXXXXX<tmp_suffix>`` next to ``path`` (default
    ``.NAME.XXXXXXXX.tmp``: a dot-name, as the directories' cleaners expect), created
    0600 so the data is never readable by others, not even briefly, then given
    ``mode``. ``sync_dir`` also fsyncs the directory, making the rename itself durable
    (a caller batching several writes may fsync the directory once instead).
    """
    prefix = tmp_prefix if tmp_prefix is not None else f".{path.name}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=tmp_suffix)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if mode != 0o600:
                os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o600) -> None:
    """:func:`write_atomic` of ``data`` as JSON (indented, keys sorted: diffable records)."""
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=mode)


def fsync_dir(path: Path | str) -> None:
    """fsync a directory: the entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
