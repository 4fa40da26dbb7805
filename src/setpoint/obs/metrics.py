"""Prometheus metrics of the agent (``GET /metrics``), with prometheus-client.

Counters and histograms are fed as things happen (journal entries and pass
results, from :class:`~setpoint.obs.observer.Observer`); the per-stack gauges
(resources, revision info, last success) are read at scrape time from the
stored status, so they are right even for stacks that have not passed since the
agent started. Every name and label here is documented in README.md ("Metrics")
and used by deploy/prometheus/alerts.yaml and deploy/grafana/setpoint.json.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from setpoint.engine.outcome import PassResult
from setpoint.state import JournalEntry

PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RESTORE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# revision refusal reason -> setpoint_source_failures_total{reason}
REFUSALS = {"VerificationFailed": "verification", "HistoryRewritten": "history"}

#: Every metric the agent exports: name -> labels (the README documents each).
METRICS: dict[str, tuple[str, ...]] = {
    "setpoint_pass_duration_seconds": ("stack",),
    "setpoint_resources": ("stack", "kind", "sync", "health"),
    "setpoint_drift_total": ("stack", "kind"),
    "setpoint_reverts_total": ("stack", "kind"),
    "setpoint_drift_restore_seconds": ("stack",),
    "setpoint_source_failures_total": ("source", "reason"),
    "setpoint_stack_info": ("stack", "revision"),
    "setpoint_stack_condition": ("stack", "type"),
    "setpoint_last_success_timestamp_seconds": ("stack",),
    "setpoint_service_restarts_total": ("service",),
    "setpoint_probe_failures_total": ("service", "probe"),
    "setpoint_build_info": ("version",),
}

# (stack, revision, last success time, {condition type: status}, resource views) per stack.
Snapshot = Callable[
    [], list[tuple[str, str | None, float | None, dict[str, bool], list[dict[str, Any]]]]
]


def version() -> str:
    try:
        return metadata.version("setpoint")
    except metadata.PackageNotFoundError:
        return "unknown"


class _StackCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        resources = GaugeMetricFamily(
            "setpoint_resources",
            "Resources of each stack by kind, sync state and health.",
            labels=list(METRICS["setpoint_resources"]),
        )
        info = GaugeMetricFamily(
            "setpoint_stack_info",
            "The revision in force for each stack (value 1).",
            labels=list(METRICS["setpoint_stack_info"]),
        )
        success = GaugeMetricFamily(
            "setpoint_last_success_timestamp_seconds",
            "Unix time of the stack's last pass that converged.",
            labels=["stack"],
        )
        conditions = GaugeMetricFamily(
            "setpoint_stack_condition",
            "The stack's conditions (Ready, Stalled, ...): 1 true, 0 false.",
            labels=list(METRICS["setpoint_stack_condition"]),
        )
        for stack, revision, ok_at, conds, views in self.snapshot():
            for type_, status in sorted(conds.items()):
                conditions.add_metric([stack, type_], 1 if status else 0)
            counts: dict[tuple[str, str, str], int] = {}
            for v in views:
                key = (v["kind"], v["sync"], v["health"])
                counts[key] = counts.get(key, 0) + 1
            for (kind, sync, health), n in sorted(counts.items()):
                resources.add_metric([stack, kind, sync, health], n)
            info.add_metric([stack, revision or ""], 1)
            if ok_at is not None:
                success.add_metric([stack], ok_at)
        yield resources
        yield info
        yield conditions
        yield success


class Metrics:
    def __init__(self, snapshot: Snapshot) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: nothing here needs them
        self.registry = r = CollectorRegistry()
        self.pass_duration = Histogram(
            "setpoint_pass_duration_seconds",
            "Duration of reconcile passes (full and watch-driven).",
            ["stack"],
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.drift = Counter(
            "setpoint_drift", "Drift found (a managed resource changed outside setpoint).",
            ["stack", "kind"], registry=r,
        )  # fmt: skip
        self.reverts = Counter(
            "setpoint_reverts", "Drift undone.", ["stack", "kind"], registry=r
        )
        self.restore = Histogram(
            "setpoint_drift_restore_seconds",
            "Seconds from a drift event (file watch, process exit) to the restored state.",
            ["stack"],
            buckets=RESTORE_BUCKETS,
            registry=r,
        )
        self.source_failures = Counter(
            "setpoint_source_failures",
            "Source failures: fetch (git), verification (signatures), history (rewritten), "
            "render (a revision refused as invalid).",
            ["source", "reason"],
            registry=r,
        )
        self.restarts = Counter(
            "setpoint_service_restarts", "Services restarted by their supervisor.", ["service"],
            registry=r,
        )  # fmt: skip
        self.probe_failures = Counter(
            "setpoint_probe_failures",
            "Probe failures that changed a service's state (liveness: restarted; readiness: "
            "no longer ready).",
            ["service", "probe"],
            registry=r,
        )
        build = Gauge("setpoint_build_info", "The agent's version (value 1).", ["version"],
                      registry=r)  # fmt: skip
        build.labels(version()).set(1)
        r.register(_StackCollector(snapshot))
        self._refused: set[tuple[str, str, str]] = set()
        self._ready: dict[str, bool] = {}  # service -> ready at the last pass

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_entries(self, entries: list[JournalEntry], source_of: dict[str, str]) -> None:
        failed_sources: set[str] = set()
        for e in entries:
            kind = (e.resource or "").partition("/")[0]
            detail = e.detail if isinstance(e.detail, dict) else {}
            if e.event == "drift":
                self.drift.labels(e.stack, kind).inc()
            elif e.event == "revert":
                self.reverts.labels(e.stack, kind).inc()
                ms = detail.get("restore_ms")
                if isinstance(ms, int | float):
                    self.restore.labels(e.stack).observe(ms / 1000)
                if detail.get("trigger") == "supervisor":
                    self.restarts.labels(_name(e.resource)).inc()
            elif e.event == "failure" and kind == "Service" and "liveness failed" in e.message:
                self.probe_failures.labels(_name(e.resource), "liveness").inc()
            elif e.event == "source.failed":
                # Journaled once per stack of the source: count the source once.
                failed_sources.add(source_of.get(e.stack, e.stack))
        for source in failed_sources:
            self.source_failures.labels(source, "fetch").inc()

    def observe_pass(self, r: PassResult, source: str) -> None:
        self.pass_duration.labels(r.stack).observe(r.duration)
        if r.refused is not None:
            key = (r.stack, r.refused, r.refused_reason)
            if key not in self._refused:
                self._refused.add(key)
                self.source_failures.labels(source, REFUSALS.get(r.refused_reason, "render")).inc()
        for rid, (health, message) in r.health.items():
            ready = health == "Healthy"
            was = self._ready.get(rid)
            self._ready[rid] = ready
            if was and not ready and "probe" in message:
                self.probe_failures.labels(_name(rid), "readiness").inc()


def _name(rid: str | None) -> str:
    """``Service/web`` -> ``web``."""
    return (rid or "").partition("/")[2] or (rid or "")
