"""The agent's configuration: sources, stacks, target root and state dir.

Loaded from the ``--config`` YAML file or built from the one-stack CLI flags
(``--repo/--ref/--path/--stack``). Used by :mod:`setpoint.cli` and
:mod:`setpoint.engine.controller`. Field names are part of the interface and are
documented in README.md ("Configuration file"). Relative file paths in a config
file are made absolute by :mod:`setpoint.config_paths`.

``listen:`` is the HTTP API's HOST:PORT, or ``"off"`` for an agent with no listener
(:attr:`AgentConfig.api_on`): nothing of ``setpoint.api`` (FastAPI, uvicorn, the web UI)
is loaded then, which is what a NATS fleet wants (status in the ``setpoint-status``
bucket, ``setpoint status`` from the state dir).
"""

from __future__ import annotations

import os
import re
import socket
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    Tag,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from setpoint.config_paths import resolve_paths
from setpoint.facts import FACT_PREFIX
from setpoint.model.errors import SetpointError

NAME = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
DEFAULT_STATE = "/var/lib/setpoint"
DEFAULT_LISTEN = "127.0.0.1:9090"
LISTEN_RE = r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$"
# ``listen: "off"``: the agent runs with no HTTP listener (the API is never imported).
LISTEN_OFF = "off"
AGENT_LISTEN_RE = rf"^{LISTEN_OFF}$|{LISTEN_RE}"


class ConfigError(SetpointError):
    pass


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SshVerifyConfig(_Model):
    """SSH signatures: keys allowed to sign (``ssh-keygen -Y verify`` allowed-signers format)."""

    allowed_signers: Path = Field(alias="allowedSigners")


class GpgVerifyConfig(_Model):
    """OpenPGP signatures: a public keyring file (binary or armored); every key in it is trusted."""

    keyring: Path


class VerifyConfig(_Model):
    """Signature policy of a source: what must be signed, by whom (see source/verify.py)."""

    mode: Literal["head", "tag", "tag-and-head"] = "head"
    ssh: SshVerifyConfig | None = None
    gpg: GpgVerifyConfig | None = None

    @model_validator(mode="after")
    def _some_keys(self) -> VerifyConfig:
        if self.ssh is None and self.gpg is None:
            raise ValueError("verify needs ssh.allowedSigners or gpg.keyring (or both)")
        return self


class SourceAuthConfig(_Model):
    """How a source authenticates (see source/auth.py): files only, read at each fetch.

    ssh (``ssh://``, ``git@host:path``): a deploy key and the known_hosts file that pins
    the server's host key. https: ``usernameFile`` + ``passwordFile``, or ``tokenFile``
    (the token is the user name, GitHub-style; with ``usernameFile``, the password).
    """

    ssh_key_file: Path | None = Field(default=None, alias="sshKeyFile")
    known_hosts_file: Path | None = Field(default=None, alias="knownHostsFile")
    username_file: Path | None = Field(default=None, alias="usernameFile")
    password_file: Path | None = Field(default=None, alias="passwordFile")
    token_file: Path | None = Field(default=None, alias="tokenFile")

    @model_validator(mode="after")
    def _one_kind(self) -> SourceAuthConfig:
        ssh = self.ssh_key_file is not None or self.known_hosts_file is not None
        https = any(
            f is not None for f in (self.username_file, self.password_file, self.token_file)
        )
        if ssh and https:
            raise ValueError("auth: give ssh files (sshKeyFile, knownHostsFile) or https "
                             "files (usernameFile, passwordFile, tokenFile), not both")
        if self.ssh_key_file is not None and self.known_hosts_file is None:
            raise ValueError("auth: sshKeyFile needs knownHostsFile (the server's host key "
                             "is always checked; ssh-keyscan HOST > known_hosts, then verify it)")
        if self.password_file is not None and self.token_file is not None:
            raise ValueError("auth: give passwordFile or tokenFile, not both")
        if (self.password_file is None) != (self.username_file is None) and (
            self.token_file is None
        ):
            raise ValueError("auth: usernameFile and passwordFile go together")
        if not ssh and not https:
            raise ValueError("auth: give sshKeyFile + knownHostsFile, usernameFile + "
                             "passwordFile, or tokenFile")
        return self

    @property
    def is_ssh(self) -> bool:
        return self.known_hosts_file is not None


