"""The write-back commands: ``set``, ``promote``, ``update-versions``, ``rollback``,
``capture``, and ``explain``.

Thin shells over :mod:`setpoint.writeback`; registered on the ``setpoint`` app
by :func:`register` (called from :mod:`setpoint.cli`). Exit status of the write
commands: 0 committed (and pushed with --push), 1 error, 3 nothing to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from setpoint.model.errors import SetpointError

if TYPE_CHECKING:
    from setpoint.writeback.gitwork import WorkRepo
    from setpoint.writeback.transaction import Landed

NOTHING_CHANGED = 3
NOT_MANAGED = 3

WbConfig = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--config", "-c", help="The agent's config: write to this stack's source."),
]
WbStack = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--stack", help="The stack in --config (needed when it has several)."),
]
WbRepo = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--repo", help="Git URL or local path of the repository to commit to."),
]
WbBranch = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--branch",
        help="Branch the commit lands on. Default: the source's ref, or the "
        "remote's default branch.",
    ),
]
WbPath = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--path",
        help="The stack's directory in the repository. Default: the "
        "stack's path, or the repository root.",
    ),
]
WbMessage = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--message", "-m", help="Commit subject (the body always lists each change)."),
]
WbAuthor = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--author", help="Commit author 'Name <email>'. Default: git config user.*"),
]
WbPush = Annotated[
    bool,
    typer.Option("--push", help="Push the commit. Without it: a dry run showing the commit."),
]
WbSign = Annotated[
    bool, typer.Option("--sign", help="Sign the commit (git's own signing config, ssh or gpg).")
]


def _fail(exc: BaseException) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


def _report(landed: Landed, url: str) -> None:
    if landed.commit is None:
        typer.echo("nothing to change: every field already has its value")
        raise typer.Exit(NOTHING_CHANGED)
    _show(landed, url)


def _show(landed: Landed, url: str, lines: list[str] | None = None) -> None:
    assert landed.commit is not None
    for line in [str(c) for c in landed.changes] if lines is None else lines:
        typer.echo(f"  {line}")
    if landed.pushed:
        retried = f" after {landed.tries} tries" if landed.tries > 1 else ""
        typer.echo(f"committed {landed.commit[:12]} and pushed to {url}{retried}")
    else:
        typer.echo(landed.shown.rstrip())
        typer.echo("dry run: not pushed (give --push to land this commit)")


def set_(
    resource: Annotated[str, typer.Argument(help="The resource, Kind/name (e.g. Release/api).")],
    assignments: Annotated[
        list[str], typer.Argument(help="FIELD=VALUE, FIELD a dotted path (spec.version=1.4.3).")
    ],
    config: WbConfig = None,
    stack: WbStack = None,
    repo: WbRepo = None,
    branch: WbBranch = None,
    path: WbPath = None,
    message: WbMessage = None,
    author: WbAuthor = None,
    push: WbPush = False,
    sign: WbSign = False,
) -> None:
    """Change fields of one resource in Git: edit where declared, validate, commit, push."""
    from setpoint.writeback.gitwork import Author
    from setpoint.writeback.setfield import FieldSetter, parse_assignments, subject
    from setpoint.writeback.transaction import commit_message, land, target_from

    try:
        target = target_from(config, stack, repo, branch, path)
        pairs = parse_assignments(assignments)
        setter = FieldSetter(target.path, resource, pairs)
        who = Author.parse(author) if author else None
        landed = land(
            target,
            setter,
            lambda ch: commit_message(subject(resource, pairs), ch, target.path, message),
            author=who,
            sign=sign,
            push=push,
        )
    except SetpointError as exc:
        raise _fail(exc) from None
    _report(landed, target.url)


def promote(
    from_: Annotated[str, typer.Option("--from", help="Stack path to copy from (envs/staging).")],
    to: Annotated[str, typer.Option("--to", help="Stack path to copy to (envs/prod).")],
    resources: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="Releases to promote (Release/NAME). Default: every Release."),
    ] = None,
    config: WbConfig = None,
    stack: WbStack = None,
    repo: WbRepo = None,
    branch: WbBranch = None,
    message: WbMessage = None,
    author: WbAuthor = None,
    push: WbPush = False,
    sign: WbSign = False,
) -> None:
    """Copy Release versions (version, url, sha256) from one overlay to another, one commit."""
    from setpoint.writeback.gitwork import Author
    from setpoint.writeback.promote import Promotion, subject
    from setpoint.writeback.transaction import commit_message, land, target_from

    try:
        target = target_from(config, stack, repo, branch, to)
        promotion = Promotion(from_, to, tuple(resources or ()))
        who = Author.parse(author) if author else None
        landed = land(
            target,
            promotion,
            lambda ch: commit_message(subject(from_, to, ch), ch, to, message),
            author=who,
            sign=sign,
            push=push,
        )
    except SetpointError as exc:
        raise _fail(exc) from None
    for rid in promotion.skipped:
        typer.echo(f"skipped {rid}: not declared in {to}")
    _report(landed, target.url)


def update_versions(
    config: WbConfig = None,
    stack: WbStack = None,
    repo: WbRepo = None,
    branch: WbBranch = None,
    path: WbPath = None,
    message: WbMessage = None,
    author: WbAuthor = None,
    push: WbPush = False,
    sign: WbSign = False,
) -> None:
    """Commit the newest version each Release's versionPolicy allows (checked by SHA-256)."""
    from setpoint.writeback.gitwork import Author
    from setpoint.writeback.transaction import commit_message, land, target_from
    from setpoint.writeback.versions import VersionUpdate, subject

    try:
        target = target_from(config, stack, repo, branch, path)
        update = VersionUpdate(target.path)
        who = Author.parse(author) if author else None
        landed = land(
            target,
            update,
            lambda ch: commit_message(subject(ch), ch, target.path, message),
            author=who,
            sign=sign,
            push=push,
        )
    except SetpointError as exc:
        raise _fail(exc) from None
    for err in update.errors:
        typer.echo(f"error: {err}", err=True)
    if update.errors:
        if landed.commit is not None:
            _show(landed, target.url)
        raise typer.Exit(1)
    _report(landed, target.url)


