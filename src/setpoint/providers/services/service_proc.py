"""Processes of the Service kind: pid records, identity checks, spawning, stopping, logs.

Used by :mod:`setpoint.providers.services.service` (and by the release store, to keep the
directories a live process runs from). No engine imports.

A process is identified by its pid *and* its start time (``/proc/PID/stat`` field 22,
clock ticks since boot): a recorded pid whose start time differs now belongs to another
process and is never signalled. Processes this agent did not spawn itself (adopted after
an agent restart) are waited for and signalled through a pidfd, which cannot be
recycled under us.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pwd
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from setpoint.providers.services.common import (
    service_dir,
    start_time,
)

LOG = "output.log"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Handle:
    """A live process we may wait for and signal: our child (``popen``) or adopted (``pidfd``)."""

    pid: int
    started: int
    popen: subprocess.Popen[bytes] | None = None
    pidfd: int | None = None

    @classmethod
    def adopt(cls, pid: int, started: int) -> Handle | None:
        """Open a pidfd for ``pid`` if it is still the process that started at ``started``."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        # Checked after opening: the fd now pins this very process, recycled or not.
        if start_time(pid) != started:
            os.close(fd)
            return None
        return cls(pid, started, pidfd=fd)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return start_time(self.pid) == self.started

    def wait(self, timeout: float) -> tuple[bool, int | None]:
        """Wait up to ``timeout`` s; return (exited, exit status or None when unknown)."""
        if self.popen is not None:
            try:
                return True, self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False, None
        import select

        assert self.pidfd is not None
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        if poller.poll(max(timeout, 0) * 1000):
            return True, None
        return (not self.alive()), None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.popen is not None:
                if self.popen.poll() is None:
                    self.popen.send_signal(sig)
            elif self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


def stop(handle: Handle, sig: int, grace: float) -> int | None:
    """Send ``sig``, wait ``grace`` seconds, then SIGKILL; return the exit status if known."""
    handle.signal(sig)
    exited, code = handle.wait(grace)
    if not exited:
        handle.signal(signal.SIGKILL)
        exited, code = handle.wait(10)
    return code


def spawn(
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    log_path: Path,
    user: str | int | None,
) -> Handle:
    """Start a process in its own session with output appended to ``log_path``."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        try:
            pw = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
        except KeyError:
            raise PermissionError(f"no user {user!r} on this host") from None
        if pw.pw_uid != os.geteuid() and os.geteuid() != 0:
            raise PermissionError(f"running as user {user!r} needs the agent to run as root")
        if pw.pw_uid != os.geteuid():
            kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )
    finally:
        os.close(fd)
    started = None
    for _ in range(100):
        started = start_time(popen.pid)
        if started is not None:
            break
        if popen.poll() is not None:
            started = 0  # exited at once: the supervisor will see it
            break
        time.sleep(0.001)
    return Handle(popen.pid, started or 0, popen=popen)


def rotate(log_path: Path, max_bytes: int, keep: int) -> bool:
    """Move the head of ``log_path`` into ``.1`` (older ones shift up to ``.keep``) when too big.

    The service keeps its O_APPEND descriptor (across agent restarts too), so the file
    cannot be renamed away from it. Copy-truncate would lose what the service writes
    between the copy and the truncate; instead the copied head is cut out of the file
    with ``fallocate(FALLOC_FL_COLLAPSE_RANGE)`` (whole blocks, atomic against appends),
    so a line written meanwhile stays in ``output.log``. On a file system without it
    (tmpfs), copy-truncate remains, after a second copy of what arrived during the first.
    """
    try:
        size = os.stat(log_path).st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    fd = os.open(log_path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        block = os.fstat(fd).st_blksize or 4096
        head = size // block * block
        if head == 0:
            return False
        for i in range(keep - 1, 0, -1):
            older = log_path.with_name(f"{log_path.name}.{i}")
            if older.exists():
                os.replace(older, log_path.with_name(f"{log_path.name}.{i + 1}"))
        with contextlib.suppress(FileNotFoundError):
            log_path.with_name(f"{log_path.name}.{keep + 1}").unlink()
        first = log_path.with_name(f"{log_path.name}.1")
        tmp = first.with_name(first.name + ".tmp")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            copied = _copy_range(fd, out, 0, head)
            if not _collapse(fd, head):
                # No COLLAPSE_RANGE here: copy the rest too, then truncate (a small window).
                copied += _copy_range(fd, out, head, os.fstat(fd).st_size - head)
                os.ftruncate(fd, 0)
            os.fchmod(out, 0o600)
        finally:
            os.close(out)
        os.replace(tmp, first)
        return copied > 0
    finally:
        os.close(fd)


_FALLOC_FL_COLLAPSE_RANGE = 0x08


def _collapse(fd: int, length: int) -> bool:
    """Remove the first ``length`` bytes of the file (block-aligned); False if unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, _FALLOC_FL_COLLAPSE_RANGE, 0, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))


def _copy_range(src: int, dst: int, start: int, length: int) -> int:
    done = 0
    while done < length:
        chunk = os.pread(src, min(1 << 20, length - done), start + done)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        done += len(chunk)
    return done


def log_files(state_dir: Path, name: str) -> list[Path]:
    """A service's log files, oldest first (``output.log.N`` ... ``output.log``)."""
    base = service_dir(state_dir, name) / LOG
    rotated = sorted(
        (p for p in base.parent.glob(LOG + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*rotated, base] if base.exists() else rotated





def tail_logs(
    state_dir: Path,
    name: str,
    lines: int,
    follow: bool,
    write: Any,
    stop: threading.Event | None = None,
) -> bool:
    """Write the last ``lines`` lines of a service's logs; with ``follow`` keep writing.

    Returns False when the service has no logs. Follows across copy-truncate rotations.
    """
    files = log_files(state_dir, name)
    if not files:
        return False
    base = service_dir(state_dir, name) / LOG
    tail: list[bytes] = []
    offset = 0  # how much of output.log was shown: following starts exactly there
    for p in files:
        with contextlib.suppress(FileNotFoundError), open(p, "rb") as f:
            data = f.read()
            if p == base:
                offset = len(data)
            tail.extend(data.splitlines(keepends=True))
        tail = tail[-lines:] if lines > 0 else []
    for line in tail:
        write(line)
    if not follow:
        return True
    while not (stop is not None and stop.is_set()):
        try:
            size = base.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < offset:  # rotated: the head we had read moved into .1
            first = base.with_name(LOG + ".1")
            moved = 0
            with contextlib.suppress(FileNotFoundError), open(first, "rb") as f:
                f.seek(offset)
                write(f.read())
                moved = os.fstat(f.fileno()).st_size
            offset = max(0, offset - moved)
        if size > offset:
            with open(base, "rb") as f:
                f.seek(offset)
                data = f.read(size - offset)
            offset += len(data)
            write(data)
        time.sleep(0.2)
    return True
