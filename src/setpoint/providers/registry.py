"""The built-in registry: every kind setpoint ships with. Called by the CLI and tests."""

from __future__ import annotations

from setpoint.providers.base import Registry
from setpoint.providers.fs_spec import DirectorySpec, FileSpec, SymlinkSpec


def default_registry() -> Registry:
    from setpoint.providers.fs import FilesystemProvider

    reg = Registry()
    reg.register("File", FileSpec, FilesystemProvider)
    reg.register("Directory", DirectorySpec, FilesystemProvider)
    reg.register("Symlink", SymlinkSpec, FilesystemProvider)
    return reg