WbState = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--state",
        help="The agent's state dir (its journal). Default: --config's state, else "
        "/var/lib/setpoint.",
    ),
]


def _state_dir(config: Path | None, state: Path | None) -> Path:
    if state is not None:
        return state
    if config is not None:
        from setpoint.config import load_config

        return Path(load_config(config).state)
    return Path("/var/lib/setpoint")


def rollback(
    stack: Annotated[str, typer.Argument(help="The stack to roll back (its name in the journal).")],
    reason: Annotated[
        str, typer.Option("--message", "-m", help="Why (required): the commit says it.")
    ],
    to: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--to",
            help="The revision to go back to. Default: the one applied to the stack before "
            "the one in force (from the agent's journal, see --state).",
        ),
    ] = None,
    config: WbConfig = None,
    repo: WbRepo = None,
    branch: WbBranch = None,
    path: WbPath = None,
    state: WbState = None,
    author: WbAuthor = None,
    push: WbPush = False,
    sign: WbSign = False,
) -> None:
    """Commit the reverse of the stack's changes since REVISION (its files only), with a reason."""
    from setpoint.writeback.gitwork import Author
    from setpoint.writeback.rollback import Rollback, message, previous_revision
    from setpoint.writeback.transaction import land, target_from

    try:
        if not reason.strip():
            raise SetpointError("-m REASON must say why the stack is rolled back")
        target = target_from(config, stack if config else None, repo, branch, path)
        current = None
        if to is None:
            current, to = previous_revision(_state_dir(config, state), stack)
        rb = Rollback(target.path, to)
        who = Author.parse(author) if author else None
        landed = land(
            target,
            rb,
            lambda ch: message(stack, target.path, rb, ch, reason, current),
            author=who,
            sign=sign,
            push=push,
            on_clone=rb.bind,
        )
    except SetpointError as exc:
        raise _fail(exc) from None
    if landed.commit is None:
        typer.echo(f"nothing to roll back: the stack's files are already those of {to}")
        raise typer.Exit(NOTHING_CHANGED)
    typer.echo(f"rolling stack {stack} back to {rb.resolved[:12]} (from {rb.tip[:12]}):")
    _show(landed, target.url, lines=[f"{c.field} {c.file}" for c in landed.changes])


