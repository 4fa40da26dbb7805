"""A fleet on one machine, for benchmarks: nats-server, a counting Git server, N real agents.

Used by ``bench/fleet.py`` (fan-out, idle cost, memory) and meant to be reused by other
fleet benchmarks (rollouts in waves): everything is a method of :class:`FleetHarness`.

- NATS: Debian's ``nats-server`` on 127.0.0.1, JetStream in a temporary directory.
- Git: one bare repository served over smart HTTP on 127.0.0.1 by a small threaded
  Python server (:class:`GitServer`) running ``git upload-pack --stateless-rpc`` for each
  POST, as a forge does (protocol v2's ``info/refs`` advertisement, the same bytes every
  time, is kept from ``git http-backend``'s first answer; anything else goes through
  http-backend as a CGI). Its CPU (git processes and handler threads) is reported beside
  the agents'. It counts what it serves: GETs of ``info/refs`` (one per ls-remote, and
  one at the start of every fetch), ``ls-refs`` POSTs (protocol v2's second half of an
  ls-remote) and ``fetch`` POSTs (an actual download). Commits are pushed straight into
  the bare repository (not over HTTP), so they never show in the counts.
- Agents: separate ``setpoint agent`` processes, each with its own root, state dir, host
  name (``agent-000`` ...), labels ``{role: web, wave: "1".."3"}`` (waves spread evenly
  by default; ``wave_of`` changes that) and API on a free loopback port, or
  ``listen: off`` with ``api=False`` (how a NATS fleet runs: no HTTP stack loaded). The default
  repository has one stack ``web`` at path ``m`` with one File ``/etc/motd``; give
  ``files`` and ``agent_config`` to run something else (a Fleet file, say).
- The relay (``setpoint relay``) takes the webhook the harness posts after a commit.

Example::

    with FleetHarness(Path(tmp), agents=20, poll_interval=60) as h:
        h.start()
        t0, sha = h.commit_motd("v2\\n")
        h.webhook(sha)
        done = h.wait_converged("v2\\n")          # agent index -> seconds after t0
        print(h.cpu_seconds(), h.rss_kib(), h.git.counts())

CPU figures are read from ``/proc/PID/stat`` (user + system, including waited-for
children such as the agents' ``git`` processes), memory from ``/proc/PID/status`` and
``smaps_rollup``. Nothing needs the agents' HTTP API: convergence is read from their
roots, status writes and who is on the bus from the ``setpoint-status`` bucket's stream
(:meth:`FleetHarness.kv_writes`, :meth:`FleetHarness.bus_connected`), polls from the Git
server's counts (one ``ls-refs`` POST per ls-remote). With the API on, the agents' own
counters are there too (:meth:`FleetHarness.statuses`, :meth:`FleetHarness.polls`).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
SECRET = b"bench-webhook-secret"
TICK = os.sysconf("SC_CLK_TCK")
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, check=True,
                          capture_output=True, text=True).stdout.strip()


def wait_until(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``pred`` until truthy; RuntimeError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


# -- Git over smart HTTP, counted ---------------------------------------------------------


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog is 5: a fleet polling at once would overflow it and
    # wait for TCP's SYN retries (1 s, 3 s ...), which is the harness, not the agents.
    request_queue_size = 1024


class GitServer:
    """``git http-backend`` for every repository under ``root``, with request counts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._counts = {"info_refs": 0, "ls_refs": 0, "fetch": 0, "other": 0}
        self._handler_cpu = 0.0
        self._adverts: dict[Path, tuple[int, list[tuple[str, str]], bytes]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                outer._serve(self)

            do_GET = _handle
            do_POST = _handle

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def cpu_seconds(self) -> float:
        """CPU of the request handlers' Python code so far (their git children are apart)."""
        with self._lock:
            return self._handler_cpu

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        t0 = time.thread_time()
        try:
            self._answer(h)
        finally:
            spent = time.thread_time() - t0
            with self._lock:
                self._handler_cpu += spent

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        path, _, query = h.path.partition("?")
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        v2 = "version=2" in (h.headers.get("Git-Protocol") or "")
        repo = self.root / path.lstrip("/").rsplit("/", 2)[0] if "/" in path.lstrip("/") else None
        if h.command == "GET" and path.endswith("/info/refs"):
            self._count("info_refs")
            if v2 and query == "service=git-upload-pack" and repo is not None:
                # Protocol v2's advertisement lists capabilities, never refs: the same
                # bytes for every request, kept like a forge's front end does.
                return self._reply(h, *self._advertisement(repo))
        elif h.command == "POST" and path.endswith("/git-upload-pack"):
            plain = gzip.decompress(body) if h.headers.get("Content-Encoding") == "gzip" else body
            if b"command=ls-refs" in plain:
                self._count("ls_refs")
            elif b"command=fetch" in plain or b"want " in plain:
                self._count("fetch")
            else:
                self._count("other")
            if repo is not None and repo.is_dir():
                # What http-backend would run, without the CGI in between.
                env = {"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1"}
                if v2:
                    env["GIT_PROTOCOL"] = "version=2"
                out = subprocess.run(["git", "upload-pack", "--stateless-rpc", str(repo)],
                                     input=plain, env=env, capture_output=True,
                                     check=False).stdout
                return self._reply(h, 200, [
                    ("Content-Type", "application/x-git-upload-pack-result"),
                    ("Cache-Control", "no-cache, max-age=0, must-revalidate")], out)
        else:
            self._count("other")
        self._reply(h, *self._cgi(path, query, h.command, h.headers, body))

    def _advertisement(self, repo: Path) -> tuple[int, list[tuple[str, str]], bytes]:
        with self._lock:
            cached = self._adverts.get(repo)
        if cached is None:
            name = "/" + str(repo.relative_to(self.root)) + "/info/refs"
            cached = self._cgi(name, "service=git-upload-pack", "GET",
                               {"Git-Protocol": "version=2"}, b"")
            if cached[0] == 200:
                with self._lock:
                    self._adverts[repo] = cached
        return cached

    def _cgi(self, path: str, query: str, method: str, headers: Any,
             body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """``git http-backend`` as a CGI: (status, headers, body)."""
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": method,
            "CONTENT_TYPE": headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        for name in ("Content-Encoding", "Git-Protocol"):
            if headers.get(name):
                env["HTTP_" + name.upper().replace("-", "_")] = headers[name]
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True, check=False).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, found = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                found.append((k, v.strip()))
        return status, found, payload

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]],
               payload: bytes) -> None:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)


