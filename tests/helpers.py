"""Test helpers: manifest text builders, running the real CLI and agent processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from setpoint.config import AgentConfig
from setpoint.engine.controller import Controller

# setpoint's temporary files: ``.NAME.setpoint-<state dir token>.tmp``.
TMP_RE = re.compile(r"^\..+\.setpoint-[0-9a-f]{8}\.tmp$")


def manifest(kind: str, name: str, labels: dict[str, str] | None = None, **spec: Any) -> str:
    doc: dict[str, Any] = {"apiVersion": "setpoint/v1", "kind": kind, "metadata": {"name": name}}
    if labels:
        doc["metadata"]["labels"] = labels
    doc["spec"] = spec
    return yaml.safe_dump(doc, sort_keys=False)


def docs(*parts: str) -> str:
    return "---\n".join(parts)


def cli(
    *args: str | Path, check: int | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``setpoint`` command in a child process."""
    proc = subprocess.run(
        [sys.executable, "-m", "setpoint", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
    )
    if check is not None and proc.returncode != check:
        raise AssertionError(
            f"setpoint {' '.join(map(str, args))} exited {proc.returncode}, expected {check}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def wait_for(
    pred: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll ``pred`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30.0
) -> None:
    """Send ``sig`` to ``proc`` if it still runs, wait up to ``timeout`` s, then kill it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_agent(*args: str | Path, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "setpoint", "agent", *map(str, args)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )


def one_stack(url: str, root: Path, state: Path, *, stack: dict[str, Any] | None = None,
              **source: Any) -> AgentConfig:
    """A config with one source ``repo`` (``url`` + ``source`` fields) and one stack ``web``
    on path ``m`` (+ ``stack`` fields)."""
    return AgentConfig.model_validate({
        "root": str(root), "state": str(state),
        "sources": [{"name": "repo", "url": url, "ref": "main", **source}],
        "stacks": [{"name": "web", "source": "repo", "path": "m", **(stack or {})}],
    })


def one_pass(cfg: AgentConfig, dry_run: bool = False) -> tuple[Any, Any, list[Any], dict[str, Any]]:
    """Fetch and one pass (in process) of stack ``web``: result, status, journal, inventory."""
    ctl = Controller(cfg)
    try:
        (result,) = ctl.run_once(dry_run=dry_run)
        return (result, ctl.db.load_status("web"), ctl.db.history(limit=1000),
                ctl.db.inventory("web"))
    finally:
        ctl.close()


def self_signed(tmp: Path, name: str = "tls") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    crt, k = tmp / f"{name}.crt", tmp / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    k.chmod(0o600)
    return crt, k
