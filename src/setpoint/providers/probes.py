"""Readiness and liveness probes of the Service kind: http, tcp or exec, once.

``run_probe(spec, cwd, env)`` returns ``(ok, message)``; it never raises. Used by the
service supervisor (:mod:`setpoint.providers.service`).
"""

from __future__ import annotations

import http.client
import socket
import subprocess
from urllib.parse import urlsplit

from setpoint.providers.service_spec import ProbeSpec


def run_probe(
    spec: ProbeSpec, cwd: str | None = None, env: dict[str, str] | None = None
) -> tuple[bool, str]:
    try:
        if spec.http is not None:
            return _http(spec.http.url, spec.http.status, spec.timeoutSeconds)
        if spec.tcp is not None:
            with socket.create_connection(
                (spec.tcp.host, spec.tcp.port), timeout=spec.timeoutSeconds
            ):
                return True, f"tcp {spec.tcp.host}:{spec.tcp.port} accepts connections"
        assert spec.exec is not None
        proc = subprocess.run(
            spec.exec.command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=spec.timeoutSeconds,
        )
        tail = (proc.stdout + proc.stderr).decode(errors="replace").strip()[-200:]
        if proc.returncode == 0:
            return True, f"exec {spec.exec.command[0]} succeeded"
        return False, f"exec {spec.exec.command[0]} exited {proc.returncode}: {tail}"
    except subprocess.TimeoutExpired:
        return False, f"probe timed out after {spec.timeoutSeconds}s"
    except (OSError, http.client.HTTPException) as err:
        return False, f"probe failed: {err}"


def _http(url: str, want: int | None, timeout: float) -> tuple[bool, str]:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.netloc, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("GET", path, headers={"User-Agent": "setpoint-probe"})
        resp = conn.getresponse()
        resp.read(64 * 1024)
        ok = resp.status == want if want is not None else 200 <= resp.status < 400
        return ok, f"GET {url} → {resp.status}"
    finally:
        conn.close()