# -- inotify, for waiting on the agents' files -------------------------------------------


class DirWatch:
    """inotify on directories (files renamed or written into them), through libc."""

    _EVENTS = 0x00000008 | 0x00000080 | 0x00000100  # IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def add(self, directory: Path) -> int:
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(directory), self._EVENTS))
        if wd < 0:
            raise OSError(f"inotify_add_watch {directory} failed")
        return wd

    def wait(self, timeout: float) -> set[int]:
        """The watch descriptors with events within ``timeout`` s (empty: none, or overflow)."""
        import select
        import struct

        if not select.select([self.fd], [], [], timeout)[0]:
            return set()
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return set()
        wds: set[int] = set()
        i = 0
        while i + 16 <= len(data):
            wd, mask, _cookie, size = struct.unpack_from("iIII", data, i)
            if mask & 0x4000:  # IN_Q_OVERFLOW: events lost, look at everyone
                return set()
            wds.add(wd)
            i += 16 + size
        return wds


# -- processes ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its waited-for children (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / TICK


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, and Pss / private (USS) from smaps_rollup, in KiB."""
    out = {"rss": 0, "pss": 0, "uss": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key == "Pss":
                out["pss"] = int(rest.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                out["uss"] += int(rest.split()[0])
    except OSError:
        pass
    return out


def _terminate(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class AgentProc:
    """One ``setpoint agent`` process of the harness."""

    def __init__(self, index: int, base: Path, config: dict[str, Any]) -> None:
        self.index = index
        self.host = config["host"]
        self.dir = base
        self.root = Path(config["root"])
        self.state = Path(config["state"])
        self.root.mkdir(parents=True, exist_ok=True)
        path = base / "config.json"
        path.write_text(json.dumps(config))
        self.log = base / "agent.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "setpoint", "agent", "--config", str(path)],
                stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy(),
            )
        self.url: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def api_up(self) -> bool:
        """Started: its API listens, or (``listen: off``) it wrote agent.json without one."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent {self.host} exited: {self.log.read_text()[-3000:]}")
        try:
            info = json.loads((self.state / "agent.json").read_text())
        except (OSError, ValueError):
            return False
        if info.get("pid") != self.proc.pid:
            return False
        self.url = f"http://{info['listen']}" if info.get("listen") else None
        return True

    def status(self) -> dict[str, Any]:
        if self.url is None:
            raise RuntimeError(f"agent {self.host} runs with listen: off: no GET /status")
        with urllib.request.urlopen(self.url + "/status", timeout=30) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def read(self, rel: str) -> str | None:
        try:
            return (self.root / rel).read_text()
        except OSError:
            return None


