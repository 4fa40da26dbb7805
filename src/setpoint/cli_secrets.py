"""``setpoint secrets encrypt|decrypt``: SOPS secret files for operators.

Registered by :mod:`setpoint.cli` as the ``secrets`` command group; the work is
done by :mod:`setpoint.render.sops` (the agent itself decrypts in memory and
never writes plaintext). Files are compatible with the sops tool both ways.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from setpoint.atomic import write_atomic
from setpoint.model.errors import SetpointError

secrets_app = typer.Typer(
    help="Encrypt and decrypt SOPS secret files (YAML, JSON, dotenv) with age keys.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

FileArg = Annotated[Path, typer.Argument(help="The file (*.yaml, *.yml, *.json or *.env).")]


def _fail(exc: BaseException) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _fail(SetpointError(f"{path}: cannot read: {exc.strerror or exc}")) from None


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` atomically (temp file, fsync, rename), keeping its mode."""
    write_atomic(path, data, mode=path.stat().st_mode & 0o7777)


@secrets_app.command(
    "encrypt",
    epilog="Example: setpoint secrets encrypt envs/prod/db.yaml --age age1... "
    "--encrypted-regex '^(data|stringData)$'",
)
def encrypt_cmd(
    file: FileArg,
    age: Annotated[
        str, typer.Option("--age", help="Age recipients (public keys, age1...), comma-separated.")
    ],
    encrypted_regex: Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation at run time
        typer.Option(
            "--encrypted-regex",
            help="Encrypt only the values under keys matching this regex (as sops' option); "
            "default: every value except those under keys ending in _unencrypted.",
        ),
    ] = None,
) -> None:
    """Encrypt a plaintext YAML, JSON or dotenv file in place, as sops does."""
    from setpoint.render.sops import encrypt  # the crypto libraries load only when used

    recipients = [r.strip() for r in age.split(",") if r.strip()]
    plain = _read(file)
    try:
        data = encrypt(plain, str(file), recipients, encrypted_regex)
        _replace(file, data)
    except SetpointError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        raise _fail(SetpointError(f"{file}: cannot write: {exc.strerror or exc}")) from None
    typer.echo(f"encrypted {file} for {len(recipients)} age recipient(s)", err=True)


@secrets_app.command(
    "decrypt",
    epilog="Example: SOPS_AGE_KEY_FILE=~/.config/sops/age/keys.txt "
    "setpoint secrets decrypt envs/prod/db.yaml",
)
def decrypt_cmd(
    file: FileArg,
    age_key_file: Annotated[
        Optional[Path],  # noqa: UP045 - typer reads the annotation at run time
        typer.Option(
            "--age-key-file",
            help="Age identity file; SOPS_AGE_KEY_FILE and SOPS_AGE_KEY are read as well.",
        ),
    ] = None,
) -> None:
    """Print a SOPS file decrypted (after checking its MAC), for operators."""
    from setpoint.render.sops import decrypt_to_bytes, load_identities

    data = _read(file)
    try:
        identities = load_identities(age_key_file)
        plain = decrypt_to_bytes(data, str(file), identities)
    except SetpointError as exc:
        raise _fail(exc) from None
    if sys.stdout.isatty():
        typer.echo("warning: printing decrypted secrets to the terminal", err=True)
    sys.stdout.buffer.write(plain)
    sys.stdout.buffer.flush()
