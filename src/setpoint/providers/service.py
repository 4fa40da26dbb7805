"""The Service kind: a supervised process run with the declared command, env and release.

Registered by :func:`setpoint.providers.registry.default_registry`. Per service the
provider keeps ``<state>/services/<name>/`` (mode 0700): ``record.json`` (pid, process
start time, the run configuration and its digest, the last healthy configuration, a
failed rollout) and ``output.log`` (+ rotated ``output.log.N``).

- ``read`` finds the recorded process (pid *and* start time must match; otherwise the pid
  belongs to someone else and is never signalled). ``watch`` (called by the agent after
  each full pass) adopts a live process recorded by an earlier agent, through a pidfd,
  without restarting it; a CLI run adopts nothing.
- ``plan`` compares the desired run configuration (command, env, working dir, user, the
  release directory ``current`` points at, the declarations named in ``restartOn``) with
  the running one: a difference is a restart (REPLACE); ``reloadOn`` declarations that
  changed are a reload signal (UPDATE); probe or policy changes only retune the supervisor.
- ``apply`` stops gracefully (stop signal, grace, SIGKILL), starts, and waits for the
  readiness probe up to ``readyTimeout``. A rollout that does not become ready is rolled
  back to the last healthy configuration and reported with :class:`StallError` (the
  stack is Stalled) until the declaration changes.
- A :class:`Supervisor` thread per service waits for the process to exit (event-driven),
  restarts it by policy with exponential back-off, runs the probes, rotates the logs and
  calls the watch callback so the engine re-reads the service at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from setpoint.model.errors import ProviderError
from setpoint.model.plan import Action, Change, FieldChange
from setpoint.model.resource import Resource
from setpoint.providers.base import Observed, StallError, Target, WatchCallback
from setpoint.providers.probes import run_probe
from setpoint.providers.release import collect_orphans, current_dir
from setpoint.providers.service_proc import (
    DEFAULT_PATH,
    LOG,
    RECORD,
    Handle,
    ensure_private_dir,
    is_same_process,
    read_json,
    rotate,
    service_dir,
    spawn,
    stop,
    write_json_atomic,
)
from setpoint.providers.service_spec import ServiceSpec

CLAIM_PREFIX = "service:"
HEALTHY, PROGRESSING, DEGRADED, MISSING = "Healthy", "Progressing", "Degraded", "Missing"
SUPERVISION, RELOAD, LAST_HEALTHY = "supervision", "reload", "last healthy"


def service_spec(resource: Resource) -> ServiceSpec:
    if not isinstance(resource.spec, ServiceSpec):
        raise ProviderError(f"{resource.id}: not a Service spec", transient=False)
    return resource.spec


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def supervision_digest(spec: ServiceSpec) -> str:
    keys = ("restart", "backoff", "stop", "readiness", "liveness", "readyTimeout", "logs")
    return _digest(spec.model_dump(mode="json", include=set(keys)))


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What read found: the process, what it runs, and the supervisor's view of it."""

    running: bool
    pid: int | None
    digest: str | None  # of the running (or last run) configuration
    reload_digest: str | None
    supervision: str | None
    release_dir: str | None  # where the declared release's ``current`` points now
    exit: str = ""  # how the last process ended, when not running
    exit_code: int | None = None
    gave_up: bool = False  # exited and the restart policy says not to restart
    restarting_in: float | None = None  # waiting out the back-off
    failed_digest: str | None = None
    failed_message: str = ""
    health: str = MISSING
    message: str = ""


class _Stopping(Exception):
    """The supervisor is being shut down: do not restart."""


