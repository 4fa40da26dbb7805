"""Spec models of the file-system kinds: File, Directory, Symlink.

Validated by :mod:`setpoint.render`; used by :mod:`setpoint.providers.files.provider`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from setpoint.model.fields import STRICT, AbsPath, Mode, Owner, ResourceId


class _Common(BaseModel):
    model_config = STRICT
    path: AbsPath
    dependsOn: list[ResourceId] = Field(default_factory=list)


class FileSpec(_Common):
    """A regular file. Exactly one of ``content`` (inline text), ``source`` (a file
    in the repository, relative to the manifest), ``template`` (inline Jinja2) or
    ``templateSource`` (a Jinja2 file in the repository, relative to the manifest)
    is set; templates are rendered per host by :mod:`setpoint.render.template`."""

    content: str | None = None
    source: str | None = None
    template: str | None = None
    templateSource: str | None = None
    mode: Mode = "0644"
    owner: Owner | None = None
    group: Owner | None = None
    # A secret: its content (diffs, digests) is never shown in plans, the journal or logs.
    sensitive: bool = False
    # Replace a non-empty directory standing at ``path`` (Puppet's force): off by default,
    # so that a typo in a path cannot wipe a data directory. An empty one always goes.
    force: bool = False

    @field_validator("content", "source", "template", "templateSource", mode="before")
    @classmethod
    def _strings_only(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a string")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> FileSpec:
        given = (self.content, self.source, self.template, self.templateSource)
        if sum(v is not None for v in given) != 1:
            raise ValueError(
                "exactly one of content, source, template or templateSource must be set"
            )
        for name, path in (("source", self.source), ("templateSource", self.templateSource)):
            if path is not None and (not path or "\0" in path):
                raise ValueError(f"{name} must be a non-empty path relative to the manifest")
        return self


class DirectorySpec(_Common):
    """A directory; with ``purge`` entries in it that no resource declares are removed."""

    mode: Mode = "0755"
    owner: Owner | None = None
    group: Owner | None = None
    purge: bool = False


class SymlinkSpec(_Common):
    """A symbolic link. An absolute ``target`` is placed under the target root, like ``path``."""

    target: str
    force: bool = False  # as File.force: replace a non-empty directory at ``path``

    @field_validator("target", mode="before")
    @classmethod
    def _target(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise ValueError("target must be a non-empty string")
        if "\0" in value:
            raise ValueError("target contains a NUL byte")
        return value