# -- the harness --------------------------------------------------------------------------


class FleetHarness:
    """NATS + Git server + relay + N agents under ``base``; a context manager that cleans up.

    ``poll_interval``: the agents' Git poll (seconds); ``nats``: agents join the bus;
    ``heartbeat``/``spread``: their ``nats:`` settings; ``wave_of(i, n)``: agent i's wave
    label; ``files``: the repository's first commit; ``agent_config(i, cfg)``: edits agent
    i's config (a dict, as written to its config file) before it starts; ``api``: the
    agents' HTTP API on a free port (else ``listen: off``).
    """

    def __init__(
        self,
        base: Path,
        agents: int = 100,
        *,
        poll_interval: float = 60.0,
        resync: float = 3600.0,
        nats: bool = True,
        heartbeat: float = 30.0,
        spread: float = 0.0,
        wave_of: Callable[[int, int], int] | None = None,
        files: dict[str, str] | None = None,
        agent_config: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
        api: bool = True,
    ) -> None:
        self.base = base
        self.api = api
        self.n = agents
        self.poll_interval = poll_interval
        self.resync = resync
        self.use_nats = nats
        self.heartbeat = heartbeat
        self.spread = spread
        self.wave_of = wave_of or (lambda i, n: 1 + i * 3 // max(n, 1))
        self.files = files if files is not None else {"m/motd.yaml": motd_manifest("v1\n")}
        self.agent_config = agent_config
        self.agents: list[AgentProc] = []
        self.nats_proc: subprocess.Popen[bytes] | None = None
        self.nats_port = free_port()
        self.relay_proc: subprocess.Popen[bytes] | None = None
        self.relay_port = free_port()
        (base / "git").mkdir(parents=True, exist_ok=True)
        self.bare = base / "git" / "repo.git"
        self.work = base / "work"
        self.git = GitServer(base / "git")
        self.repo_url = self.git.url("repo.git")

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def __enter__(self) -> FleetHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- set-up ---------------------------------------------------------------------------

    def start(self, agents: int | None = None) -> None:
        """Repository, Git server, NATS and relay (if ``nats``), then the first agents."""
        git(self.base, "init", "-q", "--bare", "-b", "main", str(self.bare))
        git(self.base, "clone", "-q", str(self.bare), str(self.work))
        self.commit(self.files, "first")
        self.git.start()
        if self.use_nats:
            self.start_nats()
            self.start_relay()
        self.start_agents(self.n if agents is None else agents)

    def start_nats(self) -> None:
        store = self.base / "nats-store"
        store.mkdir(exist_ok=True)
        with open(self.base / "nats.log", "ab") as out:
            self.nats_proc = subprocess.Popen(
                [NATS_SERVER, "-js", "-sd", str(store), "-a", "127.0.0.1",
                 "-p", str(self.nats_port)], stdout=out, stderr=subprocess.STDOUT)

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.nats_port), timeout=0.5) as s:
                    return s.recv(4).startswith(b"INFO")
            except OSError:
                return False

        wait_until(up, 15, "nats-server accepting connections")

    def restart_nats(self) -> None:
        """Stop nats-server and start it again on the same port and store."""
        if self.nats_proc is not None:
            _terminate([self.nats_proc])
        self.start_nats()

    def start_relay(self) -> None:
        secret = self.base / "webhook-secret"
        secret.write_bytes(SECRET)
        with open(self.base / "relay.log", "ab") as out:
            self.relay_proc = subprocess.Popen(
                [sys.executable, "-m", "setpoint", "relay", "--nats", self.nats_url, "--listen",
                 f"127.0.0.1:{self.relay_port}", "--webhook-secret-file", str(secret)],
                stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())

        def up() -> bool:
            try:
                url = f"http://127.0.0.1:{self.relay_port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_until(up, 60, "relay up and connected to NATS", every=0.2)

    def config_for(self, i: int, api: bool | None = None) -> dict[str, Any]:
        """Agent i's config; ``api`` overrides the harness's ``api`` for this agent."""
        api = self.api if api is None else api
        d = self.base / "agents" / f"{i:03d}"
        cfg: dict[str, Any] = {
            "host": f"agent-{i:03d}",
            "labels": {"role": "web", "wave": str(self.wave_of(i, self.n))},
            "root": str(d / "root"),
            "state": str(d / "state"),
            "listen": "127.0.0.1:0" if api else "off",
            "retry": {"base": 1, "max": 30},
            "sources": [{"name": "infra", "url": self.repo_url, "ref": "main",
                         "interval": self.poll_interval}],
            "stacks": [{"name": "web", "source": "infra", "path": "m", "resync": self.resync}],
        }
        if self.use_nats:
            cfg["nats"] = {"url": self.nats_url, "heartbeatSeconds": self.heartbeat,
                           "spreadSeconds": self.spread}
        return self.agent_config(i, cfg) if self.agent_config is not None else cfg

    def start_agents(self, count: int, batch: int = 10,
                     api: bool | None = None) -> list[AgentProc]:
        """Start ``count`` more agents, ``batch`` at a time (each batch's APIs up first).

        ``api``: with or without their HTTP API (default: the harness's ``api``).
        """
        new: list[AgentProc] = []
        first = len(self.agents)
        for lo in range(first, first + count, batch):
            group = []
            for i in range(lo, min(lo + batch, first + count)):
                d = self.base / "agents" / f"{i:03d}"
                d.mkdir(parents=True, exist_ok=True)
                group.append(AgentProc(i, d, self.config_for(i, api)))
            self.agents += group
            new += group
            wait_until(lambda g=group: all(a.api_up() for a in g), 120,
                       f"agents {lo}.. API up", every=0.2)
        return new

    def stop(self) -> None:
        procs = [a.proc for a in self.agents]
        if self.relay_proc is not None:
            procs.append(self.relay_proc)
        _terminate(procs)
        if self.nats_proc is not None:
            _terminate([self.nats_proc])
        self.git.stop()

    # -- commits and webhooks -------------------------------------------------------------

    def commit(self, files: dict[str, str], message: str = "change") -> str:
        """Write ``files`` in the work clone, commit, push to the bare repository; the sha."""
        for rel, text in files.items():
            p = self.work / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", message)
        git(self.work, "push", "-q", "origin", "HEAD:main")
        return git(self.work, "rev-parse", "HEAD")

    def commit_motd(self, text: str) -> tuple[float, str]:
        """Commit a new /etc/motd content; (time the push finished, sha)."""
        sha = self.commit({"m/motd.yaml": motd_manifest(text)}, f"motd {text.strip()}")
        return time.time(), sha

    def webhook(self, sha: str) -> dict[str, Any]:
        """Post a GitHub-style push webhook for ``sha`` to the relay."""
        body = json.dumps({"ref": "refs/heads/main", "after": sha,
                           "repository": {"clone_url": self.repo_url}}).encode()
        sig = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.relay_port}/hooks/git", data=body, method="POST",
            headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            answer: dict[str, Any] = json.loads(r.read())
        return answer

    # -- measurements ---------------------------------------------------------------------

    def wait_converged(self, text: str, timeout: float = 300.0, rel: str = "etc/motd",
                       since: float | None = None,
                       agents: list[AgentProc] | None = None) -> dict[int, float]:
        """Wait until every agent's ``rel`` reads ``text``; agent index -> file mtime.

        The mtime is when the agent wrote the file (atomic rename of a fresh temp file),
        so when this process notices (inotify on the agents' directories, a look at all
        of them every second besides) adds nothing to the figures; pass ``since`` to get
        seconds after it instead.
        """
        agents = self.agents if agents is None else agents
        done: dict[int, float] = {}

        def check_one(a: AgentProc) -> None:
            try:
                st = os.stat(a.root / rel)
            except OSError:
                return
            if a.read(rel) == text:
                done[a.index] = st.st_mtime_ns / 1e9

        def check(group: list[AgentProc]) -> bool:
            for a in group:
                if a.index not in done:
                    check_one(a)
            return len(done) == len(agents)

        dirs = {a.index: (a.root / rel).parent for a in agents}
        with DirWatch() as watch:
            # Told by the kernel when a file lands in one of the agents' directories, we
            # look at that agent only: stat-ing every agent's file every 50 ms cost this
            # process (and so the cores the agents share) about 0.5 s per 100-agent commit.
            by_wd = {watch.add(d): a for a in agents if (d := dirs[a.index]).is_dir()}
            if len(by_wd) < len(agents):
                by_wd = {}  # a directory is not there yet (first start): poll instead
            deadline = time.monotonic() + timeout
            pending = agents
            while not check(pending):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for "
                                       f"{len(agents)} agents converged on {text.strip()!r}")
                if by_wd:
                    # Every second, a look at all of them too: a missed event costs no more.
                    wds = watch.wait(min(left, 1.0))
                    pending = [by_wd[w] for w in wds if w in by_wd] if wds else agents
                else:
                    time.sleep(min(left, 0.05))
        return done if since is None else {i: t - since for i, t in done.items()}

    def cpu_seconds(self, agents: list[AgentProc] | None = None) -> float:
        """Total CPU seconds of the agents (and their waited-for git processes)."""
        return sum(cpu_seconds(a.pid) for a in (self.agents if agents is None else agents))

    def memory_kib(self) -> list[dict[str, int]]:
        return [memory_kib(a.pid) for a in self.agents]

    def statuses(self) -> list[dict[str, Any]]:
        """Every agent's GET /status (``api=True`` only)."""
        return [a.status() for a in self.agents]

    def polls(self) -> int:
        """ls-remote checks the agents made (their own counters, from GET /status)."""
        return sum(int(s["agent"]["sources"]["infra"]["checks"]) for s in self.statuses())

    def bus_connected(self) -> bool:
        """Every agent is on the bus: each has written its stack's status to the bucket."""
        if self.api:
            return all(s["agent"]["fleetbus"] and s["agent"]["fleetbus"]["connected"]
                       for s in self.statuses())
        from setpoint.fleetbus.status import escape_host

        hosts = {key.split(".")[0] for key in self.status_keys()}
        return all(escape_host(a.host) in hosts for a in self.agents)

    def status_stream(self) -> tuple[int, list[str]]:
        """The ``setpoint-status`` stream: (last sequence = every write so far, its keys)."""
        prefix = "$KV.setpoint-status."

        async def read() -> tuple[int, list[str]]:
            import nats
            import nats.js.errors

            nc = await nats.connect(self.nats_url, connect_timeout=5, allow_reconnect=False)
            try:
                js = nc.jetstream(timeout=30)
                try:
                    info = await js.stream_info("KV_setpoint-status", subjects_filter=prefix + ">")
                except nats.js.errors.NotFoundError:
                    return 0, []  # no agent has written yet
                keys = [k[len(prefix):] for k in info.state.subjects or {}]
                return int(info.state.last_seq), keys
            finally:
                await nc.close()

        return asyncio.run(read())

    def kv_writes(self) -> int:
        """Status entries written to the bucket so far, by every agent (the stream's count)."""
        return self.status_stream()[0]

    def status_keys(self) -> list[str]:
        """The bucket's keys (``HOST.STACK``, host escaped as in setpoint.fleetbus.status)."""
        return self.status_stream()[1]


def motd_manifest(text: str) -> str:
    doc = {"apiVersion": "setpoint/v1", "kind": "File", "metadata": {"name": "motd"},
           "spec": {"path": "/etc/motd", "content": text}}
    return json.dumps(doc) + "\n"
