"""The live diff of one resource: the provider's read + plan against the desired state in force.

Runs in the agent's pass thread (``Agent.in_pass_thread``) so it never races a
pass (providers and the target's cached directory descriptors belong to it).
Writes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from setpoint.engine.outcome import change_json
from setpoint.providers.base import DigestDeriving

if TYPE_CHECKING:
    from setpoint.engine.controller import Controller


class NotDeclared(LookupError):
    pass


def live_diff(ctl: Controller, stack: str, rid: str) -> dict[str, Any]:
    """``{resource, revision, inSync, drift, change}``; NotDeclared if not in force."""
    rec = ctl.reconciler
    desired = rec.enforced(stack)
    if desired is None or rid not in desired.index:
        raise NotDeclared(rid)
    r = desired.ordered.order[desired.index[rid]]
    provider = rec.providers[r.kind]
    if isinstance(provider, DigestDeriving):
        r = replace(r, digest=provider.effective_digest(r))
    rec.begin_outside(stack, desired)
    try:
        change = provider.plan(r, provider.read(r))
    except Exception as exc:  # a provider error is an answer, as in a pass
        return {"resource": rid, "revision": desired.revision, "error": str(exc)}
    finally:
        rec.end_pass()  # read() may have cached descriptors; the next pass reopens
    owned = rec.inventory.stack(stack).get(rid)
    return {
        "resource": rid,
        "revision": desired.revision,
        "inSync": change.is_noop,
        # The same rule as a pass: a change for the declaration applied is drift.
        "drift": owned is not None and owned.digest == r.digest and not change.is_noop,
        "change": change_json(change),
    }
