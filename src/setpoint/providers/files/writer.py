"""The file provider's background writer: a pass's new files written while the engine goes on.

Used by :meth:`~setpoint.providers.files.provider.FilesystemProvider.apply_later`
(:class:`~setpoint.providers.base.Pipelining`). A first apply waits on the disk for
each file: its fsync before the rename, one journal commit each when files are
written one after the other. The writer thread takes the queued new files
(:class:`~setpoint.providers.files.apply.NewFile`) in batches of what is queued, up
to ``BATCH``: a few threads fill and fsync their temporary files at once (the file
system commits them together), then the writer renames each over its name, in
order. Every file is still durable before its rename, and directories are still
fsynced once per pass (``end_pass``); only the waits overlap, with each other and
with the engine's work on the next resources. A temporary file left by a crash is
swept by the next full pass, as before.

``land`` waits until every queued file is done and returns what failed and how long
each took; the threads then stop (an idle agent holds none). A batch the writer
cannot carry through fails as a whole (``_abandon``): it never dies with files
queued behind it. The queue is bounded (``DEPTH``): each queued file holds its
parent directory's descriptor, and a pass never runs far ahead of its disk.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from setpoint.providers.base import Landed
from setpoint.providers.files.apply import NewFile, fill_temp, unlink_quiet
from setpoint.providers.files.common import os_error

DEPTH = 64  # queued files at most (each holds a directory descriptor)
BATCH = 64  # files filled and fsynced together, then renamed
SYNCERS = 8  # threads that fill and fsync a batch (the waits overlap; the kernel groups
# the journal commits of concurrent fsyncs)


class Writer:
    """Writes queued new files on a thread started on first use; ``land`` collects them."""

    def __init__(self) -> None:
        self._queue: queue.Queue[NewFile | None] = queue.Queue(DEPTH)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._landed = Landed()

    def submit(self, new: NewFile) -> None:
        """Queue ``new`` (the writer owns its ``pfd``); blocks while the queue is full."""
        if self._thread is None:
            thread = threading.Thread(target=self._work, name="setpoint-writer", daemon=True)
            thread.start()  # may raise (no thread to be had): the create fails, nothing queued
            self._thread = thread
        self._queue.put(new)

    def wait(self) -> None:
        """Wait for every queued file (what they gave stays for :meth:`land`).

        The threads stop too: an agent's writer lives only while a pass writes.
        """
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None

    def land(self) -> Landed:
        """Wait for every queued file; what failed and how long each took (then forget)."""
        self.wait()
        with self._lock:
            landed, self._landed = self._landed, Landed()
        return landed

    def _work(self) -> None:
        with ThreadPoolExecutor(SYNCERS, thread_name_prefix="setpoint-fsync") as pool:
            while True:
                batch = [self._queue.get()]  # then what else is queued now, up to BATCH
                while batch[-1] is not None and len(batch) < BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                last = batch[-1]
                files = [new for new in batch if new is not None]
                if files:
                    try:
                        self._write(files, pool)
                    except BaseException as exc:  # e.g. no fsync thread to be had
                        self._abandon(files, exc)  # never die with files queued behind
                if last is None:
                    return

    def _write(self, batch: list[NewFile], pool: ThreadPoolExecutor) -> None:
        """Fill and fsync the batch's temporaries at once, then rename each, in order."""
        t0 = time.monotonic()
        synced = list(pool.map(_fill, batch)) if len(batch) > 1 else [_fill(batch[0])]
        for new, (fd, err) in zip(batch, synced, strict=True):
            try:
                if err is not None:
                    raise err
                # the bytes are durable: the rename publishes them
                os.rename(new.tmp, new.name, src_dir_fd=new.pfd, dst_dir_fd=new.pfd)
            except Exception as exc:
                unlink_quiet(new.pfd, new.tmp)  # never leave a partial managed file behind
                self._done(new, t0, exc)
            else:
                self._done(new, t0, None)
            finally:
                if fd != -1:
                    os.close(fd)
                os.close(new.pfd)

    def _abandon(self, batch: list[NewFile], exc: BaseException) -> None:
        """A batch the writer could not carry through: what it did not report failed,
        its temporaries removed (nothing partial left) and its descriptors closed."""
        with self._lock:
            reported = set(self._landed.seconds)
        for new in batch:
            if new.rid in reported:
                continue
            unlink_quiet(new.pfd, new.tmp)
            with contextlib.suppress(OSError):
                os.close(new.pfd)
            why = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
            self._done(new, time.monotonic(), why)

    def _done(self, new: NewFile, t0: float, exc: Exception | None) -> None:
        took = time.monotonic() - t0
        with self._lock:
            self._landed.seconds[new.rid] = took
            if exc is not None:
                if isinstance(exc, OSError):
                    exc = os_error("create", new.path, exc)
                self._landed.failed[new.rid] = exc


def _fill(new: NewFile) -> tuple[int, Exception | None]:
    """The temporary of ``new``, filled and fsynced: its descriptor, or the error (-1)."""
    try:
        fd = fill_temp(new.pfd, new.tmp, new.path, new.data, new.uid, new.gid, new.mode)
    except Exception as exc:  # fill_temp left nothing
        return -1, exc
    try:
        os.fsync(fd)
    except OSError as err:
        return fd, err
    return fd, None
