"""SOPS secrets: decrypt (and encrypt) files in the format of the sops tool, with age keys.

Role: the agent decrypts the ``secretFiles`` an overlay names, in memory, with
its age identities; ``setpoint secrets encrypt/decrypt`` (:mod:`setpoint.cli_secrets`)
write and read the same files for operators. Callers: the overlay/template
renderer and the CLI. The API::

    identities = load_identities(config.decryption.age_key_file)   # + SOPS_AGE_KEY(_FILE)
    tree = decrypt(data, "envs/prod/db.sops.yaml", identities)     # SopsError if not trusted
    fingerprint(identities)                                        # for cache keys
    encrypt(plain, "db.yaml", ["age1..."], encrypted_regex="^(data|stringData)$")

Files are compatible with sops 3.x both ways (format version 3.9.0, the MAC
scheme of ``sops.go``): age (pyrage) unwraps the 32-byte data key from the
``sops.age[].enc`` armored age files, AES-256-GCM (``cryptography``) decrypts
each value, and the SHA-512 MAC over the plaintext values is checked before
anything is returned (:mod:`setpoint.render.sops_tree`); the file syntaxes are
in :mod:`setpoint.render.sops_formats`. Only age keys are supported (no PGP,
KMS, Vault, no Shamir key groups, no comment-regex rules): such files are
refused with a message saying so.

Every :class:`SopsError` names the file and says what to do; none holds a key
or a decrypted value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyrage  # type: ignore[import-untyped]

from setpoint.model.errors import SetpointError
from setpoint.render.sops_formats import (
    DOTENV_PREFIX,
    FormatError,
    detect_format,
    emit_dotenv,
    emit_json,
    emit_yaml,
    flatten,
    load_dotenv,
    load_json,
    load_yaml,
    unflatten,
)
from setpoint.render.sops_tree import (
    DEFAULT_UNENCRYPTED_SUFFIX,
    Rules,
    TreeError,
    decrypt_tree,
    decrypt_value,
    encrypt_tree,
    encrypt_value,
)

SOPS_VERSION = "3.9.0"  # the format version written; the same as the reference fixture's
DATA_KEY_SIZE = 32
_REPAIR = "restore it from Git history, or encrypt the plaintext again (setpoint secrets encrypt)"


class SopsError(SetpointError):
    """A SOPS file (or age key source) cannot be used; ``file`` names it."""

    def __init__(self, file: str, reason: str | None = None, hint: str = "") -> None:
        if reason is None:  # SopsError("whole message"), as other SetpointErrors are made
            file, reason = "", file
        self.file = file
        self.reason = reason
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{reason}" + (f"; {hint}" if hint else ""))


class Identity:
    """One age X25519 identity (a private key). Shown, compared and hashed by its recipient."""

    __slots__ = ("_key", "recipient")

    def __init__(self, key: Any) -> None:
        self._key = key
        self.recipient: str = str(key.to_public())

    @classmethod
    def from_str(cls, text: str) -> Identity:
        """Parse ``AGE-SECRET-KEY-1...``; raises ValueError (without the text) if invalid."""
        try:
            return cls(pyrage.x25519.Identity.from_str(text))
        except pyrage.IdentityError:
            raise ValueError("not a valid age X25519 identity") from None

    def __repr__(self) -> str:
        return f"Identity({self.recipient})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.recipient == self.recipient

    def __hash__(self) -> int:
        return hash(self.recipient)


# ---------------------------------------------------------------- identities


def load_identities(
    key_file: Path | None = None, env: Mapping[str, str] | None = None
) -> list[Identity]:
    """The agent's age identities: ``key_file`` (config ``decryption.ageKeyFile``), then
    ``SOPS_AGE_KEY`` and ``SOPS_AGE_KEY_FILE`` from ``env`` (default ``os.environ``).

    Read as sops reads them: one identity per line in a file, any number per line
    (space-separated) in ``SOPS_AGE_KEY``; empty lines and lines starting with ``#``
    are skipped. Unlike sops, a source that cannot be read or parsed is an error
    (naming the file or variable and the line, never its content) rather than
    skipped: an agent must not run on half its keys. No source at all gives ``[]``;
    :func:`decrypt` then says how to configure one.
    """
    env = os.environ if env is None else env
    found: list[Identity] = []
    if key_file is not None:
        found += _read_key_file(Path(key_file), str(key_file))
    if "SOPS_AGE_KEY" in env:
        found += _parse_identities(env["SOPS_AGE_KEY"], "SOPS_AGE_KEY", several_per_line=True)
    if "SOPS_AGE_KEY_FILE" in env:
        name = env["SOPS_AGE_KEY_FILE"]
        found += _read_key_file(Path(name), f"{name} (SOPS_AGE_KEY_FILE)")
    return list(dict.fromkeys(found))  # first occurrence of each recipient, in order


def _read_key_file(path: Path, where: str) -> list[Identity]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SopsError(where, f"cannot read the age key file: {exc.strerror or exc}") from None
    if data.startswith((b"age-encryption", b"-----BEGIN AGE")):
        raise SopsError(
            where,
            "the age key file is passphrase-protected, which an agent cannot unlock",
            "give it an unencrypted key file, readable by root only (chmod 600)",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SopsError(where, "the age key file is not UTF-8 text") from None
    return _parse_identities(text, where, several_per_line=False)


def _parse_identities(text: str, where: str, several_per_line: bool) -> list[Identity]:
    out: list[Identity] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line or line.startswith("#"):
            continue
        for word in line.split() if several_per_line else [line]:
            if word.startswith(("AGE-PLUGIN-", "AGE-SECRET-KEY-PQ-1")):
                reason = "age plugin and post-quantum identities are not supported"
            elif not word.startswith("AGE-SECRET-KEY-1"):
                reason = "not an age identity (AGE-SECRET-KEY-1...)"
            else:
                try:
                    out.append(Identity.from_str(word))
                    continue
                except ValueError as exc:
                    reason = str(exc)
            raise SopsError(
                f"{where}, line {number}",
                reason,
                "each line must hold one X25519 key as age-keygen writes it",
            )
    return out


def fingerprint(identities: Sequence[Identity]) -> str:
    """A stable hash of the identities' public recipients (order and duplicates ignored)."""
    recipients = sorted({_recipient_of(i) for i in identities})
    return hashlib.sha256("\n".join(recipients).encode()).hexdigest()


