"""Spec models of the process kinds: Release (an unpacked artefact) and Service (a process).

Validated by :mod:`setpoint.render` through the registry; used by
:mod:`setpoint.providers.services.release` and :mod:`setpoint.providers.services.service`.
"""

from __future__ import annotations

import re
import signal
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator, model_validator

from setpoint.model.fields import STRICT, AbsPath, Owner, ResourceId
from setpoint.model.redact import redact_url

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_signal(value: Any) -> str:
    """A signal name such as ``SIGTERM`` (or ``TERM``); returned in the ``SIGxxx`` form."""
    if not isinstance(value, str):
        raise ValueError(f"must be a signal name such as SIGTERM or SIGHUP (got {value!r})")
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in signal.Signals.__members__:
        raise ValueError(f"{value!r} is not a signal name (e.g. SIGTERM, SIGHUP, SIGINT)")
    return name


class VersionPolicy(BaseModel):
    """Where ``setpoint update-versions`` looks for newer versions (Git only; never the host)."""

    model_config = STRICT
    semver: str  # a range in Flux's grammar (setpoint.model.semver)
    index: str  # a JSON list of {version, url, sha256}: file:// or https://

    @field_validator("semver")
    @classmethod
    def _range(cls, value: str) -> str:
        from setpoint.model.semver import Range

        Range.parse(value)  # ValueError names what is wrong with the range
        return value

    @field_validator("index")
    @classmethod
    def _index(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("file", "https"):
            raise ValueError("index must be a file:// or https:// URL")
        return value


class ReleaseSpec(BaseModel):
    """An artefact at a version: downloaded, verified against ``sha256``, unpacked once.

    ``url`` is ``file://``, ``http://`` or ``https://``; a ``file://`` path is placed
    under the target root like every other absolute path (so a File can ship the archive).
    """

    model_config = STRICT
    version: str
    url: str
    sha256: str
    format: Literal["auto", "tar.gz", "tar", "zip", "file"] = "auto"
    keep: int = Field(default=3, ge=1, le=100)
    dependsOn: list[ResourceId] = Field(default_factory=list)
    versionPolicy: VersionPolicy | None = None
    # Bounds on the download: a slow-drip or endless server fails the resource, never
    # stalls the pass (other stacks run meanwhile either way).
    timeoutSeconds: float = Field(default=600.0, gt=0)
    maxBytes: int = Field(default=2 << 30, gt=0)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not VERSION_RE.match(value):
            raise ValueError(
                f"version {value!r} must be 1-128 of letters, digits, . _ + - (e.g. 1.4.2)"
            )
        return value

    @field_validator("sha256", mode="before")
    @classmethod
    def _sha(cls, value: Any) -> Any:
        if not isinstance(value, str) or not SHA256_RE.match(value.lower()):
            raise ValueError("sha256 must be 64 hexadecimal digits (the archive's SHA-256)")
        return value.lower()

    @field_validator("url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("url must be a string")
        parts = urlsplit(value)
        shown = redact_url(value)  # an error is shown: never with its password or token
        if parts.scheme not in ("file", "http", "https"):
            raise ValueError(f"url {shown!r} must start with file://, http:// or https://")
        if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path):
            raise ValueError(f"url {shown!r}: a file URL is file:///absolute/path")
        if parts.scheme != "file" and not parts.hostname:
            raise ValueError(f"url {shown!r} has no host")
        if not parts.path.rstrip("/").rpartition("/")[2]:
            raise ValueError(f"url {shown!r} does not name a file")
        return value


class HttpProbe(BaseModel):
    model_config = STRICT
    url: str
    status: int | None = Field(default=None, ge=100, le=599)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"probe url {redact_url(value)!r} must be http://host[:port]/path")
        return value


class TcpProbe(BaseModel):
    model_config = STRICT
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


class ExecProbe(BaseModel):
    model_config = STRICT
    command: list[str] = Field(min_length=1)


class ProbeSpec(BaseModel):
    """Exactly one of ``http``, ``tcp`` or ``exec``, run every ``periodSeconds``."""

    model_config = STRICT
    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    exec: ExecProbe | None = None
    periodSeconds: float = Field(default=1.0, gt=0, le=3600)
    timeoutSeconds: float = Field(default=1.0, gt=0, le=3600)
    failureThreshold: int = Field(default=3, ge=1, le=1000)

    @model_validator(mode="after")
    def _one(self) -> ProbeSpec:
        if sum(x is not None for x in (self.http, self.tcp, self.exec)) != 1:
            raise ValueError("a probe has exactly one of http, tcp or exec")
        return self


class StopSpec(BaseModel):
    model_config = STRICT
    signal: str = "SIGTERM"
    graceSeconds: float = Field(default=10.0, ge=0, le=3600)

    _sig = field_validator("signal", mode="before")(check_signal)


class BackoffSpec(BaseModel):
    """Delay before restarting a process that exited soon after it started: doubled each time."""

    model_config = STRICT
    initialSeconds: float = Field(default=1.0, gt=0, le=3600)
    maxSeconds: float = Field(default=30.0, gt=0, le=86400)
    resetSeconds: float = Field(default=10.0, ge=0, le=86400)  # a run this long resets it


class LogSpec(BaseModel):
    model_config = STRICT
    maxBytes: int = Field(default=10 << 20, ge=4096)
    keep: int = Field(default=3, ge=1, le=100)


class ServiceSpec(BaseModel):
    """A supervised process (see README "Service")."""

    model_config = STRICT
    command: list[str] = Field(min_length=1)
    shell: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    workingDir: AbsPath | None = None
    user: Owner | None = None
    release: ResourceId | None = None
    restart: Literal["always", "on-failure", "never"] = "always"
    backoff: BackoffSpec = BackoffSpec()
    stop: StopSpec = StopSpec()
    readiness: ProbeSpec | None = None
    liveness: ProbeSpec | None = None
    readyTimeout: float = Field(default=60.0, gt=0, le=86400)
    restartOn: list[ResourceId] = Field(default_factory=list)
    reloadOn: list[ResourceId] = Field(default_factory=list)
    reloadSignal: str = "SIGHUP"
    logs: LogSpec = LogSpec()
    dependsOn: list[ResourceId] = Field(default_factory=list)

    _sig = field_validator("reloadSignal", mode="before")(check_signal)

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if not value[0] or any("\0" in a for a in value):
            raise ValueError("command must be a non-empty argument list without NUL bytes")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for k, v in value.items():
            if not ENV_NAME_RE.match(k):
                raise ValueError(f"env name {k!r} is not a valid variable name")
            if "\0" in v:
                raise ValueError(f"env {k} contains a NUL byte")
        return value

    @model_validator(mode="after")
    def _checks(self) -> ServiceSpec:
        if self.shell and len(self.command) != 1:
            raise ValueError("with shell: true, command is one string for /bin/sh -c")
        if self.release is not None and not self.release.startswith("Release/"):
            raise ValueError(f"release {self.release!r} must name a Release (Release/name)")
        return self
