"""Dependency order for a stack: explicit ``dependsOn`` plus providers' implicit edges.

Called by the reconciler (order of reads/applies and of prunes) and by
``setpoint validate`` (cycle check). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from setpoint.model.errors import ManifestError
from setpoint.model.resource import Resource


@dataclass(frozen=True)
class Ordered:
    """Resources in an order where every dependency comes first, and each one's dependencies."""

    order: tuple[Resource, ...]
    deps: dict[str, frozenset[str]]


def order_resources(
    resources: Sequence[Resource],
    implicit: Callable[[Resource], Iterable[str]],
) -> Ordered:
    """Topologically sort ``resources``; raise ManifestError naming a cycle if there is one.

    Ties keep declaration order (file, line), so the order is deterministic.
    """
    by_id = {r.id: r for r in resources}
    deps: dict[str, frozenset[str]] = {}
    for r in resources:
        d = {x for x in r.depends_on if x in by_id}
        d.update(x for x in implicit(r) if x in by_id and x != r.id)
        deps[r.id] = frozenset(d)

    index = {r.id: i for i, r in enumerate(resources)}
    # Iterative DFS post-order (recursion would overflow on deep chains).
    state: dict[str, int] = {}  # 1 = on stack, 2 = done
    order: list[Resource] = []
    for start in resources:
        if state.get(start.id):
            continue
        stack: list[tuple[str, list[str]]] = [
            (start.id, sorted(deps[start.id], key=index.__getitem__))
        ]
        state[start.id] = 1
        while stack:
            node, pending = stack[-1]
            if pending:
                nxt = pending.pop(0)
                st = state.get(nxt)
                if st == 1:
                    path = [n for n, _ in stack]
                    cycle = [*path[path.index(nxt) :], nxt]
                    raise _cycle_error(cycle, by_id)
                if st is None:
                    state[nxt] = 1
                    stack.append((nxt, sorted(deps[nxt], key=index.__getitem__)))
            else:
                stack.pop()
                state[node] = 2
                order.append(by_id[node])
    return Ordered(tuple(order), deps)


def _cycle_error(cycle: list[str], by_id: dict[str, Resource]) -> ManifestError:
    first = by_id[cycle[0]]
    places = ", ".join(f"{rid} at {by_id[rid].location}" for rid in cycle[:-1])
    return ManifestError(
        first.location.file,
        first.location.line,
        f"dependency cycle: {' → '.join(cycle)} ({places}); remove one dependsOn to break it",
    )