class SemverRef(_Model):
    """``ref: {semver: RANGE}``: follow the highest tag in RANGE (model/semver.py)."""

    semver: str = Field(min_length=1)

    @field_validator("semver")
    @classmethod
    def _valid(cls, text: str) -> str:
        from setpoint.model.semver import InvalidRange, Range

        try:
            Range.parse(text)
        except InvalidRange as exc:
            raise ValueError(str(exc)) from None
        return text


class SourceConfig(_Model):
    """A Git remote and the ref to follow."""

    name: str = Field(pattern=NAME)
    url: str = Field(min_length=1)
    # A branch, tag, full ref or commit sha; or {semver: RANGE}: the highest matching tag.
    ref: Annotated[
        Annotated[str, Field(min_length=1), Tag("name")] | Annotated[SemverRef, Tag("semver")],
        Discriminator(lambda v: "name" if isinstance(v, str) else "semver"),
    ] = "main"
    interval: float = Field(default=60.0, gt=0)
    verify: VerifyConfig | None = None  # require signed commits/tags
    # Accept a force-pushed ref whose new commit does not descend from the one in force.
    allow_rewrites: bool = Field(default=False, alias="allowRewrites")
    auth: SourceAuthConfig | None = None  # ssh deploy key, https credentials (files)

    @model_validator(mode="after")
    def _auth_fits_url(self) -> SourceConfig:
        if self.auth is None:
            return self
        https = self.url.startswith(("https://", "http://"))
        if self.auth.is_ssh and https:
            raise ValueError(f"auth: sshKeyFile/knownHostsFile need an ssh URL, not {self.url}")
        if not self.auth.is_ssh and not https:
            raise ValueError("auth: usernameFile/passwordFile/tokenFile need an https:// URL")
        if not self.auth.is_ssh and re.match(r"^https?://[^/]*@", self.url):
            raise ValueError("auth: the URL carries credentials too; give them in one place")
        return self


NotifyEvent = Literal["applied", "drift", "failed", "stalled", "recovered"]
NOTIFY_EVENTS: list[NotifyEvent] = ["applied", "drift", "failed", "stalled", "recovered"]


class NotificationConfig(_Model):
    """An outgoing webhook of a stack (see setpoint/obs/notify.py)."""

    url: str = Field(pattern=r"^https?://")
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS), min_length=1)
    # The HMAC key of X-Setpoint-Signature (mode 0600); without one deliveries are unsigned.
    secret_file: Path | None = Field(default=None, alias="secretFile")
    format: Literal["json", "slack"] = "json"


