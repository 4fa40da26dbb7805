"""Turn a pass's outcome into the stack's conditions and counts (Flux-style).

Called by the reconciler at the end of each (non-dry-run) pass; the result is
what ``setpoint status`` and the API show. :func:`mark_orphaned` is the status of
a stack the config no longer names (see :mod:`setpoint.engine.orphans`).
"""

from __future__ import annotations

from collections.abc import Callable

from setpoint.config import StackConfig
from setpoint.engine.outcome import (
    CHANGED,
    DRIFTED,
    FAILED,
    IN_SYNC,
    REVERTED,
    WAITING,
    PassResult,
)
from setpoint.model.errors import SetpointError
from setpoint.model.status import Reason, StackStatus
from setpoint.state import JournalEntry, StateDB

#: Condition reason of a stack the config no longer names that still has state.
ORPHANED = "Orphaned"


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "(none)"


def update_status(
    db: StateDB, stack: StackConfig, result: PassResult, prev: StackStatus | None, now: float
) -> StackStatus:
    st = prev or StackStatus(stack=stack.name)
    failed_before = st.failures > 0  # the previous pass did not converge (st is updated below)
    st.source, st.path = stack.source, stack.path
    st.last_pass = now
    if result.fetched:
        st.fetched_revision = result.fetched
    journal: list[JournalEntry] = []

    partial = result.partial
    if result.revision and result.refused is None and not result.errors:
        if st.last_good_revision != result.revision:
            journal.append(
                JournalEntry(
                    now,
                    stack.name,
                    "revision.applied",
                    result.revision,
                    None,
                    f"revision {_short(result.revision)} is now in force",
                )
            )
        st.last_good_revision = result.revision
    if result.revision:
        st.applied_revision = result.revision

    earlier_stalls = dict(st.stalls)
    if not partial:
        # A partial pass (only some resources re-checked) keeps the others' states.
        st.resources = {}
        st.health = {}
        st.stalls = {}
    _health_and_stalls(st, result, earlier_stalls)
    for o in result.outcomes:
        if o.state in (IN_SYNC, CHANGED, REVERTED):
            st.resources.pop(o.resource, None)
        else:
            st.resources[o.resource] = o.state
    for rid in result.prune_failures:
        st.resources[rid] = FAILED
    total = len(result.outcomes) if not partial else _total(prev)
    bad = list(st.resources.values())
    st.counts = {
        "total": total,
        "in_sync": max(total - len(bad), 0),
        "drifted": bad.count(DRIFTED),
        "failed": bad.count(FAILED),
        "waiting": bad.count(WAITING),
    }

    failed = st.counts["failed"] + st.counts["waiting"]
    if result.refused is not None:
        if (
            prev is None
            or prev.condition("Stalled") is None
            or st.refused_message != "\n".join(result.errors)
        ):
            journal.append(
                JournalEntry(
                    now,
                    stack.name,
                    "revision.refused",
                    result.refused,
                    None,
                    "\n".join(result.errors),
                )
            )
        st.refused_message = "\n".join(result.errors)
        keep = (
            f"; revision {_short(result.revision)} stays in force"
            if result.revision
            else "; no earlier good revision to fall back on"
        )
        msg = f"revision {_short(result.refused)} refused{keep}:\n" + "\n".join(result.errors)
        st.set_condition(
            "Ready", False, result.refused_reason or Reason.VALIDATION_FAILED, msg, now
        )
        st.set_condition(
            "Stalled", True, result.refused_reason or Reason.VALIDATION_FAILED, msg, now
        )
    else:
        st.refused_message = ""
        st.conditions = [c for c in st.conditions if c.type != "Stalled"]
        if result.errors:
            st.set_condition("Ready", False, Reason.SOURCE_FAILED, "\n".join(result.errors), now)
        elif result.fetch_error:
            st.set_condition(
                "Ready",
                False,
                Reason.SOURCE_FAILED,
                f"{result.fetch_error}; revision {_short(result.revision)} stays in force",
                now,
            )
        elif failed or result.prune_failures:
            first = next((o for o in result.outcomes if o.state == FAILED), None)
            detail = f": {first.resource}: {first.error}" if first else ""
            if first is None and result.prune_failures:
                # Say why a prune was refused (e.g. a schema holding tables).
                rid, why = min(result.prune_failures.items())
                detail = f": {rid}: {why}"
            st.set_condition(
                "Ready",
                False,
                Reason.APPLY_FAILED,
                f"{st.counts['failed']} failed, {st.counts['waiting']} waiting at "
                f"revision {_short(result.revision)}{detail}",
                now,
            )
        elif st.counts["drifted"]:
            st.set_condition(
                "Ready",
                False,
                Reason.DRIFT_DETECTED,
                f"{st.counts['drifted']} resource(s) drifted (drift: report, not reverted)",
                now,
            )
        else:
            st.set_condition(
                "Ready",
                True,
                Reason.RECONCILIATION_SUCCEEDED,
                f"applied revision {_short(result.revision)}",
                now,
            )
    if result.refused is None and st.stalls and result.revision:
        # A failed rollout (rolled back) stalls the stack until its declaration changes.
        reason = next(iter(st.stalls.values()))[0]
        msg = "; ".join(
            f"revision {_short(rev)} failed its rollout: {m}" for _, m, rev in st.stalls.values()
        )
        st.set_condition("Ready", False, reason, msg, now)
        st.set_condition("Stalled", True, reason, msg, now)
    st.set_condition("Reconciling", False, Reason.RECONCILIATION_SUCCEEDED, "pass finished", now)
    if result.held is not None:
        # A new revision waits for its turn (a rollout's waves): still moving, not stuck.
        msg = (
            f"revision {_short(result.held)} waits ({result.held_reason}); "
            + (
                f"revision {_short(result.revision)} stays in force"
                if result.revision
                else "nothing applied yet"
            )
        )
        st.set_condition("Reconciling", True, Reason.ROLLOUT_WAITING, msg, now)
        if result.revision is None:
            st.set_condition("Ready", False, Reason.ROLLOUT_WAITING, msg, now)
    st.failures = 0 if result.converged else st.failures + 1

    changed = result.count(CHANGED, REVERTED) + sum(1 for p in result.prunes if not p.is_noop)
    db.save_status(st)
    if journal:
        db.append(*journal)
    if changed or result.count(FAILED):
        _journal_pass(db, stack, result, now, retry=not changed, follows=failed_before)
    return st


