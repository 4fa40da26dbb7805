"""Shared helpers for the render tests: a provider-less registry and repo-tree writers."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

from setpoint.providers.base import ProviderContext, Registry
from setpoint.providers.files.spec import DirectorySpec, FileSpec, SymlinkSpec


def no_provider(ctx: ProviderContext) -> object:
    raise AssertionError("the renderer must not instantiate providers")


def fs_registry() -> Registry:
    """The file-system kinds' specs, with factories that fail if the renderer calls them."""
    reg = Registry()
    reg.register("File", FileSpec, no_provider)  # type: ignore[arg-type]
    reg.register("Directory", DirectorySpec, no_provider)  # type: ignore[arg-type]
    reg.register("Symlink", SymlinkSpec, no_provider)  # type: ignore[arg-type]
    return reg


def make_tree(tmp_path: Path) -> Path:
    t = tmp_path / "repo"
    t.mkdir()
    return t


def put(tree: Path, rel: str, text: str | bytes) -> Path:
    p = tree / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(dedent(text))
    return p


def file_doc(name: str, path: str, body: str = 'content: "x\\n"') -> str:
    return (
        f"apiVersion: setpoint/v1\nkind: File\nmetadata:\n  name: {name}\n"
        f"spec:\n  path: {path}\n  {body}\n"
    )
