"""Reusable validated field types for resource specs (paths, modes, owners, ids).

Used by the kinds' spec models in :mod:`setpoint.providers`; validation errors
raised here are turned into ``file:line`` messages by :mod:`setpoint.render`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict

from setpoint.model.resource import parse_resource_id

STRICT = ConfigDict(extra="forbid", frozen=True, strict=False, defer_build=True)
MODE_RE = re.compile(r"^0?[0-7]{3}$|^[0-7]{4}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$", re.IGNORECASE)


def check_abs_path(value: Any) -> str:
    """An absolute, already-normal path: never rewritten, refused if not normal."""
    if not isinstance(value, str):
        raise ValueError("must be a string holding an absolute path such as /etc/motd")
    if "\0" in value:
        raise ValueError("path contains a NUL byte")
    if not value.startswith("/"):
        raise ValueError(f"path {value!r} must be absolute (start with /)")
    if value == "/":
        raise ValueError("path / (the root itself) cannot be managed")
    if value.endswith("/"):
        raise ValueError(f"path {value!r} must not end with /")
    if "//" in value:
        raise ValueError(f"path {value!r} must not contain //")
    parts = value.split("/")[1:]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"path {value!r} must not contain . or .. components")
    if len(value.encode("utf-8", "surrogatepass")) > 4096:
        raise ValueError("path is longer than 4096 bytes")
    return value


def check_mode(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f'mode must be a quoted octal string such as "0644" (got {value!r}; '
            "unquoted 0644 is read by YAML as a number)"
        )
    if not MODE_RE.match(value):
        raise ValueError(f'mode {value!r} is not an octal permission such as "0644" or "2755"')
    return value.rjust(4, "0")


def check_owner(value: Any) -> str | int:
    if isinstance(value, bool):
        raise ValueError("owner/group must be a name or a number")
    if isinstance(value, int):
        if value < 0 or value > 2**32 - 2:
            raise ValueError(f"id {value} is out of range")
        return value
    if isinstance(value, str):
        if value.isdigit():
            return check_owner(int(value))
        if USER_RE.match(value):
            return value
        raise ValueError(f"{value!r} is not a valid user or group name")
    raise ValueError("owner/group must be a name or a number")


def check_resource_id(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a resource id string such as File/motd")
    parse_resource_id(value)
    return value


AbsPath = Annotated[str, BeforeValidator(check_abs_path)]
Mode = Annotated[str, BeforeValidator(check_mode)]
Owner = Annotated[str | int, BeforeValidator(check_owner)]
ResourceId = Annotated[str, BeforeValidator(check_resource_id)]


def mode_int(mode: str) -> int:
    return int(mode, 8)
