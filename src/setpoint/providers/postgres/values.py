"""Pure value helpers of the PostgreSQL provider: timestamps, privilege normalisation and
SCRAM-SHA-256 verifiers. No I/O; used by spec validation, the planner and the provider.

Passwords are compared with the server's stored verifier (``pg_authid.rolpassword``): the
verifier is recomputed from the declared password with the stored salt and iteration
count (RFC 5802/7677, what PostgreSQL does at login), so plaintext is never read back.
New passwords are sent as a verifier too (``ALTER ROLE ... PASSWORD 'SCRAM-SHA-256$...'``,
like psql's ``\\password``): the plaintext never reaches the server's statement log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import unicodedata
from datetime import UTC, datetime

INFINITY = datetime.max.replace(tzinfo=UTC)
ITERATIONS = 4096  # PostgreSQL's default scram_iterations


def parse_valid_until(value: str) -> datetime:
    """A ``validUntil`` value as an aware datetime (naive values are UTC); ValueError if bad."""
    text = value.strip()
    if text.lower() == "infinity":
        return INFINITY
    try:
        dt = datetime.fromisoformat(text.replace(" ", "T", 1) if " " in text else text)
    except ValueError:
        raise ValueError(
            f"validUntil {value!r} is not a timestamp such as 2030-01-31 or "
            "2030-01-31T12:00:00Z (or infinity)"
        ) from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def show_time(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.year >= 9999:
        return "infinity"
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def expand(privileges: list[str] | str, full: tuple[str, ...]) -> frozenset[str]:
    """A manifest's privileges as a set of PostgreSQL privilege names (ALL expanded)."""
    if privileges == "ALL":
        return frozenset(full)
    names = {"TEMP": "TEMPORARY"}
    return frozenset(names.get(p.upper(), p.upper()) for p in privileges)


def _saslprep(password: str) -> bytes:
    # PostgreSQL applies SASLprep when the password is valid UTF-8; for the ASCII passwords
    # of nearly every deployment it is the identity. NFKC covers the normalisation step.
    if password.isascii():
        return password.encode()
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_verifier(password: str, *, salt: bytes | None = None,
                   iterations: int = ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier in PostgreSQL's ``rolpassword`` format."""
    salt = os.urandom(16) if salt is None else salt
    stored, server = _keys(password, salt, iterations)
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored).decode()}:{b64(server).decode()}"
    )


def password_matches(password: str, stored: str | None, role: str) -> bool:
    """Whether ``stored`` (a ``rolpassword``) verifies ``password``. md5 verifiers are
    compared too (md5(password + role name)); anything else (none, unknown) is a mismatch."""
    if not stored:
        return False
    if stored.startswith("SCRAM-SHA-256$"):
        try:
            head, keys = stored[len("SCRAM-SHA-256$"):].split("$", 1)
            iterations_s, salt_b64 = head.split(":", 1)
            stored_b64, server_b64 = keys.split(":", 1)
            salt = base64.b64decode(salt_b64)
            iterations = int(iterations_s)
        except (ValueError, TypeError):
            return False
        stored_key, server_key = _keys(password, salt, iterations)
        return hmac.compare_digest(base64.b64encode(stored_key).decode(), stored_b64) and (
            hmac.compare_digest(base64.b64encode(server_key).decode(), server_b64)
        )
    if stored.startswith("md5") and len(stored) == 35:
        mine = "md5" + hashlib.md5((password + role).encode(), usedforsecurity=False).hexdigest()
        return hmac.compare_digest(mine, stored)
    return False
