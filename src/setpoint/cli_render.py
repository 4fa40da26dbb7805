"""``setpoint render DIR``: the resources a host would get, after overlays, patches and templates.

Role: the implementation of the ``render`` command registered in
:mod:`setpoint.cli`. It runs the same pipeline the agent runs
(:func:`setpoint.render.render_stack`) on a working copy, for the labels
given with ``--labels``, and prints every resource as the agent would apply
it: one YAML document each, preceded by a comment naming where it was
declared, the overlays it came through, the patches applied and its template.
A File's content is shown resolved (from ``content``, ``source`` or its
template); a sensitive File's content (one whose template read secrets, or
marked ``sensitive``) is masked, only its size shown.

The repository root is the nearest directory above DIR holding ``.git`` (so
an overlay may build on ``../base``); without one, DIR itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import typer
import yaml

from setpoint.facts import gather, host_labels
from setpoint.model.errors import ManifestErrors, SetpointError
from setpoint.model.resource import Resource, dump_spec
from setpoint.providers.registry import default_registry
from setpoint.render import Host, Rendered, render_stack
from setpoint.render.decrypt import host_keys
from setpoint.render.selector import parse_labels

_CONTENT_FIELDS = ("content", "source", "template", "templateSource")


def repo_and_path(directory: Path) -> tuple[Path, str]:
    """(repository root, DIR relative to it): the nearest parent holding ``.git``.

    Outside a repository: ``(directory, ".")``, unchanged.
    """
    here = directory.resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".git").exists():
            return candidate, here.relative_to(candidate).as_posix() or "."
    return directory, "."


def shown_path(directory: Path, tree: Path, subdir: str, file: str) -> Path:
    """A repository path as the operator spelled DIR (``tree/file`` if outside DIR)."""
    if subdir == ".":
        return directory / file
    if file == subdir or file.startswith(subdir + "/"):
        return directory / file[len(subdir) + 1 :]
    return tree / file


def run_render(
    directory: Path, labels_text: str, as_json: bool, key_file: Path | None = None
) -> None:
    """The ``render`` command: print the rendered resources, or every error (exit 1)."""
    try:
        labels = parse_labels(labels_text)
    except ValueError as exc:
        typer.echo(f"error: --labels: {exc}", err=True)
        raise typer.Exit(2) from None
    if not directory.is_dir():
        typer.echo(f"error: {directory} is not a directory", err=True)
        raise typer.Exit(1)
    tree, subdir = repo_and_path(directory)
    try:
        keys = host_keys(key_file)
    except SetpointError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        # As the agent sees this host: its facts, then the given labels (which may
        # override a fact to render for another machine, e.g. setpoint.io/cpus=8).
        host = Host(host_labels(labels, gather()) | labels, keys=keys)
        rendered = render_stack(tree, subdir, default_registry(), host=host)
    except ManifestErrors as exc:
        for e in exc.errors:
            typer.echo(f"{shown_path(directory, tree, subdir, e.file)}:{e.line}: {e.message}")
        typer.echo(f"{len(exc.errors)} error(s)", err=True)
        raise typer.Exit(1) from None
    except SetpointError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(render_json(rendered), indent=2))
    else:
        typer.echo(render_yaml(rendered), nl=False)


def document(r: Resource) -> tuple[dict[str, Any], bool]:
    """The resource as a manifest with its File content resolved; (document, masked)."""
    spec = dump_spec(r.spec)
    if not spec.get("dependsOn"):
        spec.pop("dependsOn", None)
    if spec.get("sensitive") is False:
        del spec["sensitive"]
    masked = False
    if r.blob is not None and any(k in spec for k in _CONTENT_FIELDS):
        content: str | None
        if spec.get("sensitive"):
            masked = True
            content = f"(sensitive, {len(r.blob)} bytes)"
        else:
            try:
                content = r.blob.decode("utf-8")
            except UnicodeDecodeError:
                content = None  # binary: keep ``source``, the comment gives size and digest
        if content is not None:
            # ``content`` takes the place of whichever field gave the bytes.
            spec = {
                ("content" if k in _CONTENT_FIELDS else k): (content if k in _CONTENT_FIELDS else v)
                for k, v in spec.items()
            }
    meta: dict[str, Any] = {"name": r.name}
    if r.labels:
        meta["labels"] = dict(r.labels)
    doc = {"apiVersion": "setpoint/v1", "kind": r.kind, "metadata": meta, "spec": spec}
    return doc, masked


def _comment(r: Resource, rendered: Rendered, masked: bool) -> list[str]:
    o = rendered.origins[r.id]
    lines = [f"# {r.id} from {o.location}"]
    if o.overlays:
        lines.append(f"#   overlays: {', '.join(o.overlays)}")
    if o.patches:
        lines.append(f"#   patches: {', '.join(o.patches)}")
    if o.template:
        lines.append(f"#   template: {o.template}")
    if masked:
        why = " (from secrets)" if o.from_secrets else ""
        lines.append(f"#   content masked: sensitive{why}")
    elif r.blob is not None and "source" in dump_spec(r.spec):
        digest = hashlib.sha256(r.blob).hexdigest()
        lines.append(f"#   source: {len(r.blob)} bytes, sha256 {digest}")
    return lines


def render_yaml(rendered: Rendered) -> str:
    parts = []
    for r in rendered.resources:
        doc, masked = document(r)
        body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        parts.append("\n".join([*_comment(r, rendered, masked), body]))
    return "---\n".join(parts)


def render_json(rendered: Rendered) -> list[dict[str, Any]]:
    out = []
    for r in rendered.resources:
        doc, masked = document(r)
        o = rendered.origins[r.id]
        out.append(
            {
                "id": r.id,
                "location": str(o.location),
                "overlays": list(o.overlays),
                "patches": list(o.patches),
                "template": o.template,
                "masked": masked,
                "document": doc,
            }
        )
    return out


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks (PyYAML falls back to quotes where it must)."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)
