"""Secrets: the "decrypt" stage (an overlay's ``secretFiles`` → values for templates).

Role: reads each SOPS file an included overlay names and decrypts it in memory
with the agent's keys; nothing decrypted is ever written or logged. Called by
:mod:`setpoint.render.pipeline` once per overlay per render. The keys are
opaque here: :class:`Keys` carries a ``decrypt(data, path)`` function and a
fingerprint (part of the render cache key, so new keys mean a new render). The
engine builds it from :mod:`setpoint.render.sops`::

    ids = sops.load_identities(key_file)
    keys = Keys(lambda data, path: sops.decrypt(data, path, ids), sops.fingerprint(ids))

Without keys, any ``secretFiles`` entry is an error naming the file. A file
that cannot be decrypted (tampered, truncated, wrong key) refuses the revision;
the message names the file and the overlay line, never key material.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from setpoint.model.errors import ManifestError, SetpointError
from setpoint.render.files import ReadError, read_confined, relative
from setpoint.render.overlay import Overlay

Decrypt = Callable[[bytes, str], Any]
"""(file bytes, repository path) -> the decrypted document (a mapping for YAML/JSON/dotenv)."""


@dataclass(frozen=True)
class Keys:
    """How this host decrypts secrets, and a fingerprint of the keys (never the keys)."""

    decrypt: Decrypt
    fingerprint: str


def host_keys(key_file: Path | None, env: Mapping[str, str] | None = None) -> Keys | None:
    """This host's keys: ``decryption.ageKeyFile`` and SOPS_AGE_KEY(_FILE), or None.

    The SOPS module (pyrage, cryptography) is imported only when a key is configured,
    so hosts without secrets never pay for it. A key file that cannot be read or
    parsed raises :class:`SetpointError` naming it (never its content).
    """
    env = os.environ if env is None else env
    if key_file is None and "SOPS_AGE_KEY" not in env and "SOPS_AGE_KEY_FILE" not in env:
        return None
    from setpoint.render import sops

    ids = sops.load_identities(key_file, env)
    if not ids:
        return None
    return Keys(lambda data, path: sops.decrypt(data, path, ids), sops.fingerprint(ids))


def decrypt_overlay(
    tree_real: str, ov: Overlay, keys: Keys | None, max_bytes: int, inputs: set[str]
) -> tuple[dict[str, Any], list[ManifestError]]:
    """The overlay's secrets by NAME, and the errors (at the overlay's lines)."""
    values: dict[str, Any] = {}
    errors: list[ManifestError] = []
    for name, path, line in ov.secret_files:

        def fail(message: str, name: str = name, line: int = line) -> None:
            errors.append(ManifestError(ov.file, line, f"secretFiles.{name}: {message}"))

        full = os.path.join(tree_real, ov.dir, path)
        try:
            real, data = read_confined(tree_real, full, max_bytes, f"secret file {path!r}")
        except ReadError as exc:
            fail(exc.message)
            continue
        rel = relative(tree_real, real)
        inputs.add(rel)
        if keys is None:
            fail(
                f"no age identity configured to decrypt {rel}; set decryption.ageKeyFile in "
                "the agent config, or SOPS_AGE_KEY_FILE / SOPS_AGE_KEY"
            )
            continue
        try:
            values[name] = keys.decrypt(data, rel)
        except SetpointError as exc:
            fail(f"cannot decrypt {rel}: {exc}")
        except Exception as exc:  # a decryptor bug must refuse the revision, not crash the agent
            fail(f"cannot decrypt {rel}: {type(exc).__name__}")
    return values, errors