class Supervisor:
    """Waits for one service process, restarts it by policy, probes it, rotates its log."""

    def __init__(
        self, provider: ServiceProvider, name: str, spec: ServiceSpec, handle: Handle
    ) -> None:
        self.provider = provider
        self.name = name
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
        with self._lock:
            if code is None:
                self.exit = "exited (status unknown: adopted process)"
            elif code < 0:
                self.exit = f"killed by {signal.Signals(-code).name}"
            else:
                self.exit = f"exited with status {code}"
            self.exit_code = code
            self.ready = self.spec.readiness is None
            if _no_restart(self.spec, code):
                self.gave_up = True
            else:
                stable = ran >= self.spec.backoff.resetSeconds
                self.failures = 1 if stable else self.failures + 1
                self.restart_at = time.monotonic() + self._delay()
        self.provider.record_exit(self.name, self.exit, code)
        self._notify()
        while not self.gave_up:
            delay = max((self.restart_at or 0) - time.monotonic(), 0)
            if self._stopping.wait(delay):
                return
            try:
                handle = self.provider.respawn(self.name, self._stopping)
            except _Stopping:
                return
            except (OSError, ProviderError) as err:
                with self._lock:
                    self.exit = f"restart failed: {err}"
                    self.failures += 1
                    self.restart_at = time.monotonic() + self._delay()
                self._notify()
                continue
            with self._lock:
                self.handle.close()
                self.handle = handle
                self.restart_at = None
                self.restarts += 1
                self.started_at = time.monotonic()
                self.live_failures = 0
            self._notify()
            return

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
                        stop(handle, signal.Signals[spec.stop.signal], spec.stop.graceSeconds)
                        self._notify()
            periods = [p.periodSeconds for p in (spec.readiness, spec.liveness) if p]
            self._stopping.wait(min([*periods, 0.5]) / 5 if periods else 0.5)


@dataclass
class _Watch:
    names: set[str]
    notify: WatchCallback
    ids: dict[str, str] = field(default_factory=dict)


