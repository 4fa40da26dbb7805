"""Readiness and liveness probes of the Service kind: http, tcp or exec, once.

``run_probe(spec, cwd, env)`` returns ``(ok, message)``; it never raises. Used by the
service supervisor (:mod:`setpoint.providers.services.service`). The message reaches the status
and the journal: an http probe's URL is shown redacted (:mod:`setpoint.model.redact`),
and ``user:password@`` in it is sent as a Basic ``Authorization`` header.
"""

from __future__ import annotations

import base64
import socket
import subprocess
from urllib.parse import unquote, urlsplit

from setpoint.model.redact import redact_text, redact_url
from setpoint.providers.services.service_spec import ProbeSpec


def run_probe(
    spec: ProbeSpec, cwd: str | None = None, env: dict[str, str] | None = None
) -> tuple[bool, str]:
    import http.client  # here, not at the top: ssl costs every `setpoint` start 10 ms

    try:
        if spec.http is not None:
            try:
                return _http(spec.http.url, spec.http.status, spec.timeoutSeconds)
            except (OSError, http.client.HTTPException, ValueError) as err:
                return False, f"probe failed: {redact_text(str(err), spec.http.url)}"
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
    import http.client

    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.netloc.rpartition("@")[2], timeout=timeout)
    headers = {"User-Agent": "setpoint-probe"}
    if parts.username is not None:
        cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(cred.encode()).decode()
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read(64 * 1024)
        ok = resp.status == want if want is not None else 200 <= resp.status < 400
        return ok, f"GET {redact_url(url)} → {resp.status}"
    finally:
        conn.close()