def _recipient_of(identity: Any) -> str:
    # Also accepts a bare pyrage identity, which is what the age library gives.
    return identity.recipient if isinstance(identity, Identity) else str(identity.to_public())


def _key_of(identity: Any) -> Any:
    return identity._key if isinstance(identity, Identity) else identity


# ---------------------------------------------------------------- metadata


@dataclass(frozen=True)
class _Metadata:
    age: list[tuple[str, str]]  # (recipient, armored age file holding the data key)
    other_keys: list[str]  # kinds of master keys we cannot use (pgp, kms, ...)
    lastmodified: str  # normalised as sops formats it: the MAC's additional data
    mac: str
    rules: Rules


_OTHER_KEY_KINDS = ("pgp", "kms", "gcp_kms", "azure_kv", "hc_vault", "hckms")
_RULE_FIELDS = (
    "unencrypted_suffix",
    "encrypted_suffix",
    "unencrypted_regex",
    "encrypted_regex",
    "unencrypted_comment_regex",
    "encrypted_comment_regex",
)
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _lastmodified(value: Any, path: str) -> str:
    """Go's ``time.Parse(RFC3339)`` then ``Format(RFC3339)``: no fraction, ``Z`` for UTC."""
    m = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise SopsError(path, "sops.lastmodified is not an RFC 3339 time", _REPAIR)
    zone = m.group(3)
    return f"{m.group(1)}T{m.group(2)}{'Z' if zone in ('Z', '+00:00', '-00:00') else zone}"


