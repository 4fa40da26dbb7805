"""The supervisor of one Service process: waits for it, restarts it by policy, probes it.

Created by :class:`setpoint.providers.services.service.ServiceProvider` (when it starts a process
or adopts one after an agent restart), which it calls back through :class:`Host`: to
start the recorded configuration again, to record an exit, to ask the engine for a pass
(the watch callback) and to queue :class:`~setpoint.providers.base.ProviderEvent` values
for the journal (the engine drains them at the end of each pass). Also holds the small
pieces both modules share: health names, configuration digests, the restart policy.

Exit status of adopted processes: a process started by an earlier agent is not this
agent's child, so Linux reports its exit through the pidfd (readable) but not its
status (``waitid`` only works for children, and the process is reaped by its real
parent, usually init). Its status is then unknown: ``restart: on-failure`` counts it as a
failure (restarts it) and the journal says why. Not fixable without a helper process that
outlives the agent and waits for each service as its parent (as container shims do), or
ptrace, which is too intrusive; see README "Service".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import threading
import time
from typing import Any, Protocol

from setpoint.model.errors import ProviderError
from setpoint.providers.base import ProviderEvent
from setpoint.providers.services.probes import run_probe
from setpoint.providers.services.service_proc import Handle, rotate, stop
from setpoint.providers.services.service_spec import ServiceSpec

HEALTHY, PROGRESSING, DEGRADED, MISSING = "Healthy", "Progressing", "Degraded", "Missing"
UNKNOWN_EXIT = "exited (exit status unknown: adopted process)"


def digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def supervision_digest(spec: ServiceSpec) -> str:
    keys = ("restart", "backoff", "stop", "readiness", "liveness", "readyTimeout", "logs")
    return digest(spec.model_dump(mode="json", include=set(keys)))


def no_restart(spec: ServiceSpec, code: int | None) -> bool:
    """The restart policy: True when an exit with ``code`` (None: unknown) is final."""
    return spec.restart == "never" or (spec.restart == "on-failure" and code == 0)


def _sparse(n: int) -> bool:
    """Journal the 1st-3rd of a run of exits, then the 4th, 8th, 16th ... (crash loops)."""
    return n <= 3 or (n & (n - 1)) == 0


class Stopping(Exception):
    """The supervisor is being shut down: do not restart."""


class Host(Protocol):
    """What a supervisor needs from its provider."""

    def notify(self, name: str) -> None: ...

    def log_path(self, name: str) -> Any: ...

    def respawn(self, name: str, stopping: threading.Event | None = None) -> Handle: ...

    def record_exit(self, name: str, exit: str, code: int | None) -> None: ...

    def probe_context(self, name: str) -> tuple[str | None, dict[str, str] | None]: ...

    def emit(self, event: ProviderEvent) -> None: ...


class Supervisor:
    """Waits for one service process, restarts it by policy, probes it, rotates its log."""

    def __init__(self, provider: Host, name: str, spec: ServiceSpec, handle: Handle) -> None:
        self.provider = provider
        self.name = name
        self.rid = f"Service/{name}"
        self.spec = spec
        self.supervision = supervision_digest(spec)
        self.handle = handle
        self.started_at = time.monotonic()
        self.ready = spec.readiness is None
        self.message = "started" if spec.readiness else "running (no readiness probe)"
        self.exit = ""
        self.exit_code: int | None = None
        self.gave_up = False
        self.restart_at: float | None = None
        self.failures = 0
        self.live_failures = 0
        self.live_message = ""
        self.restarts = 0  # by this supervisor, after exits
        self._killed_for: str = ""  # set when the supervisor itself stops the process
        self._exit_at: float | None = None  # monotonic time of the exit being repaired
        self._exits_in_row = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._wait_loop, name=f"svc-{name}", daemon=True),
            threading.Thread(target=self._probe_loop, name=f"probe-{name}", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- state ------------------------------------------------------------------------

    def running(self) -> bool:
        return self.restart_at is None and not self.gave_up and self.handle.alive()

    def snapshot(self) -> tuple[bool, float | None, str, tuple[str, str]]:
        """(running, seconds until the restart or None, last exit, health), consistently.

        A supervised process that is not running and not given up is being restarted
        (or its exit is about to be noticed): the supervisor owns it, not the engine.
        """
        with self._lock:
            running = self.running()
            restarting = None
            if not running and not self.gave_up:
                restarting = max((self.restart_at or time.monotonic()) - time.monotonic(), 0)
            return running, restarting, self.exit, self.health()

    def health(self) -> tuple[str, str]:
        if self.gave_up:
            return MISSING, self.exit
        if self.restart_at is not None:
            wait = max(self.restart_at - time.monotonic(), 0)
            return DEGRADED, f"{self.exit}; restarting in {wait:.1f}s"
        if not self.handle.alive():
            return MISSING, self.exit or "not running"
        if self.live_failures:
            return DEGRADED, f"liveness failing: {self.live_message}"
        if self.ready:
            if self.restarts:
                return HEALTHY, f"{self.message} (restarted {self.restarts}x, last {self.exit})"
            return HEALTHY, self.message
        late = time.monotonic() - self.started_at > self.spec.readyTimeout
        return (DEGRADED if late else PROGRESSING), self.message

    def shutdown(self, *, stop_process: bool) -> int | None:
        """Stop supervising; with ``stop_process`` stop the process gracefully first."""
        self._stopping.set()
        code = None
        if stop_process:
            code = stop(
                self.handle, signal.Signals[self.spec.stop.signal], self.spec.stop.graceSeconds
            )
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=self.spec.stop.graceSeconds + 15)
        self.handle.close()
        return code

    # -- threads ----------------------------------------------------------------------

    def _notify(self) -> None:
        self.provider.notify(self.name)

    def _emit(self, event: str, message: str, **detail: Any) -> None:
        self.provider.emit(ProviderEvent(self.rid, event, message, detail))

    def _wait_loop(self) -> None:
        log = self.provider.log_path(self.name)
        while not self._stopping.is_set():
            exited, code = self.handle.wait(0.5)
            if self._stopping.is_set():
                return
            if not exited:
                with contextlib.suppress(OSError):
                    rotate(log, self.spec.logs.maxBytes, self.spec.logs.keep)
                continue
            self._exited(code)
            if self._stopping.is_set() or self.gave_up:
                return

    def _exited(self, code: int | None) -> None:
        ran = time.monotonic() - self.started_at
        pid = self.handle.pid
        with self._lock:
            if code is None:
                self.exit = UNKNOWN_EXIT
            elif code < 0:
                self.exit = f"killed by {signal.Signals(-code).name}"
            else:
                self.exit = f"exited with status {code}"
            self.exit_code = code
            self.ready = self.spec.readiness is None
            if no_restart(self.spec, code):
                self.gave_up = True
            else:
                stable = ran >= self.spec.backoff.resetSeconds
                self.failures = 1 if stable else self.failures + 1
                self.restart_at = time.monotonic() + self._delay()
            killed_for, self._killed_for = self._killed_for, ""
            self._exit_at = time.monotonic()
            self._exits_in_row = (
                1 if ran >= self.spec.backoff.resetSeconds else (self._exits_in_row + 1)
            )
        self.provider.record_exit(self.name, self.exit, code)
        self._journal_exit(pid, code, ran, killed_for)
        self._notify()
        while not self.gave_up:
            delay = max((self.restart_at or 0) - time.monotonic(), 0)
            if self._stopping.wait(delay):
                return
            try:
                handle = self.provider.respawn(self.name, self._stopping)
            except Stopping:
                return
            except (OSError, ProviderError) as err:
                with self._lock:
                    self.exit = f"restart failed: {err}"
                    self.failures += 1
                    self.restart_at = time.monotonic() + self._delay()
                if _sparse(self.failures):
                    self._emit(
                        "failure", f"{self.rid}: restart failed: {err}", attempt=self.failures
                    )
                self._notify()
                continue
            with self._lock:
                self.handle.close()
                self.handle = handle
                self.restart_at = None
                self.restarts += 1
                self.started_at = time.monotonic()
                self.live_failures = 0
            if self.spec.readiness is None:
                self._journal_restored()
            self._notify()
            return

    def _journal_exit(self, pid: int, code: int | None, ran: float, killed_for: str) -> None:
        """Queue the journal entry for an exit: drift, or the supervisor's own repair."""
        if not _sparse(self._exits_in_row):
            return
        detail: dict[str, Any] = {"pid": pid, "exit": self.exit, "ran_s": round(ran, 3)}
        if code is not None:
            detail["status"] = code
        if self._exits_in_row > 1:
            detail["exits_in_row"] = self._exits_in_row
        if killed_for:
            text = f"{self.rid}: {killed_for}; stopped pid {pid} to restart it"
            self._emit("failure", text, **detail)
            return
        text = f"{self.rid} {self.exit} (pid {pid}) outside setpoint"
        if self.gave_up:
            text += f"; not restarted (restart: {self.spec.restart})"
        elif code is None and self.spec.restart == "on-failure":
            text += (
                "; its exit status is unknown (it was adopted from an earlier agent, so it "
                "is not this agent's child and Linux does not report its status to it): "
                "restart: on-failure counts that as a failure and restarts it"
            )
        self._emit("drift", text, **detail)

    def _journal_restored(self) -> None:
        """Queue the revert entry once a restarted process is up (and ready, if probed)."""
        with self._lock:
            exit_at, self._exit_at = self._exit_at, None
        if exit_at is None or not _sparse(self._exits_in_row):
            return
        ms = round((time.monotonic() - exit_at) * 1000, 1)
        pid = self.handle.pid
        if self.spec.readiness is None:
            text = f"restarted (pid {pid}) {ms:.0f} ms after the exit"
        else:
            text = f"restarted (pid {pid}), ready after {ms:.0f} ms"
        self._emit("revert", f"{self.rid}: {text}", pid=pid, restore_ms=ms, trigger="supervisor")

    def _delay(self) -> float:
        """No delay after a process that ran a while; then initial, 2x, 4x ... up to the cap."""
        b = self.spec.backoff
        if self.failures <= 1:
            return 0.0
        return float(min(b.maxSeconds, b.initialSeconds * 2 ** (self.failures - 2)))

    def _probe_loop(self) -> None:
        ready_fails = 0
        next_ready = next_live = time.monotonic()
        ctx: tuple[Handle | None, str | None, dict[str, str] | None] = (None, None, None)
        while not self._stopping.is_set():
            now = time.monotonic()
            spec = self.spec
            handle = self.handle
            if not handle.alive() or self.restart_at is not None:
                self._stopping.wait(0.05)
                continue
            if ctx[0] is not handle:
                ctx = (handle, *self.provider.probe_context(self.name))
            cwd, env = ctx[1], ctx[2]
            if spec.readiness is not None and now >= next_ready:
                ok, msg = run_probe(spec.readiness, cwd, env)
                next_ready = time.monotonic() + spec.readiness.periodSeconds
                was = self.ready
                if handle is self.handle:
                    ready_fails = 0 if ok else ready_fails + 1
                    self.message = msg
                    if ok:
                        self.ready = True
                    elif ready_fails >= spec.readiness.failureThreshold:
                        self.ready = False
                if was != self.ready:
                    if self.ready:
                        self._journal_restored()
                    self._notify()
            # Liveness is checked once the process has been ready (it may start slowly).
            if spec.liveness is not None and self.ready and now >= next_live:
                ok, msg = run_probe(spec.liveness, cwd, env)
                next_live = time.monotonic() + spec.liveness.periodSeconds
                if handle is self.handle:
                    self.live_failures = 0 if ok else self.live_failures + 1
                    self.live_message = msg
                    if self.live_failures >= spec.liveness.failureThreshold:
                        self.live_failures = 0
                        self.message = f"liveness failed: {msg}; restarting"
                        self._killed_for = (
                            f"liveness failed {spec.liveness.failureThreshold} times: {msg}"
                        )
                        stop(handle, signal.Signals[spec.stop.signal], spec.stop.graceSeconds)
                        self._notify()
            periods = [p.periodSeconds for p in (spec.readiness, spec.liveness) if p]
            self._stopping.wait(min([*periods, 0.5]) / 5 if periods else 0.5)