class StackPolicy(_Model):
    """How a stack is reconciled: the fields a config stack and a Fleet entry share.

    Besides its own fields a stack takes the sections provider families register
    (``Registry.register_settings``, e.g. a database family's connection): each is
    parsed by its model into ``provider_settings`` and dumped back under its key. A
    key nobody registered is still an unknown field.
    """

    name: str = Field(pattern=NAME)
    path: str = "."
    prune: bool = True
    drift: Literal["revert", "report"] = "revert"
    resync: float = Field(default=300.0, gt=0)
    suspend: bool = False
    # Outgoing webhooks (in a Fleet file, give secretFile as an absolute path on the host).
    notifications: list[NotificationConfig] = Field(default_factory=list)
    # Registered provider sections, by key (filled from the stack's own keys, see above).
    provider_settings: dict[str, Any] = Field(default_factory=dict, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _provider_sections(cls, value: Any) -> Any:
        if not isinstance(value, dict) or _SETTINGS in value:
            return value  # built in code (``provider_settings=`` given): checked after
        models = settings_models()
        keys = [k for k in value if k in models]
        if not keys:
            return value
        rest = {k: v for k, v in value.items() if k not in models}
        parsed: dict[str, BaseModel] = {}
        for key in keys:
            try:
                parsed[key] = models[key].model_validate(value[key])
            except ValidationError as exc:
                raise ValueError(_section_errors(key, exc)) from None
        rest[_SETTINGS] = parsed
        return rest

    @model_validator(mode="after")
    def _sections_typed(self) -> StackPolicy:
        models = settings_models()
        for key, section in self.provider_settings.items():
            model = models.get(key)
            if model is None or not isinstance(section, model):
                raise ValueError(f"{_SETTINGS}: unknown field")
        return self

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            data.pop(_SETTINGS, None)
            for key, section in self.provider_settings.items():
                data[key] = section.model_dump(
                    mode=info.mode, by_alias=bool(info.by_alias), exclude_none=True
                )
        return data

    def settings(self, key: str) -> BaseModel | None:
        """This stack's section ``key`` (parsed by its registered model), or None."""
        section = self.provider_settings.get(key)
        return section if isinstance(section, BaseModel) else None

    @model_validator(mode="after")
    def _relative_path(self) -> StackPolicy:
        p = self.path
        if p.startswith("/") or any(part == ".." for part in p.split("/")):
            raise ValueError(
                f"path {p!r} must be a directory inside the repository (relative, no ..)"
            )
        return self


_SETTINGS = "provider_settings"


@cache
def settings_models() -> dict[str, type[BaseModel]]:
    """The stack-level sections the provider families registered: key -> model."""
    # Imported here: the registry imports the providers' spec models, not this module.
    from setpoint.providers.registry import default_registry

    models = default_registry().settings_models()
    fields = StackConfig.model_fields
    own = {f.alias or n for n, f in fields.items()} | set(fields)
    clash = sorted(set(models) & (own | {"selector"}))  # selector: a Fleet entry's own field
    if clash:
        raise ConfigError(f"provider settings keys {clash} are fields of a stack; rename them")
    return models


def _section_errors(key: str, exc: ValidationError) -> str:
    """A provider section's validation errors, each with its place inside the section."""
    parts = []
    for e in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in (key, *e["loc"]))
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{loc}: {str(msg).removeprefix('Value error, ')}")
    return "; ".join(parts)


class StackConfig(StackPolicy):
    """A named set of resources from one path of one source, reconciled together."""

    source: str


class FleetConfig(_Model):
    """Where this host's Fleet file is: a source and a path inside its repository."""

    source: str
    path: str = "fleet.yaml"

    @field_validator("path")
    @classmethod
    def _inside(cls, p: str) -> str:
        if p.startswith("/") or any(part == ".." for part in p.split("/")) or not p.strip("/."):
            raise ValueError(f"path {p!r} must be a file inside the repository (relative, no ..)")
        return p


class RetryConfig(_Model):
    """Back-off after a failed pass: base * 2^failures seconds, jittered, capped at max."""

    base: float = Field(default=5.0, gt=0)
    max: float = Field(default=300.0, gt=0)


class JournalConfig(_Model):
    """Journal retention (``journal:``): entries older than ``maxAgeDays`` or beyond the
    newest ``maxEntries`` are trimmed in the background; diffs older than ``diffMaxAgeDays``
    are dropped from their entries, which stay (see setpoint.state.retention)."""

    max_age_days: float = Field(default=90, gt=0, alias="maxAgeDays")
    max_entries: int = Field(default=1_000_000, ge=1, alias="maxEntries")
    diff_max_age_days: float = Field(default=30, gt=0, alias="diffMaxAgeDays")


class LimitsConfig(_Model):
    """Bounds on untrusted repository input (see render.Limits); errors name file:line."""

    max_manifest_bytes: int = Field(default=1 << 20, gt=0, alias="maxManifestBytes")
    max_source_bytes: int = Field(default=64 << 20, gt=0, alias="maxSourceBytes")
    max_nodes: int = Field(default=100_000, gt=0, alias="maxNodes")
    max_depth: int = Field(default=64, gt=0, alias="maxDepth")