def _key_list(meta: Mapping[str, Any], kind: str, path: str) -> list[Any]:
    value = meta.get(kind)
    if value is None:
        return []
    if not isinstance(value, list):
        raise SopsError(path, f"sops.{kind} is not a list", _REPAIR)
    return value


def _parse_metadata(meta: Any, path: str) -> _Metadata:
    if not isinstance(meta, dict):
        raise SopsError(path, "the sops metadata is not a mapping", _REPAIR)
    source: Mapping[str, Any] = meta
    has_top = any(_key_list(meta, k, path) for k in ("age", *_OTHER_KEY_KINDS))
    groups = _key_list(meta, "key_groups", path)
    if not has_top and groups:
        if len(groups) != 1 or not isinstance(groups[0], dict):
            raise SopsError(
                path,
                "it splits its data key over several key groups (Shamir), which setpoint "
                "does not support",
                "encrypt it for plain age recipients (setpoint secrets encrypt --age ...)",
            )
        source = groups[0]
    age: list[tuple[str, str]] = []
    for entry in _key_list(source, "age", path):
        if not (isinstance(entry, dict) and isinstance(entry.get("enc"), str)):
            raise SopsError(path, "an entry of sops.age has no enc text", _REPAIR)
        age.append((str(entry.get("recipient", "")), entry["enc"]))
    others = [k for k in _OTHER_KEY_KINDS if _key_list(source, k, path)]
    rules = {f: meta[f] for f in _RULE_FIELDS if meta.get(f) not in (None, "")}
    if len(rules) > 1:
        raise SopsError(path, f"it sets several encryption rules ({', '.join(rules)})", _REPAIR)
    if any("comment" in f for f in rules):
        raise SopsError(
            path,
            f"it uses {next(iter(rules))}, which setpoint does not support",
            "encrypt it with encrypted_regex or the default suffix rule instead",
        )
    for field, value in rules.items():
        if not isinstance(value, str):
            raise SopsError(path, f"sops.{field} is not a string", _REPAIR)
        if field.endswith("regex"):
            try:
                re.compile(value)
            except re.error:
                raise SopsError(path, f"sops.{field} is not a valid regular expression") from None
    if not rules:
        rules = {"unencrypted_suffix": DEFAULT_UNENCRYPTED_SUFFIX}
    mac_only = meta.get("mac_only_encrypted", False)
    if isinstance(mac_only, str):  # dotenv: every value is a string
        mac_only = mac_only in ("1", "t", "T", "true", "TRUE", "True")
    mac = meta.get("mac")
    if not isinstance(mac, str):
        raise SopsError(path, "the sops metadata has no MAC", _REPAIR)
    return _Metadata(
        age=age,
        other_keys=others,
        lastmodified=_lastmodified(meta.get("lastmodified"), path),
        mac=mac,
        rules=Rules(mac_only_encrypted=bool(mac_only), **rules),
    )


def _data_key(meta: _Metadata, identities: Sequence[Identity], path: str) -> bytes:
    if not meta.age:
        kinds = ", ".join(meta.other_keys) or "no key at all"
        raise SopsError(
            path,
            f"it has no age recipient (it is encrypted for: {kinds})",
            "setpoint decrypts with age keys: add an age recipient to the file",
        )
    if not identities:
        raise SopsError(
            path,
            "the agent has no age identity to decrypt it with",
            "set decryption.ageKeyFile in the agent's config, or SOPS_AGE_KEY_FILE / SOPS_AGE_KEY",
        )
    mine = {_recipient_of(i) for i in identities}
    keys = [_key_of(i) for i in identities]
    for _recipient, enc in meta.age:
        try:
            key = bytes(pyrage.decrypt(enc.encode("utf-8"), keys))
        except (pyrage.DecryptError, ValueError, TypeError):
            continue
        if len(key) != DATA_KEY_SIZE:
            raise SopsError(path, "its data key is not 32 bytes long", _REPAIR)
        return key
    theirs = [r for r, _ in meta.age]
    if mine & set(theirs):
        raise SopsError(
            path,
            "it lists this host's age recipient, but that copy of the data key does not "
            "decrypt (damaged)",
            _REPAIR,
        )
    raise SopsError(
        path,
        f"none of the agent's age identities ({', '.join(sorted(mine))}) can decrypt it; it is "
        f"encrypted for {', '.join(theirs)}",
        "encrypt it for this host's recipient too, or give the agent the matching key",
    )


