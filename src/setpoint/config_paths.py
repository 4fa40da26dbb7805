"""Relative file paths in a config file, taken relative to the file's folder.

Called by :func:`setpoint.config.load_config` on the parsed YAML mapping, before
validation: ``root``, ``state``, ``webhookSecretFile``, the sources' ``verify`` and
``auth`` files, ``decryption.ageKeyFile``, the API's token and TLS files, the
stacks' notification secrets and the ``nats`` creds and TLS files. Absolute paths
and values of the wrong type are left alone (validation reports those).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def resolve_paths(raw: dict[Any, Any], base: Path) -> None:
    """Make every relative file path in ``raw`` (a config mapping) absolute, from ``base``."""
    for key in ("root", "state", "webhookSecretFile"):
        if key in raw and isinstance(raw[key], str) and not raw[key].startswith("/"):
            raw[key] = str((base / raw[key]).resolve())
    _resolve_verify_files(raw, base)
    _resolve_auth_files(raw, base)
    _resolve_decryption_file(raw, base)
    _resolve_api_files(raw, base)
    _resolve_nats_files(raw, base)


def _resolve_verify_files(raw: dict[Any, Any], base: Path) -> None:
    """Relative ``verify`` key files are taken relative to the config file, like root/state."""
    for src in raw.get("sources") or []:
        verify = src.get("verify") if isinstance(src, dict) else None
        if not isinstance(verify, dict):
            continue
        for section, key in (("ssh", "allowedSigners"), ("gpg", "keyring")):
            sub = verify.get(section)
            path = sub.get(key) if isinstance(sub, dict) else None
            if isinstance(sub, dict) and isinstance(path, str) and not path.startswith("/"):
                sub[key] = str((base / path).resolve())


def _resolve_auth_files(raw: dict[Any, Any], base: Path) -> None:
    """Relative source ``auth`` files are taken relative to the config file."""
    keys = ("sshKeyFile", "knownHostsFile", "usernameFile", "passwordFile", "tokenFile")
    for src in raw.get("sources") or []:
        auth = src.get("auth") if isinstance(src, dict) else None
        if not isinstance(auth, dict):
            continue
        for key in keys:
            value = auth.get(key)
            if isinstance(value, str) and not value.startswith("/"):
                auth[key] = str((base / value).resolve())


def _resolve_decryption_file(raw: dict[Any, Any], base: Path) -> None:
    """A relative ``decryption.ageKeyFile`` is taken relative to the config file."""
    dec = raw.get("decryption")
    key = dec.get("ageKeyFile") if isinstance(dec, dict) else None
    if isinstance(dec, dict) and isinstance(key, str) and not key.startswith("/"):
        dec["ageKeyFile"] = str((base / key).resolve())


def _resolve_api_files(raw: dict[Any, Any], base: Path) -> None:
    """Relative API token, TLS and notification secret files: relative to the config file."""
    api = raw.get("api")
    spots: list[tuple[Any, str]] = []
    if isinstance(api, dict):
        spots += [(t, "file") for t in api.get("tokens") or [] if isinstance(t, dict)]
        tls = api.get("tls")
        spots += [(tls, "certFile"), (tls, "keyFile")] if isinstance(tls, dict) else []
    for st in raw.get("stacks") or []:
        for n in (st.get("notifications") or []) if isinstance(st, dict) else []:
            spots += [(n, "secretFile")] if isinstance(n, dict) else []
    for holder, key in spots:
        value = holder.get(key)
        if isinstance(value, str) and not value.startswith("/"):
            holder[key] = str((base / value).resolve())


def _resolve_nats_files(raw: dict[Any, Any], base: Path) -> None:
    """Relative ``nats`` creds and TLS files are taken relative to the config file."""
    nats = raw.get("nats")
    if not isinstance(nats, dict):
        return
    spots: list[tuple[Any, str]] = [(nats, "credsFile")]
    tls = nats.get("tls")
    if isinstance(tls, dict):
        spots += [(tls, "caFile"), (tls, "certFile"), (tls, "keyFile")]
    for holder, key in spots:
        value = holder.get(key)
        if isinstance(value, str) and not value.startswith("/"):
            holder[key] = str((base / value).resolve())