class ServiceProvider:
    """Services supervised by this agent (see the module docstring)."""

    kinds: ClassVar[tuple[str, ...]] = ("Service",)

    def __init__(self, target: Target) -> None:
        self.target = target
        self._sups: dict[str, Supervisor] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()
        self._watches: list[_Watch] = []
        self._desired: Mapping[str, Resource] = {}

    # -- paths and records ------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        if self.target.state_dir is None:
            raise ProviderError("the Service kind needs the agent's state dir", transient=False)
        return self.target.state_dir

    def _dir(self, name: str) -> Path:
        return service_dir(self.state_dir, name)

    def log_path(self, name: str) -> Path:
        return self._dir(name) / LOG

    def _record(self, name: str) -> dict[str, Any]:
        return read_json(self._dir(name) / RECORD) or {}

    def _save(self, name: str, rec: dict[str, Any]) -> None:
        ensure_private_dir(self._dir(name))
        write_json_atomic(self._dir(name) / RECORD, rec)

    def _lock(self, name: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(name, threading.RLock())

    # -- engine hooks -----------------------------------------------------------------

    def claims(self, resource: Resource) -> tuple[str, ...]:
        return (CLAIM_PREFIX + resource.name,)

    def implicit_dependencies(self, resource: Resource, by_path: dict[str, str]) -> Iterable[str]:
        """After its release and the resources it restarts or reloads on."""
        spec = service_spec(resource)
        out = [spec.release] if spec.release else []
        return [*out, *spec.restartOn, *spec.reloadOn]

    def set_desired(self, resources: Mapping[str, Resource]) -> None:
        """The stack's declared resources for this pass (for ``restartOn``/``reloadOn``)."""
        self._desired = resources

    def effective_digest(self, resource: Resource) -> str:
        """The declaration a Service's state derives from: its own, its release's and
        those it ``restartOn``. The engine tells a new declaration from drift with it."""
        spec = service_spec(resource)
        related = [spec.release] if spec.release else []
        related += [*spec.restartOn, *spec.reloadOn]
        return _digest([resource.digest, self._related_digest(related)])

    def health(self, resource: Resource) -> tuple[str, str]:
        sup = self._sups.get(resource.name)
        if sup is not None:
            return sup.health()
        rec = self._record(resource.name)
        if not is_same_process(rec.get("pid"), rec.get("started")):
            return MISSING, rec.get("exit") or "not running"
        spec = service_spec(resource)
        if spec.readiness is None:
            return HEALTHY, f"running (pid {rec['pid']}, not supervised by this process)"
        cfg = rec.get("config") or {}
        ok, message = run_probe(spec.readiness, cfg.get("cwd"), cfg.get("env"))
        return (HEALTHY if ok else DEGRADED), message

    def watch(self, resources: Sequence[Resource], notify: WatchCallback) -> _Closer:
        """Report exits and health changes of these services; adopt their live processes.

        The agent calls it after each full pass: a process recorded by an earlier agent
        whose pid *and* start time still match is supervised again (through a pidfd),
        without being restarted. A CLI run never calls it, so it adopts nothing.
        """
        w = _Watch({r.name for r in resources}, notify, {r.name: r.id for r in resources})
        with self._guard:
            self._watches.append(w)
        for r in resources:
            self._adopt(r)
        return _Closer(self, w)

    def _adopt(self, resource: Resource) -> None:
        name = resource.name
        with self._lock(name):
            rec = self._record(name)
            if name in self._sups or not rec.get("pid"):
                return
            handle = None
            if is_same_process(rec.get("pid"), rec.get("started")):
                handle = Handle.adopt(int(rec["pid"]), int(rec["started"]))
            if handle is None:  # gone since the pass read it: ask for a pass to start it
                threading.Thread(target=self.notify, args=(name,), daemon=True).start()
            else:
                self._sups[name] = Supervisor(self, name, service_spec(resource), handle)
                if rec.get("supervision") != self._sups[name].supervision:
                    rec["supervision"] = self._sups[name].supervision
                    self._save(name, rec)

    def unwatched(self) -> set[str]:
        return set()

    def notify(self, name: str) -> None:
        with self._guard:
            watches = [w for w in self._watches if name in w.names]
        for w in watches:
            with contextlib.suppress(Exception):
                w.notify({w.ids[name]})

    def _unwatch(self, w: _Watch) -> None:
        with self._guard:
            if w in self._watches:
                self._watches.remove(w)

    # -- desired configuration ---------------------------------------------------------

    def _related_digest(self, ids: Sequence[str]) -> str:
        return _digest([[i, getattr(self._desired.get(i), "digest", "")] for i in sorted(ids)])

    def run_config(self, spec: ServiceSpec, release_dir: str | None) -> dict[str, Any]:
        """What the process runs with; any difference is a restart."""
        env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "SETPOINT_ROOT": str(self.target.root)}
        cwd = "/"
        if spec.release is not None and release_dir is not None:
            env["SETPOINT_RELEASE"] = release_dir
            cwd = release_dir
        if spec.workingDir is not None:
            cwd = self.target.host_path(spec.workingDir)
        env.update(spec.env)
        argv = ["/bin/sh", "-c", spec.command[0]] if spec.shell else list(spec.command)
        return {
            "argv": argv,
            "env": env,
            "cwd": cwd,
            "user": spec.user,
            "release_dir": release_dir if spec.release else None,
            "restart_on": self._related_digest(spec.restartOn) if spec.restartOn else "",
        }

    # -- read / plan ------------------------------------------------------------------

    def read(self, resource: Resource) -> Observed | None:
        spec = service_spec(resource)
        name = resource.name
        release_dir = None
        if spec.release is not None:
            release_dir = current_dir(self.state_dir, spec.release.partition("/")[2])
        with self._lock(name):
            rec = self._record(name)
            sup = self._sups.get(name)
            if not rec and sup is None:
                return None
            failed = rec.get("failed") or {}
            health, message = MISSING, "not running"
            if sup is not None:
                running, restarting, exit, (health, message) = sup.snapshot()
                gave_up, code = sup.gave_up, sup.exit_code
            else:
                # Not supervised by this process (a CLI run, or before the agent's first
                # watch): the record and /proc say whether it runs; nothing is adopted.
                running = is_same_process(rec.get("pid"), rec.get("started"))
                restarting, exit, code = None, rec.get("exit", ""), rec.get("exit_code")
                gave_up = not running and "exit" in rec and _no_restart(spec, code)
            state = ServiceState(
                running=running,
                pid=sup.handle.pid if sup else (rec.get("pid") if running else None),
                digest=rec.get("digest"),
                reload_digest=rec.get("reload_digest"),
                supervision=sup.supervision if sup else rec.get("supervision"),
                release_dir=release_dir,
                exit=exit or "not running",
                exit_code=code,
                gave_up=gave_up,
                restarting_in=restarting,
                failed_digest=failed.get("digest"),
                failed_message=failed.get("message", ""),
                health=health,
                message=message,
            )
        return Observed(resource.id, state)

    def plan(self, resource: Resource, observed: Observed | None) -> Change:
        spec = service_spec(resource)
        path = CLAIM_PREFIX + resource.name
        state = observed.data if observed is not None else None
        if state is not None and not isinstance(state, ServiceState):
            raise ProviderError(f"{resource.id}: observed data is not a service state")
        if state is None:
            return Change(resource.id, Action.CREATE, path, reason="start")
        if spec.release is not None and state.release_dir is None and not state.running:
            raise ProviderError(
                f"{resource.id}: {spec.release} has no current version in place yet"
            )
        release_dir = state.release_dir
        want = _digest(self.run_config(spec, release_dir))
        reload = self._related_digest(spec.reloadOn) if spec.reloadOn else ""
        if state.failed_digest == want:
            if state.running or state.restarting_in is not None:
                raise StallError(state.failed_message, reason="RolledBack")
            return Change(
                resource.id, Action.CREATE, path,
                fields=(FieldChange("configuration", "failed rollout", LAST_HEALTHY),),
                reason="start the last healthy configuration (the declared one failed)",
            )  # fmt: skip
        if state.digest != want:
            fields = self._config_fields(resource.name, spec, release_dir)
            action = Action.REPLACE if state.running else Action.CREATE
            return Change(resource.id, action, path, fields=fields, reason="restart")
        if state.restarting_in is not None:
            # The supervisor restarts it by policy; a crash loop shows as health Degraded.
            return Change(
                resource.id, Action.NOOP, path,
                reason=f"{state.exit}; restarting in {state.restarting_in:.1f}s (back-off)",
            )  # fmt: skip
        if not state.running:
            if state.gave_up:
                return Change(
                    resource.id, Action.NOOP, path,
                    reason=f"{state.exit}; not restarted (restart: {spec.restart})",
                )  # fmt: skip
            return Change(
                resource.id, Action.CREATE, path,
                fields=(FieldChange("process", state.exit, "running"),), reason="start",
            )  # fmt: skip
        if state.supervision != supervision_digest(spec):
            return Change(
                resource.id, Action.UPDATE, path,
                fields=(FieldChange(SUPERVISION, "old", "declared"),),
            )  # fmt: skip
        if (state.reload_digest or "") != reload:
            return Change(
                resource.id, Action.UPDATE, path,
                fields=(FieldChange(RELOAD, None, spec.reloadSignal),),
                reason=f"{', '.join(spec.reloadOn)} changed",
            )  # fmt: skip
        return Change(resource.id, Action.NOOP, path, reason=f"running (pid {state.pid})")

    def _config_fields(
        self, name: str, spec: ServiceSpec, release_dir: str | None
    ) -> tuple[FieldChange, ...]:
        old = self._record(name).get("config") or {}
        new = self.run_config(spec, release_dir)
        out = []
        for key in ("argv", "env", "cwd", "user", "release_dir", "restart_on"):
            if old.get(key) != new.get(key):
                label = {"restart_on": "restartOn", "release_dir": "release"}.get(key, key)
                o, n = old.get(key), new.get(key)
                if key in ("env", "restart_on"):
                    o, n = ("(old)" if o else None), "(declared)"
                out.append(FieldChange(label, _s(o), _s(n)))
        return tuple(out)

    # -- apply ------------------------------------------------------------------------

    def apply(self, resource: Resource, change: Change) -> None:
        if change.action is Action.NOOP:
            return
        spec = service_spec(resource)
        name = resource.name
        if change.action is Action.DELETE:
            self.delete(resource.kind, CLAIM_PREFIX + name)
            return
        what = {f.field for f in change.fields}
        healthy_only = any(f.new == LAST_HEALTHY for f in change.fields)
        if SUPERVISION in what:
            with self._lock(name):
                sup = self._sups.get(name)
                if sup is not None:
                    sup.spec, sup.supervision = spec, supervision_digest(spec)
                rec = self._record(name)
                rec["supervision"] = supervision_digest(spec)
                self._save(name, rec)
            return
        if RELOAD in what:
            self._reload(resource, spec)
            return
        release_dir = None
        if spec.release is not None:
            release_dir = current_dir(self.state_dir, spec.release.partition("/")[2])
        if spec.release is not None and release_dir is None and not healthy_only:
            raise ProviderError(f"{resource.id}: {spec.release} has no current version yet")
        config = self.run_config(spec, release_dir)
        digest = _digest(config)
        reload = self._related_digest(spec.reloadOn) if spec.reloadOn else ""
        if healthy_only:
            rec = self._record(name)
            healthy = rec.get("healthy")
            if healthy:
                self._start(name, spec, healthy["config"], healthy["digest"], reload)
                self._wait_ready(name, spec)
            raise StallError(rec.get("failed", {}).get("message", "rollout failed"), "RolledBack")
        self._start(name, spec, config, digest, reload)
        ok, message = self._wait_ready(name, spec)
        if ok:
            with self._lock(name):
                rec = self._record(name)
                rec["healthy"] = {"config": config, "digest": digest}
                rec.pop("failed", None)
                self._save(name, rec)
            return
        self._rollback(resource, spec, digest, message)

    def _start(
        self, name: str, spec: ServiceSpec, config: dict[str, Any], digest: str, reload: str
    ) -> None:
        with self._lock(name):
            sup = self._sups.pop(name, None)
            if sup is not None:
                sup.shutdown(stop_process=True)
            else:
                self._stop_recorded(name, spec)
            ensure_private_dir(self._dir(name))
            rec = self._record(name)
            rec.update(config=config, digest=digest, reload_digest=reload)
            rec.update(stop_signal=spec.stop.signal, stop_grace=spec.stop.graceSeconds)
            rec.update(supervision=supervision_digest(spec))
            rec.pop("exit", None)
            self._save(name, rec)
            handle = self._respawn(name)
            self._sups[name] = Supervisor(self, name, spec, handle)

    def respawn(self, name: str, stopping: threading.Event | None = None) -> Handle:
        """Start the recorded configuration of ``name`` and record the new process.

        A supervisor passes its ``stopping`` event: if the service is being stopped or
        replaced meanwhile (its lock is held for that), nothing is started.
        """
        lock = self._lock(name)
        while not lock.acquire(timeout=0.05):
            if stopping is not None and stopping.is_set():
                raise _Stopping
        try:
            if stopping is not None and stopping.is_set():
                raise _Stopping
            return self._respawn(name)
        finally:
            lock.release()

    def _respawn(self, name: str) -> Handle:
        rec = self._record(name)
        cfg = rec.get("config")
        if not cfg:
            raise ProviderError(f"Service/{name}: nothing recorded to start")
        if not os.path.isdir(cfg["cwd"]):
            raise ProviderError(f"Service/{name}: working directory {cfg['cwd']} does not exist")
        try:
            log = self.log_path(name)
            handle = spawn(cfg["argv"], cfg["cwd"], cfg["env"], log, cfg["user"])
        except (OSError, KeyError, subprocess.SubprocessError) as err:
            raise ProviderError(f"Service/{name}: cannot start {cfg['argv'][0]}: {err}") from err
        rec.update(pid=handle.pid, started=handle.started, started_at=time.time())
        self._save(name, rec)
        return handle

    def record_exit(self, name: str, exit: str, code: int | None) -> None:
        with self._lock(name):
            rec = self._record(name)
            if rec:
                rec.update(exit=exit, exit_code=code)
                self._save(name, rec)

    def probe_context(self, name: str) -> tuple[str | None, dict[str, str] | None]:
        cfg = self._record(name).get("config") or {}
        return cfg.get("cwd"), cfg.get("env")

    def _wait_ready(self, name: str, spec: ServiceSpec) -> tuple[bool, str]:
        if spec.readiness is None:
            return True, "started (no readiness probe)"
        deadline = time.monotonic() + spec.readyTimeout
        while True:
            sup = self._sups.get(name)
            if sup is None:
                return False, "not supervised"
            if sup.gave_up:
                return False, f"{sup.exit} before becoming ready"
            if sup.ready and sup.running():
                return True, sup.message
            if time.monotonic() >= deadline:
                why = sup.message if sup.running() else (sup.exit or sup.message)
                return False, f"not ready within {spec.readyTimeout:g}s: {why}"
            time.sleep(0.02)

    def _rollback(self, resource: Resource, spec: ServiceSpec, digest: str, message: str) -> None:
        name = resource.name
        rec = self._record(name)
        healthy = rec.get("healthy")
        if healthy and healthy.get("digest") != digest:
            old_release = healthy["config"].get("release_dir")
            what = f"release {Path(old_release).name}" if old_release else "configuration"
            text = (
                f"{resource.id}: the new configuration {message}; rolled back to the last "
                f"healthy {what}, which keeps running"
            )
            reload = rec.get("reload_digest", "")
            self._start(name, spec, healthy["config"], healthy["digest"], reload)
            with self._lock(name):
                rec = self._record(name)
                rec["failed"] = {"digest": digest, "message": text}
                self._save(name, rec)
            self._wait_ready(name, spec)
            raise StallError(text, reason="RolledBack")
        text = f"{resource.id}: {message}; no earlier healthy configuration to roll back to"
        with self._lock(name):
            rec = self._record(name)
            rec["failed"] = {"digest": digest, "message": text}
            self._save(name, rec)
        raise StallError(text, reason="RolloutFailed")

    def _reload(self, resource: Resource, spec: ServiceSpec) -> None:
        name = resource.name
        with self._lock(name):
            sup = self._sups.get(name)
            if sup is None or not sup.running():
                raise ProviderError(f"{resource.id}: not running, cannot reload")
            sup.handle.signal(signal.Signals[spec.reloadSignal])
            rec = self._record(name)
            rec["reload_digest"] = self._related_digest(spec.reloadOn)
            self._save(name, rec)

    def _stop_recorded(self, name: str, spec: ServiceSpec | None) -> str:
        """Stop a recorded process that no supervisor holds (only if it is still ours)."""
        rec = self._record(name)
        pid, started = rec.get("pid"), rec.get("started")
        if not is_same_process(pid, started):
            return "not running"
        handle = Handle.adopt(int(pid or 0), int(started or 0))
        if handle is None:
            return "not running"
        try:
            sig = signal.Signals[spec.stop.signal if spec else rec.get("stop_signal", "SIGTERM")]
            grace = spec.stop.graceSeconds if spec else float(rec.get("stop_grace", 10))
            stop(handle, sig, grace)
        finally:
            handle.close()
        return f"stopped pid {pid}"

    # -- prune ------------------------------------------------------------------------

    def delete(self, kind: str, path: str) -> str:
        """Stop the service gracefully, forget it, and collect its release's orphans."""
        name = path[len(CLAIM_PREFIX) :] if path.startswith(CLAIM_PREFIX) else ""
        if not name or "/" in name or name in (".", ".."):
            raise ProviderError(f"cannot delete service {path!r}: not a service", transient=False)
        with self._lock(name):
            sup = self._sups.pop(name, None)
            if sup is not None:
                sup.shutdown(stop_process=True)
                done = f"stopped service {name}"
            else:
                done = f"service {name}: " + self._stop_recorded(name, None)
            with contextlib.suppress(FileNotFoundError):
                (self._dir(name) / RECORD).unlink()
        collect_orphans(self.state_dir)
        return done


def _no_restart(spec: ServiceSpec, code: int | None) -> bool:
    return spec.restart == "never" or (spec.restart == "on-failure" and code == 0)


class _Closer:
    def __init__(self, provider: ServiceProvider, watch: _Watch) -> None:
        self._provider = provider
        self._watch = watch

    def close(self) -> None:
        self._provider._unwatch(self._watch)


def _s(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)