# ---------------------------------------------------------------- files


def _load(fmt: str, data: bytes, path: str) -> list[dict[str, Any]]:
    try:
        if fmt == "yaml":
            return load_yaml(data)
        if fmt == "json":
            return load_json(data)
        return load_dotenv(data)
    except FormatError as exc:
        raise SopsError(path, f"not valid {fmt}: {exc}") from None


def _format(path: str) -> str:
    try:
        return detect_format(path)
    except FormatError as exc:
        raise SopsError(path, str(exc)) from None


def _split_metadata(fmt: str, branches: list[dict[str, Any]], path: str) -> Any:
    """Take the ``sops`` metadata out of the branches (as sops' ExtractMetadata); return it."""
    not_sops = "it has no sops metadata, so it is not a SOPS-encrypted file"
    hint = "encrypt it with: setpoint secrets encrypt FILE --age RECIPIENT"
    if fmt == "dotenv":
        branch = branches[0]
        flat = {k[len(DOTENV_PREFIX) :]: v for k, v in branch.items() if k.startswith("sops_")}
        if not flat:
            raise SopsError(path, not_sops, hint)
        branches[0] = {k: v for k, v in branch.items() if not k.startswith(DOTENV_PREFIX)}
        try:
            return unflatten(flat)
        except FormatError as exc:
            raise SopsError(path, f"malformed sops metadata: {exc}", _REPAIR) from None
    if not branches or "sops" not in branches[0]:
        raise SopsError(path, not_sops, hint)
    meta = branches[0]["sops"]
    for i, branch in enumerate(branches):
        branches[i] = {k: v for k, v in branch.items() if k != "sops"}
    return meta


def decrypt_branches(
    data: bytes, path: str, identities: Sequence[Identity]
) -> tuple[str, list[dict[str, Any]]]:
    """The format and every document of a SOPS file, decrypted and MAC-checked."""
    fmt = _format(path)
    branches = _load(fmt, data, path)
    meta = _parse_metadata(_split_metadata(fmt, branches, path), path)
    key = _data_key(meta, identities, path)
    try:
        plain, computed = decrypt_tree(branches, key, meta.rules)
        stored = decrypt_value(meta.mac, key, meta.lastmodified, "at sops.mac")
    except TreeError as exc:
        raise SopsError(path, f"{exc}", _REPAIR) from None
    if not isinstance(stored, str) or not hmac.compare_digest(stored.encode(), computed.encode()):
        raise SopsError(
            path,
            "MAC mismatch: the file was changed after it was encrypted (a value added, removed "
            "or edited in clear), or is damaged",
            _REPAIR,
        )
    return fmt, plain


def decrypt(data: bytes, path: str, identities: Sequence[Identity]) -> Any:
    """The plaintext tree of one SOPS file (a dict; for dotenv a flat dict of str).

    ``path`` is the repository-relative name: it picks the format (``.yaml``/``.yml``,
    ``.json``, ``.env``) and names the file in errors. Raises :class:`SopsError` when
    the file is not SOPS, is tampered or truncated (MAC), or no identity matches.
    """
    _fmt, branches = decrypt_branches(data, path, identities)
    if len(branches) != 1:
        raise SopsError(
            path,
            f"it holds {len(branches)} YAML documents; a secret file holds exactly one",
            "split it into one file per document",
        )
    return branches[0]