class DecryptionConfig(_Model):
    """How the agent decrypts SOPS ``secretFiles`` (see render/sops.py)."""

    # An age identity file (age-keygen's format), root-only; used with SOPS_AGE_KEY(_FILE).
    age_key_file: Path | None = Field(default=None, alias="ageKeyFile")


class ApiTokenConfig(_Model):
    """A bearer token for the HTTP API: a file (mode 0600) holding it, and what it may do."""

    file: Path
    scope: Literal["read", "write"] = "read"


class ApiTlsConfig(_Model):
    cert_file: Path = Field(alias="certFile")
    key_file: Path = Field(alias="keyFile")


class ApiConfig(_Model):
    """Who may use the HTTP API (see setpoint/api/auth.py): tokens, anonymous reads, TLS."""

    # None: true on a loopback listener, false elsewhere. Writes always need a token.
    anonymous_read: bool | None = Field(default=None, alias="anonymousRead")
    tokens: list[ApiTokenConfig] = Field(default_factory=list)
    tls: ApiTlsConfig | None = None


class NatsTlsConfig(_Model):
    """TLS to the NATS server: the CA that signed it, and a client certificate if it asks."""

    ca_file: Path | None = Field(default=None, alias="caFile")
    cert_file: Path | None = Field(default=None, alias="certFile")
    key_file: Path | None = Field(default=None, alias="keyFile")

    @model_validator(mode="after")
    def _pair(self) -> NatsTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("nats.tls: certFile and keyFile go together")
        return self


class NatsConfig(_Model):
    """The fleet bus (see setpoint/fleetbus/): commit fan-out and fleet status over NATS."""

    # One server or several, comma-separated (nats:// or tls://).
    url: str = Field(pattern=r"^(nats|tls)://[^\s,]+(,(nats|tls)://[^\s,]+)*$")
    creds_file: Path | None = Field(default=None, alias="credsFile")  # user JWT + nkey seed
    tls: NatsTlsConfig | None = None
    # A fan-out message is acted on after a random delay up to this (a fleet of 1,000
    # hosts must not fetch in the same millisecond).
    spread_seconds: float = Field(default=0.0, ge=0, le=3600, alias="spreadSeconds")
    # The status of each stack is rewritten at least this often; 3 periods without one
    # and readers show the entry as unknown.
    heartbeat_seconds: float = Field(default=30.0, gt=0, le=3600, alias="heartbeatSeconds")


def _hostname() -> str:
    return socket.gethostname() or "localhost"


