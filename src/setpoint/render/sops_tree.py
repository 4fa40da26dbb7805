"""SOPS tree walking: value encryption (AES-256-GCM) and the MAC over a document's values.

Role: the part of the SOPS format that is not a file syntax and not age: which
values are encrypted, how one value is encoded (``ENC[AES256_GCM,data:...,
iv:...,tag:...,type:...]``) and the SHA-512 MAC over the plaintext values in
tree order. Used by :mod:`setpoint.render.sops` only.

It follows the real sops tool (``sops.go``, ``aes/cipher.go``) exactly, since a
single byte of difference breaks the MAC in one direction or the other:

- a value's additional data is the path of map keys down to it (list indices
  are not part of it) joined with ``:``, plus a trailing ``:``;
- the nonce is 32 random bytes (sops' ``NewGCMWithNonceSize(32)``), the tag 16;
- the MAC hashes every non-null leaf (only the encrypted ones with
  ``mac_only_encrypted``, after 32 fixed bytes), as Go's ``ToBytes`` writes it:
  ints in decimal, floats in Go's shortest ``'f'`` form, booleans ``True``/``False``;
- an empty string is left as is, never encrypted.

Errors are :class:`TreeError`; their messages name key paths (which are in clear
in the file anyway), never a value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENC_RE = re.compile(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]")
NONCE_SIZE = 32
TAG_SIZE = 16
# sops' MACOnlyEncryptedInitialization: sha256("sops"), so the two MAC modes never collide.
MAC_ONLY_ENCRYPTED_INIT = hashlib.sha256(b"sops").digest()
DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

Scalar = str | int | float | bool


class TreeError(Exception):
    """A value or key the SOPS rules cannot handle; the message never holds a value."""


@dataclass(frozen=True)
class Rules:
    """Which values are encrypted (sops' ``shouldBeEncrypted``; at most one rule is set)."""

    unencrypted_suffix: str = ""
    encrypted_suffix: str = ""
    unencrypted_regex: str = ""
    encrypted_regex: str = ""
    mac_only_encrypted: bool = False

    def should_encrypt(self, path: Sequence[str]) -> bool:
        # The same cascade as sops: each rule only looks at the keys on the path.
        encrypted = True
        if self.unencrypted_suffix and any(k.endswith(self.unencrypted_suffix) for k in path):
            encrypted = False
        if self.encrypted_suffix:
            encrypted = any(k.endswith(self.encrypted_suffix) for k in path)
        if self.unencrypted_regex and any(re.search(self.unencrypted_regex, k) for k in path):
            encrypted = False
        if self.encrypted_regex:
            encrypted = any(re.search(self.encrypted_regex, k) for k in path)
        return encrypted


def go_float(value: float) -> str:
    """``strconv.FormatFloat(value, 'f', -1, 64)``: shortest round-trip digits, no exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def go_bytes(value: Scalar) -> bytes:
    """sops' ``ToBytes``: the bytes a leaf contributes to the MAC."""
    if isinstance(value, bool):  # before int: bool is an int in Python
        return b"True" if value else b"False"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return go_float(value).encode()
    return value.encode("utf-8")


def _b64(text: str, what: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise TreeError(f"{where}: the {what} of the encrypted value is not base64") from None


def encrypt_value(value: Scalar, key: bytes, aad: str) -> str:
    """One leaf → ``ENC[AES256_GCM,...]`` (sops' ``Cipher.Encrypt``); "" stays ""."""
    if isinstance(value, bool):
        kind, plain = "bool", (b"True" if value else b"False")
    elif isinstance(value, int):
        kind, plain = "int", str(value).encode()
    elif isinstance(value, float):
        kind, plain = "float", go_float(value).encode()
    else:
        if value == "":
            return ""
        kind, plain = "str", value.encode("utf-8")
    iv = os.urandom(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(iv, plain, aad.encode("utf-8"))
    data, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
    enc = base64.b64encode
    return (
        f"ENC[AES256_GCM,data:{enc(data).decode()},iv:{enc(iv).decode()},"
        f"tag:{enc(tag).decode()},type:{kind}]"
    )


_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_FLOAT = re.compile(
    r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity|nan)", re.I
)
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def decrypt_value(text: str, key: bytes, aad: str, where: str) -> Scalar:
    """``ENC[AES256_GCM,...]`` → the typed plaintext (sops' ``Cipher.Decrypt``); "" → ""."""
    if text == "":
        return ""
    m = ENC_RE.match(text)
    if m is None:
        raise TreeError(f"{where}: the value is not in SOPS' ENC[AES256_GCM,...] form")
    data = _b64(m.group(1), "data", where)
    iv = _b64(m.group(2), "iv", where)
    tag = _b64(m.group(3), "tag", where)
    kind = m.group(4)
    if not 8 <= len(iv) <= 128 or len(tag) != TAG_SIZE:
        raise TreeError(f"{where}: the encrypted value has a malformed iv or tag")
    try:
        plain = AESGCM(key).decrypt(iv, data + tag, aad.encode("utf-8"))
    except InvalidTag:
        raise TreeError(
            f"{where}: the value fails authentication (changed, moved to another key, "
            "or encrypted with another data key)"
        ) from None
    try:
        decoded = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise TreeError(f"{where}: the decrypted value is not UTF-8 text") from None
    if kind in ("str", "bytes", "time", "comment"):
        return decoded
    if kind == "int" and _GO_INT.fullmatch(decoded):
        number = int(decoded)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    elif kind == "float" and _GO_FLOAT.fullmatch(decoded):
        return float(decoded)
    elif kind == "bool" and decoded in _GO_TRUE | _GO_FALSE:
        return decoded in _GO_TRUE
    elif kind not in ("int", "float", "bool"):
        raise TreeError(f"{where}: unknown value type {kind!r} in the encrypted value")
    raise TreeError(f"{where}: the decrypted value is not a valid {kind}")


def _where(path: Sequence[str]) -> str:
    return "at " + (".".join(path) if path else "(top level)")


Leaf = Callable[[Any, tuple[str, ...]], Any]


def _walk(value: Any, path: tuple[str, ...], leaf: Leaf) -> Any:
    """Depth-first in document order, as sops' walkBranch/walkSlice (null leaves skipped)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TreeError(
                    f"{_where(path)}: a key is not a string ({type(k).__name__}); SOPS supports "
                    "only string keys: quote it"
                )
            out[k] = _walk(v, (*path, k), leaf)
        return out
    if isinstance(value, list):
        return [_walk(v, path, leaf) for v in value]
    if value is None:
        return None
    if isinstance(value, str | int | float):
        return leaf(value, path)
    raise TreeError(f"{_where(path)}: unsupported value type {type(value).__name__}")


def _hasher(rules: Rules) -> Any:
    h = hashlib.sha512()
    if rules.mac_only_encrypted:
        h.update(MAC_ONLY_ENCRYPTED_INIT)
    return h


def encrypt_tree(
    branches: Sequence[dict[str, Any]], key: bytes, rules: Rules
) -> tuple[list[dict[str, Any]], str]:
    """Encrypt every value the rules select; return the new branches and the MAC (hex, upper)."""
    h = _hasher(rules)

    def leaf(value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            raise TreeError(f"{_where(path)}: the integer does not fit in 64 bits; quote it")
        encrypted = rules.should_encrypt(path)
        if not rules.mac_only_encrypted or encrypted:
            h.update(go_bytes(value))
        if encrypted:
            return encrypt_value(value, key, ":".join(path) + ":")
        return value

    out = [_walk(b, (), leaf) for b in branches]
    return out, h.hexdigest().upper()


def decrypt_tree(
    branches: Sequence[dict[str, Any]], key: bytes, rules: Rules
) -> tuple[list[dict[str, Any]], str]:
    """Decrypt every value the rules select; return the plaintext branches and the computed MAC."""
    h = _hasher(rules)

    def leaf(value: Any, path: tuple[str, ...]) -> Any:
        encrypted = rules.should_encrypt(path)
        if encrypted:
            if not isinstance(value, str):
                raise TreeError(
                    f"{_where(path)}: expected an encrypted value, found a plain "
                    f"{type(value).__name__}"
                )
            value = decrypt_value(value, key, ":".join(path) + ":", _where(path))
        if not rules.mac_only_encrypted or encrypted:
            h.update(go_bytes(value))
        return value

    out = [_walk(b, (), leaf) for b in branches]
    return out, h.hexdigest().upper()