def decrypt_to_bytes(data: bytes, path: str, identities: Sequence[Identity]) -> bytes:
    """The decrypted file in its own format (``setpoint secrets decrypt``)."""
    fmt, branches = decrypt_branches(data, path, identities)
    return _emit(fmt, branches, path)


def _emit(fmt: str, branches: list[dict[str, Any]], path: str) -> bytes:
    try:
        if fmt == "yaml":
            return emit_yaml(branches)
        if fmt == "json":
            return emit_json(branches)
        return emit_dotenv(branches)
    except FormatError as exc:
        raise SopsError(path, str(exc)) from None


def encrypt(
    plain: bytes, path: str, recipients: Sequence[str], encrypted_regex: str | None = None
) -> bytes:
    """Encrypt a plaintext YAML, JSON or dotenv file for age ``recipients`` (``age1...``).

    Every value is encrypted, except (without ``encrypted_regex``) those under a key
    ending in ``_unencrypted``, or (with it) those not under a key matching it: the
    rules of ``sops --encrypted-regex``. The result is what sops 3.9 writes: the sops
    tool and :func:`decrypt` read it.
    """
    fmt = _format(path)
    branches = _load(fmt, plain, path)
    if not branches:
        raise SopsError(path, "the file is empty: there is nothing to encrypt")
    reserved = [k for b in branches for k in b if k == "sops" or k.startswith(DOTENV_PREFIX)]
    if fmt != "dotenv":
        reserved = [k for k in reserved if k == "sops"]
    if reserved:
        raise SopsError(
            path,
            f"it already has a {reserved[0]!r} key: it is encrypted already, or uses a key "
            "reserved for SOPS metadata",
            "decrypt it first (setpoint secrets decrypt), or rename that key",
        )
    parsed = [_parse_recipient(r, path) for r in recipients]
    if not parsed:
        raise SopsError(path, "no age recipient given", "pass --age age1...")
    if encrypted_regex:
        try:
            re.compile(encrypted_regex)
        except re.error:
            raise SopsError(path, "--encrypted-regex is not a valid regular expression") from None
        rules = Rules(encrypted_regex=encrypted_regex)
    else:
        rules = Rules(unencrypted_suffix=DEFAULT_UNENCRYPTED_SUFFIX)
    key = os.urandom(DATA_KEY_SIZE)
    try:
        encrypted, mac = encrypt_tree(branches, key, rules)
    except TreeError as exc:
        raise SopsError(path, str(exc)) from None
    lastmodified = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta: dict[str, Any] = {"kms": [], "gcp_kms": [], "azure_kv": [], "hc_vault": []}
    meta["age"] = [
        {"recipient": text, "enc": pyrage.encrypt(key, [r], armored=True).decode("ascii")}
        for text, r in parsed
    ]
    meta["lastmodified"] = lastmodified
    meta["mac"] = encrypt_value(mac, key, lastmodified)
    meta["pgp"] = []
    meta.update(
        {"encrypted_regex": encrypted_regex}
        if encrypted_regex
        else {"unencrypted_suffix": DEFAULT_UNENCRYPTED_SUFFIX}
    )
    meta["version"] = SOPS_VERSION
    if fmt == "dotenv":
        flat = flatten(meta, DOTENV_PREFIX)
        encrypted[0].update(sorted(flat.items()))
    else:
        encrypted = [{**b, "sops": meta} for b in encrypted]
    return _emit(fmt, encrypted, path)


def _parse_recipient(text: str, path: str) -> tuple[str, Any]:
    text = text.strip()
    try:
        return text, pyrage.x25519.Recipient.from_str(text)
    except pyrage.RecipientError:
        # Echo it only if it looks public: a private key pasted by mistake must not be shown.
        shown = repr(text) if text.startswith("age1") else "a recipient not starting with age1"
        raise SopsError(
            path,
            f"{shown} is not an age X25519 recipient",
            "pass the public key age-keygen prints (age1...), never the private key",
        ) from None