class AgentConfig(_Model):
    root: Path = Path("/")
    state: Path = Path(DEFAULT_STATE)
    sources: list[SourceConfig] = Field(min_length=1)
    stacks: list[StackConfig] = Field(default_factory=list)
    # The host's labels (Fleet and overlay selectors match them); facts are added
    # under the reserved prefix setpoint.io/ (see setpoint.facts).
    labels: dict[str, str] = Field(default_factory=dict)
    fleet: FleetConfig | None = None
    # Stacks whose passes may be under way at once (each stack's own passes stay serial).
    max_concurrent_stacks: int = Field(default=4, ge=1, le=64, alias="maxConcurrentStacks")
    retry: RetryConfig = RetryConfig()
    limits: LimitsConfig = LimitsConfig()
    journal: JournalConfig = JournalConfig()
    # The agent's HTTP listener (GET /status, POST /sync, POST /hooks/git): HOST:PORT,
    # port 0 = any free port (written to STATE/agent.json for `setpoint sync`); "off":
    # no listener at all, and the HTTP stack is never loaded (about 15 MiB less per
    # agent): `setpoint status` reads the state dir, a fleet's status is in NATS, and
    # `setpoint sync` / webhooks to the agent are unavailable.
    listen: str = Field(default=DEFAULT_LISTEN, pattern=AGENT_LISTEN_RE)
    # The shared secret for POST /hooks/git; without it every webhook call is refused.
    webhook_secret_file: Path | None = Field(default=None, alias="webhookSecretFile")
    # SOPS secrets: the age key file; SOPS_AGE_KEY_FILE / SOPS_AGE_KEY are read as well.
    decryption: DecryptionConfig = DecryptionConfig()
    # The HTTP API's tokens, anonymous reads and TLS.
    api: ApiConfig = ApiConfig()
    # The agent's log lines: text, or JSON lines (stack, resource, revision, event, ms).
    log_format: Literal["text", "json"] = Field(default="text", alias="logFormat")
    # The host's name in the fleet (status keys, the setpoint.io/hostname fact);
    # several agents on one machine (tests, benchmarks) each set their own.
    host: str = Field(default_factory=_hostname, min_length=1, max_length=253,
                      pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # The fleet bus (NATS): fan-out of new commits and fleet status. None: off.
    nats: NatsConfig | None = None

    @property
    def api_on(self) -> bool:
        """Whether the agent has an HTTP listener (``listen:`` is not ``"off"``)."""
        return self.listen != LISTEN_OFF

    @field_validator("root", "state", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Fixed once, from the working directory at start: git runs in other cwds.
        return Path(os.path.abspath(value))

    @model_validator(mode="after")
    def _references(self) -> AgentConfig:
        names = [s.name for s in self.sources]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique; repeated: {', '.join(sorted(dup))}")
        if not self.stacks and self.fleet is None:
            raise ValueError("stacks: declare at least one stack, or a fleet: {source, path}")
        if self.fleet is not None and self.fleet.source not in names:
            raise ValueError(
                f"fleet uses source {self.fleet.source!r}, which is not declared "
                f"(declared: {', '.join(names)})"
            )
        for key in self.labels:
            if key.startswith(FACT_PREFIX):
                raise ValueError(
                    f"labels: {key!r} uses the prefix {FACT_PREFIX}, which is reserved for the "
                    "facts the agent gathers itself; choose another key"
                )
        stacks = [s.name for s in self.stacks]
        dup = {n for n in stacks if stacks.count(n) > 1}
        if dup:
            raise ValueError(f"stack names must be unique; repeated: {', '.join(sorted(dup))}")
        for st in self.stacks:
            if st.source not in names:
                raise ValueError(
                    f"stack {st.name!r} uses source {st.source!r}, which is not declared "
                    f"(declared: {', '.join(names)})"
                )
        return self

    def source(self, name: str) -> SourceConfig:
        return next(s for s in self.sources if s.name == name)

    def stack(self, name: str) -> StackConfig:
        for s in self.stacks:
            if s.name == name:
                return s
        raise ConfigError(
            f"no stack named {name!r} (known: {', '.join(s.name for s in self.stacks)})"
        )


def _format(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = re.sub(r"^Value error, ", "", e["msg"])
        lines.append(f"{where}: {loc}: {msg}")
    return "\n".join(lines)


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Read a config file; relative ``root``/``state`` are taken relative to the file."""
    try:
        raw = yaml.load(path.read_text(), Loader=yaml.CSafeLoader)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config file must be a YAML mapping")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    resolve_paths(raw, path.parent)
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format(exc, str(path))) from exc


def config_from_flags(
    repo: str,
    ref: str,
    path: str,
    stack: str,
    root: Path | None,
    state: Path | None,
    interval: float,
    resync: float,
    drift: str,
    prune: bool,
) -> AgentConfig:
    """The one-stack shortcut: ``--repo URL --ref REF --path DIR --stack NAME``."""
    data: dict[str, Any] = {
        "root": root or Path("/"),
        "state": state or Path(DEFAULT_STATE),
        "sources": [{"name": "repo", "url": repo, "ref": ref, "interval": interval}],
        "stacks": [
            {
                "name": stack,
                "source": "repo",
                "path": path,
                "prune": prune,
                "drift": drift,
                "resync": resync,
            }
        ],
    }
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, "command line")) from exc
