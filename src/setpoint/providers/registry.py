"""The built-in registry: every kind setpoint ships with. Called by the CLI and tests."""

from __future__ import annotations

from setpoint.providers import postgres
from setpoint.providers.base import Registry
from setpoint.providers.files.spec import DirectorySpec, FileSpec, SymlinkSpec
from setpoint.providers.services.service_spec import ReleaseSpec, ServiceSpec


def default_registry() -> Registry:
    from setpoint.providers.files.provider import FilesystemProvider
    from setpoint.providers.services.release import ReleaseProvider
    from setpoint.providers.services.service import ServiceProvider

    reg = Registry()
    reg.register("File", FileSpec, FilesystemProvider)
    reg.register("Directory", DirectorySpec, FilesystemProvider)
    reg.register("Symlink", SymlinkSpec, FilesystemProvider)
    reg.register("Release", ReleaseSpec, ReleaseProvider)
    reg.register("Service", ServiceSpec, ServiceProvider)
    postgres.register(reg)
    return reg