def _journal_pass(
    db: StateDB,
    stack: StackConfig,
    result: PassResult,
    now: float,
    *,
    retry: bool,
    follows: bool,
) -> None:
    """The pass's entry. A retry that only failed again (nothing changed) after a pass
    that did not converge either is counted on the previous entry if it says the same
    (its time is in the detail then, not in the message that is compared)."""
    what = (
        f"pass at {_short(result.revision)}: {result.count(CHANGED)} applied, "
        f"{result.count(REVERTED)} reverted, {len(result.prunes)} pruned, "
        f"{result.count(FAILED)} failed"
    )
    ms = round(result.duration * 1000)
    if not retry:
        db.append(JournalEntry(now, stack.name, "pass", result.revision, None, f"{what} ({ms} ms)"))
        return
    db.record_repeat(
        JournalEntry(now, stack.name, "pass", result.revision, None, what, {"ms": ms}),
        follows=follows,
    )


def _health_and_stalls(
    st: StackStatus, result: PassResult, earlier: dict[str, list[str]]
) -> None:
    for rid, (health, message) in result.health.items():
        st.health[rid] = {"health": health, "message": message}
    for o in result.outcomes:
        if o.stall:
            # The revision named is the one whose rollout failed, not a later one that
            # kept the same failing declaration.
            old = earlier.get(o.resource)
            same = old is not None and old[:2] == [o.stall, o.error or ""]
            rev = old[2] if same and old is not None else result.revision or ""
            st.stalls[o.resource] = [o.stall, o.error or "", rev]
        else:
            st.stalls.pop(o.resource, None)


def _total(prev: StackStatus | None) -> int:
    return prev.counts.get("total", 0) if prev else 0


def mark_orphaned(db: StateDB, stack: str, owned: int, message: str, now: float) -> StackStatus:
    """Store the status of an orphaned stack: not Ready (reason Orphaned), no pass runs.

    Its revisions are kept (what was in force when it left the config); its counts
    say only how many resources it still owns.
    """
    st = db.load_status(stack) or StackStatus(stack=stack)
    st.conditions = [c for c in st.conditions if c.type == "Ready"]
    st.set_condition("Ready", False, ORPHANED, message, now)
    st.counts = {"total": owned}
    st.resources, st.health, st.stalls = {}, {}, {}
    st.refused_message = ""
    st.next_retry = None
    db.save_status(st)
    return st


def record_tag(db: StateDB, stack: str, tag_of: Callable[[str | None], str | None]) -> None:
    """Name the tag of ``stack``'s applied revision in its status (a semver source's).

    Called by the controller after a pass; a mirror that cannot be read leaves it as is.
    """
    st = db.load_status(stack)
    if st is None:
        return
    try:
        tag = tag_of(st.applied_revision)
    except SetpointError:
        return
    if st.applied_tag != tag:
        st.applied_tag = tag
        db.save_status(st)
