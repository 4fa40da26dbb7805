"""Watching managed paths with inotify: the file-system provider's ``watch`` capability.

Called through :meth:`setpoint.providers.files.provider.FilesystemProvider.watch` by the agent
(:mod:`setpoint.engine.watch`), which turns each callback into a pass over only
the resources named.

How it watches: one inotify watch per *directory that holds managed paths*, not
one per file. A directory watch reports every change to its entries: content
written (``IN_MODIFY``), mode/owner changed (``IN_ATTRIB``), created, deleted and
renamed over (``IN_CREATE``, ``IN_DELETE``, ``IN_MOVED_TO``, what vim does on
save). So 10,000 files in 100 directories cost 100 watches. A managed path whose
parent does not exist yet is watched through its nearest existing ancestor; when
a directory on that chain appears, disappears or is renamed, the paths below it
are placed again (deeper or shallower) and reported, since events in the gap may
have been missed. A purging Directory is watched itself so a stray entry created
in it is reported. A kernel event-queue overflow reports every path.

The agent's own writes show up too (the temp file is not a managed name, but the
final rename is): the re-check then finds nothing to do and writes nothing, so
nothing loops.

Why ``asyncinotify``: it maps inotify one to one (per-path watch descriptors,
the event mask, names, move cookies) without batching or debouncing, so an event
reaches us within a millisecond, and ``inotify_add_watch`` failing with
``ENOSPC`` (the ``fs.inotify.max_user_watches`` limit) surfaces as a plain
``OSError`` we can act on. ``watchfiles`` watches whole trees recursively
through a Rust backend that debounces (50 ms by default) and reports a lost
watch only as a log line, which suits neither the latency target nor the
fallback to polling.

When a watch cannot be added (``ENOSPC``, or ``SETPOINT_MAX_WATCHES`` reached:
a documented knob, mainly for tests, that makes a watcher behave as if the
kernel limit were that number), the paths it was for are listed by
:meth:`FsWatch.unwatched`; the agent polls them and says so in the status.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import threading
from collections.abc import Iterable, Sequence

from asyncinotify import Event, Inotify, Mask

from setpoint.model.resource import Resource
from setpoint.providers.base import WatchCallback
from setpoint.providers.files.common import fs_spec
from setpoint.providers.files.spec import DirectorySpec
from setpoint.providers.files.target import FileTarget

log = logging.getLogger("setpoint.watch")

MAX_WATCHES_ENV = "SETPOINT_MAX_WATCHES"

_MASK = (
    Mask.MODIFY
    | Mask.ATTRIB
    | Mask.CREATE
    | Mask.DELETE
    | Mask.MOVED_FROM
    | Mask.MOVED_TO
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
    | Mask.EXCL_UNLINK
)
_STRUCTURAL = Mask.CREATE | Mask.DELETE | Mask.MOVED_FROM | Mask.MOVED_TO
_LIMIT_ERRNOS = (errno.ENOSPC, errno.ENOMEM)


def max_watches_from_env() -> int | None:
    raw = os.environ.get(MAX_WATCHES_ENV, "").strip()
    if not raw:
        return None
    try:
        return max(int(raw), 0)
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", MAX_WATCHES_ENV, raw)
        return None


class WatchLimitError(OSError):
    pass


class FsWatch:
    """A running watch over some File/Directory/Symlink resources (see the module docstring).

    ``notify`` is called from the watcher's own thread with the ids of resources
    that may have changed (it may over-report). ``close`` stops the thread and
    frees the kernel watches.

    Example::

        w = FsWatch(target, resources, lambda ids: print("re-check", ids))
        ...
        w.close()
    """

    def __init__(
        self,
        target: FileTarget,
        resources: Sequence[Resource],
        notify: WatchCallback,
        *,
        max_watches: int | None = None,
    ) -> None:
        self.target = target
        self.notify = notify
        self.max_watches = max_watches_from_env() if max_watches is None else max_watches
        self.root = str(target.root)
        self._ids: dict[str, set[str]] = {}  # managed host path -> resource ids
        self._below: dict[str, set[str]] = {}  # ancestor host dir -> managed host paths below
        self._purging: dict[str, str] = {}  # host dir of a purging Directory -> its id
        self._dir_wd: dict[str, int] = {}
        self._wd_dir: dict[int, str] = {}
        self._placed: dict[str, str] = {}  # managed host path -> the dir watched for it
        self._unwatched: set[str] = set()  # managed host paths with no watch
        self._lock = threading.Lock()
        self._closed = False
        self.limit_hit = False
        for r in resources:
            path = target.host_path(fs_spec(r).path)
            self._ids.setdefault(path, set()).add(r.id)
            spec = r.spec
            if isinstance(spec, DirectorySpec) and spec.purge:
                self._purging[path] = r.id
            parent = os.path.dirname(path)
            while len(parent) > len(self.root) and parent.startswith(self.root):
                below = self._below.get(parent)
                if below is None:
                    self._below[parent] = below = set()
                below.add(path)
                parent = os.path.dirname(parent)
        self._ino = Inotify()
        self._ino.sync_timeout = 0  # drain without blocking: the selector does the waiting
        with self._lock:
            for path in self._ids:
                self._place(path)
            for d in self._purging:
                if d not in self._unwatched and os.path.isdir(d):
                    self._add_watch(d)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="setpoint-watch", daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------

    @property
    def watch_count(self) -> int:
        with self._lock:
            return len(self._dir_wd)

    @property
    def closed(self) -> bool:
        return self._closed

    def unwatched(self) -> set[str]:
        """Ids of resources none of whose paths could be watched (the agent polls them)."""
        with self._lock:
            return {rid for p in self._unwatched for rid in self._ids.get(p, ())}

    def retry(self) -> None:
        """Try again to watch the unwatched paths (watches may have been freed since)."""
        with self._lock:
            for path in list(self._unwatched):
                self._place(path)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._ino.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- placing watches --------------------------------------------------------------

    def _place(self, path: str) -> None:
        """Watch the nearest existing directory above ``path`` (lock held)."""
        d = os.path.dirname(path)
        while len(d) > len(self.root) and not os.path.isdir(d):
            d = os.path.dirname(d)
        if len(d) < len(self.root):
            d = self.root
        try:
            self._add_watch(d)
        except OSError as exc:
            if isinstance(exc, WatchLimitError) or exc.errno in _LIMIT_ERRNOS:
                if not self.limit_hit:
                    log.warning(
                        "inotify watch limit reached (%s); paths that could not be watched "
                        "are checked by polling instead (raise fs.inotify.max_user_watches)",
                        exc,
                    )
                self.limit_hit = True
            else:
                log.debug("cannot watch %s: %s", d, exc)
            self._unwatched.add(path)
            self._placed.pop(path, None)
            return
        self._unwatched.discard(path)
        self._placed[path] = d

    def _add_watch(self, d: str) -> None:
        if d in self._dir_wd:
            return
        if self.max_watches is not None and len(self._dir_wd) >= self.max_watches:
            raise WatchLimitError(
                errno.ENOSPC, f"{MAX_WATCHES_ENV}={self.max_watches} watches in use"
            )
        w = self._ino.add_watch(d, _MASK)
        self._dir_wd[d] = w.wd
        self._wd_dir[w.wd] = d

    def _forget_dir(self, d: str, *, remove: bool) -> None:
        """Stop watching ``d`` and every watched directory below it."""
        prefix = d + "/"
        for wd_dir in [x for x in self._dir_wd if x == d or x.startswith(prefix)]:
            wd = self._dir_wd.pop(wd_dir)
            self._wd_dir.pop(wd, None)
            if remove or wd_dir != d:
                w = next((w for w in self._ino.watches if w.wd == wd), None)
                if w is not None:
                    with contextlib.suppress(OSError):
                        self._ino.rm_watch(w)

    def _replace_below(self, d: str, out: set[str]) -> None:
        """Place again every managed path at or below ``d``; report them all."""
        paths = set(self._below.get(d, ()))
        if d in self._ids:
            paths.add(d)
        for p in paths:
            self._place(p)
            out.update(self._ids.get(p, ()))
        for pd in self._purging:
            if (pd == d or pd.startswith(d + "/")) and os.path.isdir(pd):
                with contextlib.suppress(OSError):
                    self._add_watch(pd)

    # -- events -----------------------------------------------------------------------

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._ino.fd, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closed:
                ready = sel.select()
                if self._closed or any(k.fd == self._wake_r for k, _ in ready):
                    return
                try:
                    events = list(self._ino)
                except OSError as exc:
                    log.error("inotify read failed: %s", exc)
                    return
                with self._lock:
                    ids = self._handle(events)
                if ids:
                    try:
                        self.notify(ids)
                    except Exception:
                        log.exception("watch callback failed")
        finally:
            sel.close()

    def _handle(self, events: Iterable[Event]) -> set[str]:
        out: set[str] = set()
        for ev in events:
            mask = ev.mask
            if Mask.Q_OVERFLOW in mask:
                log.warning("inotify queue overflowed: re-checking every watched path")
                for ids in self._ids.values():
                    out.update(ids)
                continue
            w = ev.watch
            d = self._wd_dir.get(w.wd) if w is not None else None
            if d is None:
                continue
            if ev.name is None:
                # The watched directory itself went away or moved.
                if mask & (Mask.IGNORED | Mask.DELETE_SELF | Mask.MOVE_SELF):
                    self._forget_dir(d, remove=Mask.MOVE_SELF in mask)
                    self._replace_below(d, out)
                continue
            full = f"{d}/{os.fspath(ev.name)}"
            hit = self._ids.get(full)
            if hit:
                out.update(hit)
            if mask & _STRUCTURAL:
                if full in self._below:
                    if mask & (Mask.MOVED_FROM | Mask.DELETE):
                        self._forget_dir(full, remove=True)
                    self._replace_below(full, out)
                elif full in self._purging and mask & (Mask.CREATE | Mask.MOVED_TO):
                    with contextlib.suppress(OSError):
                        self._add_watch(full)
                purging = self._purging.get(d)
                if purging is not None:
                    out.add(purging)
        return out
