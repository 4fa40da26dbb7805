"""The ``forget`` command: release a stack that left the config (drop, prune, hand over).

Registered on the ``setpoint`` app by :mod:`setpoint.cli`; the work is
:meth:`setpoint.engine.controller.Controller.forget` and
:mod:`setpoint.engine.orphans`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

# Imported at registration, after setpoint.cli has defined these (see cli._register_extra).
from setpoint.cli import (
    ConfigOpt,
    PathOpt,
    RefOpt,
    RepoOpt,
    RootOpt,
    StackOpt,
    StateOpt,
    _config,
    _db,
    _fail,
)
from setpoint.model.errors import SetpointError

if TYPE_CHECKING:
    from setpoint.engine.orphans import ForgetResult

EPILOG = (
    "Examples:\n\n"
    "setpoint forget web --to web-prod --config /etc/setpoint/config.yaml  (a renamed stack)\n\n"
    "setpoint forget old --prune --config /etc/setpoint/config.yaml  (delete its files)\n\n"
    "setpoint forget old --state /var/lib/setpoint  (keep its files, unmanaged)\n\n"
    "Without --prune or --to, like Argo CD's non-cascading delete (argocd app delete "
    "--cascade=false): OLD's files, directories, releases and services stay on the host as "
    "they are, no longer managed by setpoint (never pruned, free for another stack to declare). "
    "forget refuses to run while an agent owns the state dir: stop the agent, run forget, "
    "start the agent.\n\nExit status: 0 done, 1 refused or (with --prune) a resource could "
    "not be deleted (it stays in OLD's inventory; run forget again once fixed)."
)


def forget(
    name: Annotated[str, typer.Argument(metavar="OLD", help="A stack the config no longer names.")],
    prune_first: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Delete OLD's resources first (the ordinary prune rules: "
            "setpoint/prune: disabled keeps one), then forget what was deleted.",
        ),
    ] = False,
    to: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--to",
            metavar="NEW",
            help="Hand OLD's inventory to stack NEW (renamed in the config): NEW's next pass "
            "takes the resources over as they are, without deleting or re-creating them.",
        ),
    ] = None,
    config: ConfigOpt = None,
    repo: RepoOpt = None,
    ref: RefOpt = "main",
    path: PathOpt = ".",
    stack: StackOpt = "default",
    root: RootOpt = None,
    state: StateOpt = None,
) -> None:
    """Release a stack that left the config: drop its inventory, --prune it, or hand it --to NEW.

    A stack removed from (or renamed in) the config keeps owning its paths:
    `setpoint status` lists it as orphaned. Give the agent's own config (--config, or
    the same --repo/--root/--state flags as the agent); with --state alone only the
    plain forget is possible.
    """
    from setpoint.config import DEFAULT_STATE
    from setpoint.engine.controller import Controller
    from setpoint.engine.inventory import InventoryView
    from setpoint.engine.orphans import release
    from setpoint.state.lock import StateLockedError, lock_state_dir

    def locked(exc: StateLockedError) -> typer.Exit:
        return _fail(
            SetpointError(
                f"cannot forget stack {name!r} while an agent owns the state dir {exc.state} "
                f"({exc.holder}): the agent works from the inventory forget changes. Stop the "
                "agent, run `setpoint forget` again, then start the agent"
            )
        )

    try:
        if config is None and repo is None:
            if prune_first or to is not None:
                raise SetpointError(
                    "--prune and --to need the agent's config (the target root, the stacks): "
                    "give --config FILE (or --repo ... as for apply)"
                )
            st = state or Path(DEFAULT_STATE)
            db = _db(st)
            try:
                lock = lock_state_dir(st)
            except StateLockedError as exc:
                db.close()
                raise locked(exc) from None
            try:
                if name not in db.stack_sizes():
                    known = ", ".join(sorted(db.stack_sizes())) or "none"
                    raise SetpointError(
                        f"the state dir {st} knows no stack named {name!r} (known: {known})"
                    )
                result: ForgetResult = release(InventoryView(db), name, time.time())
            finally:
                db.close()
                lock.close()
        else:
            cfg = _config(config, repo, ref, path, stack, root, state)
            ctl = Controller(cfg)
            try:
                ctl.lock_state()
                result = ctl.forget(name, prune=prune_first, to=to)
            except StateLockedError as exc:
                raise locked(exc) from None
            finally:
                ctl.close()
    except SetpointError as exc:
        raise _fail(exc) from None
    _print_forget(result)
    raise typer.Exit(0 if result.ok else 1)


def _print_forget(result: ForgetResult) -> None:
    n = len(result.done)
    if result.mode == "hand-over":
        typer.echo(
            f"stack {result.stack}: {n} resource(s) handed to stack {result.to}; its next pass "
            "takes them over without re-creating them"
        )
        return
    if result.mode == "release":
        typer.echo(
            f"stack {result.stack} forgotten: {n} resource(s) released; their files stay on the "
            "host, no longer managed by setpoint"
        )
        return
    for rec in result.done:
        typer.echo(f"  - deleted {rec.resource} {rec.path}")
    for rid in result.kept:
        typer.echo(f"  = kept {rid} (released, not deleted)")
    for rid, why in sorted(result.failures.items()):
        typer.echo(f"  ! {rid}: {why}")
    if result.failures:
        typer.echo(
            f"error: stack {result.stack}: {len(result.failures)} resource(s) could not be "
            f"deleted and stay in its inventory: {', '.join(sorted(result.failures))}",
            err=True,
        )
    else:
        typer.echo(
            f"stack {result.stack} forgotten: {n} deleted, {len(result.kept)} kept on the host"
        )
