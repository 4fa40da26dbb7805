"""A :class:`GitSource` built from a source's config entry (URL, ref or semver range, auth).

Role: the one place the config's ``SourceConfig`` is translated into the source
layer's types, so :mod:`setpoint.source.git` does not depend on the config
schema. Called by :class:`setpoint.engine.controller.Controller`.
"""

from __future__ import annotations

from pathlib import Path

from setpoint.config import SemverRef, SourceConfig
from setpoint.model.semver import Range
from setpoint.source.auth import SourceAuth
from setpoint.source.git import GitSource


def git_source(cfg: SourceConfig, cache_dir: Path) -> GitSource:
    """The source ``cfg`` names, with its mirror under ``cache_dir``."""
    auth = SourceAuth.from_config(cfg.auth)
    if isinstance(cfg.ref, SemverRef):
        return GitSource(
            cfg.name,
            cfg.url,
            "",
            cache_dir,
            auth=auth,
            semver=Range.parse(cfg.ref.semver),
            allow_tag_moves=cfg.allow_rewrites,
        )
    return GitSource(cfg.name, cfg.url, cfg.ref, cache_dir, auth=auth)