def capture(
    stack: Annotated[str, typer.Argument(help="The stack whose drift is written back.")],
    resources: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(help="Only these (Kind/name). Default: every drifted one."),
    ] = None,
    from_journal: Annotated[
        bool,
        typer.Option(
            "--from-journal",
            help="Write back the last reverted drift (journal) instead of drift found now.",
        ),
    ] = False,
    config: WbConfig = None,
    repo: WbRepo = None,
    branch: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--branch", help="The new branch. Default: capture/STACK-YYYYmmdd-HHMMSS."),
    ] = None,
    path: WbPath = None,
    state: WbState = None,
    root: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--root", help="The target root the live state is read under. "
                     "Default: --config's root, else /."),
    ] = None,
    message: WbMessage = None,
    author: WbAuthor = None,
    push: WbPush = False,
    sign: WbSign = False,
) -> None:
    """Write drifted resources' live state into their manifests, on a new branch."""
    import time

    from setpoint.writeback import capture as cap
    from setpoint.writeback.gitwork import Author, GitError
    from setpoint.writeback.stack import assemble
    from setpoint.writeback.transaction import commit_message, land, target_from

    refused: list[str] = []
    try:
        target = target_from(config, stack if config else None, repo, None, path)
        state_dir = _state_dir(config, state)
        if root is None:
            from setpoint.config import load_config

            root = Path(load_config(config).root) if config is not None else Path("/")
        new = branch or f"capture/{stack}-{time.strftime('%Y%m%d-%H%M%S')}"
        details = cap.from_journal(state_dir, stack, list(resources or [])) if from_journal else {}
        wanted = list(details) if from_journal else cap.drifted(state_dir, stack)
        if resources and not from_journal:
            wanted = [r for r in wanted if r in resources]
            refused += [f"{r}: not drifted (status of {stack})" for r in resources
                        if r not in wanted]  # fmt: skip
        if not wanted and not refused:
            typer.echo(f"nothing to capture: no resource of stack {stack} is drifted")
            raise typer.Exit(NOTHING_CHANGED)
        live: list[cap.Live] = []

        def collect(work: WorkRepo) -> None:
            work.branch = new  # the commit goes to a new branch, made from the source's ref
            if work.git("ls-remote", "--heads", "origin", f"refs/heads/{new}").strip():
                raise GitError(f"branch {new} already exists in {target.url}; choose --branch")
            stack_now = assemble(work.dir, target.path)
            for rid in wanted:
                try:
                    doc = stack_now.find(rid)
                    cap.check(doc)
                    if from_journal:
                        declared = cap.declared_content(work.dir, doc)
                        live.append(cap.live_from_journal(doc, details[rid], declared))
                    else:
                        live.append(cap.read_live(root, doc))
                except cap.Refused as exc:
                    refused.append(str(exc))
            if not live:
                raise SetpointError("nothing to capture: every resource was refused")

        edit = cap.Capture(target.path, live)
        who = Author.parse(author) if author else None
        landed = land(
            target,
            edit,
            lambda ch: commit_message(cap.subject(stack, live), ch, target.path, message),
            author=who,
            sign=sign,
            push=push,
            on_clone=collect,
        )
    except SetpointError as exc:
        for r in refused:
            typer.echo(f"refused: {r}", err=True)
        raise _fail(exc) from None
    for r in refused:
        typer.echo(f"refused: {r}", err=True)
    if landed.commit is None:
        typer.echo("nothing to capture: the manifests already declare the live state")
        raise typer.Exit(1 if refused else NOTHING_CHANGED)
    typer.echo(f"captured onto the new branch {new}:")
    _show(landed, target.url)
    if refused:
        raise typer.Exit(1)


def explain(
    target: Annotated[str, typer.Argument(help="A managed path (/etc/motd) or Kind/name.")],
    state: Annotated[Path, typer.Option("--state", help="The agent's state dir.")] = Path(
        "/var/lib/setpoint"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Which stack and resource manage TARGET, the commit behind it, its drift history."""
    import json

    from setpoint.writeback.explain import explain as run
    from setpoint.writeback.explain import render_text

    try:
        found = run(state, target)
    except SetpointError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(found.to_json(), indent=2))
    else:
        typer.echo(render_text(found))
    raise typer.Exit(0 if found.managed else NOT_MANAGED)


def register(app: typer.Typer) -> None:
    app.command(
        "set",
        epilog="Example: setpoint set Release/api spec.version=1.4.3 spec.sha256=... "
        "--repo git@git.example:ops/infra.git --path envs/staging --push\n\n"
        "Exit status: 0 committed (pushed with --push), 1 error, 3 nothing to change.",
    )(set_)
    app.command(
        epilog="Example: setpoint promote --from envs/staging --to envs/prod Release/api "
        "--repo git@git.example:ops/infra.git --push\n\n"
        "Exit status: 0 committed (pushed with --push), 1 error, 3 nothing to change.",
    )(promote)
    app.command(
        "update-versions",
        epilog="Example: setpoint update-versions --config /etc/setpoint/config.yaml "
        "--stack web --push\n\nExit status: 0 committed (pushed with --push), 1 error "
        "(an index unreadable, an archive whose SHA-256 does not match: that Release is "
        "left alone, the others are committed), 3 nothing to change.",
    )(update_versions)
    app.command(
        epilog="Example: setpoint rollback web --config /etc/setpoint/config.yaml "
        "-m 'api 1.5 leaks memory' --push\n\n"
        "Exit status: 0 committed (pushed with --push), 1 error, 3 nothing to roll back.",
    )(rollback)
    app.command(
        epilog="Example: setpoint capture web --config /etc/setpoint/config.yaml "
        "--branch fix/motd --push\n\nExit status: 0 committed (pushed with --push), 1 error "
        "or some resource refused (the others are committed), 3 nothing to change.",
    )(capture)
    app.command(
        epilog="Example: setpoint explain /etc/motd --state /var/lib/setpoint\n\n"
        "Exit status: 0 managed, 3 not managed (the nearest managed parent is named), 1 error.",
    )(explain)
