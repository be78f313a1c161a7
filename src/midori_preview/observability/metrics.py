"""Every Prometheus metric of the service, in one place, and the one-line recorders the call
sites use. Multi-worker safe: with PROMETHEUS_MULTIPROC_DIR set (before the process starts),
prometheus-client keeps each worker's values in that directory and `/metrics` adds them up.

Only counters and histograms live in processes (both add up across workers); the sandboxes per
state are read from the database when scraped, so every worker answers the same figure."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

from midori_preview.previews.states import TERMINAL

NS = "midori_preview"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
READY_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)

HTTP_REQUESTS = Histogram(
    f"{NS}_http_request_duration_seconds",
    "API requests by route template (never a raw path), method and status code.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
CREATES = Counter(
    f"{NS}_sandbox_creates_total",
    "Sandboxes admitted, by kind (user, pr) and source (files, git, promptJson).",
    ["kind", "source"],
)
STOPS = Counter(
    f"{NS}_sandbox_stops_total",
    "Sandboxes that ended (stopped or error), by reason (user, idle, quota, error:<step> …).",
    ["reason"],
)
TIME_TO_READY = Histogram(
    f"{NS}_sandbox_time_to_ready_seconds",
    "From admission to running, by template and provider.",
    ["template", "provider"],
    buckets=READY_BUCKETS,
)
REAPER_PASS = Histogram(
    f"{NS}_reaper_pass_duration_seconds",
    "One reaper pass (or sync), by kind.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
REAPER_ACTIONS = Counter(
    f"{NS}_reaper_actions_total",
    "What reaper passes and syncs did (idle, expired, leaseLost, orphans …), by kind.",
    ["kind", "action"],
)
PROVIDER_CALLS = Histogram(
    f"{NS}_provider_call_duration_seconds",
    "Calls to the sandbox provider, by provider and operation.",
    ["provider", "operation"],
    buckets=LATENCY_BUCKETS,
)
PROVIDER_ERRORS = Counter(
    f"{NS}_provider_errors_total",
    "Failed provider calls, by provider, operation and kind (our error code).",
    ["provider", "operation", "kind"],
)
QUOTA_REJECTIONS = Counter(
    f"{NS}_quota_rejections_total",
    "Requests refused by a quota, by code (concurrency_limit, rate_limited …).",
    ["code"],
)
USAGE_CHARGED = Counter(
    f"{NS}_usage_charged_seconds_total", "Preview seconds charged to users' daily ledgers."
)
GITHUB_DELIVERIES = Counter(
    f"{NS}_github_deliveries_total",
    "GitHub webhook deliveries, by event and outcome (accepted, duplicate, ignored).",
    ["event", "outcome"],
)

QUOTA_CODES = frozenset(
    {"concurrency_limit", "rate_limited", "daily_quota_exhausted", "quota_unavailable"}
)


# --- recorders (one line at each call site) ------------------------------------------------


def record_created(kind: str, source: str) -> None:
    CREATES.labels(kind, source).inc()


def record_moved(
    target: str,
    fields: Mapping[str, Any],
    announce: Mapping[str, Any] | None,
    entries: Sequence[Sequence[Any]],
) -> None:
    """A row changed state (called once per successful move): stops by reason, and the seconds
    a stop charged."""
    if target in TERMINAL:
        reason = fields.get("reason") or (announce or {}).get("reason") or "unknown"
        STOPS.labels(str(reason)).inc()
    record_charged(sum(int(e[3]) for e in entries))


def record_charged(seconds: int) -> None:
    if seconds > 0:
        USAGE_CHARGED.inc(seconds)


def record_ready(template: str | None, provider: str, seconds: float) -> None:
    TIME_TO_READY.labels(template or "none", provider).observe(max(seconds, 0.0))


def record_reaper(kind: str, counts: Mapping[str, Any]) -> None:
    """A pass's (or a sync's) counts, as the reaper logs them (`durationMs` included)."""
    if "skipped" in counts:
        return
    for action, n in counts.items():
        if action != "durationMs" and isinstance(n, int) and not isinstance(n, bool) and n > 0:
            REAPER_ACTIONS.labels(kind, action).inc(n)
    duration = counts.get("durationMs")
    if isinstance(duration, int | float):
        REAPER_PASS.labels(kind).observe(duration / 1000)


def record_error(code: str) -> None:
    """An error answered to a caller: the quota's refusals are counted by code."""
    if code in QUOTA_CODES:
        QUOTA_REJECTIONS.labels(code).inc()


def record_delivery(event: str | None, outcome: str) -> None:
    GITHUB_DELIVERIES.labels(event or "unknown", outcome).inc()


# --- exposition ----------------------------------------------------------------------------


class _Collected(Collector):
    """The process's (or every worker's) metrics plus the sandboxes per state read at scrape."""

    def __init__(self, source: Iterable[Any], by_state: Mapping[str, int]) -> None:
        self.source = source
        self.by_state = by_state

    def collect(self) -> Iterator[Any]:
        yield from self.source
        gauge = GaugeMetricFamily(
            f"{NS}_sandboxes", "Sandboxes in the active view, by state.", labels=["state"]
        )
        for state, n in sorted(self.by_state.items()):
            gauge.add_metric([state], n)
        yield gauge


def exposition(by_state: Mapping[str, int]) -> bytes:
    """The Prometheus text for a scrape: every worker's figures when PROMETHEUS_MULTIPROC_DIR is
    set, this process's otherwise."""
    registry = CollectorRegistry()
    registry.register(_Collected(_families(), by_state))
    return generate_latest(registry)


def headline(by_state: Mapping[str, int]) -> dict[str, Any]:
    """The figures the admin page shows, from the same samples `/metrics` serves."""
    totals: dict[str, dict[str, float]] = {}
    for family in _families():
        for sample in family.samples:
            _fold(totals, sample)
    ready = totals.get("ready", {})
    requests = totals.get("requests", {})
    return {
        "sandboxesByState": dict(sorted(by_state.items())),
        "creates": int(sum(totals.get("creates", {}).values())),
        "stopsByReason": {k: int(v) for k, v in sorted(totals.get("stops", {}).items())},
        "quotaRejections": {k: int(v) for k, v in sorted(totals.get("quota", {}).items())},
        "usageChargedSeconds": int(sum(totals.get("charged", {}).values())),
        "githubDeliveries": {k: int(v) for k, v in sorted(totals.get("github", {}).items())},
        "providerErrors": {k: int(v) for k, v in sorted(totals.get("providerErrors", {}).items())},
        "requests": int(requests.get("count", 0)),
        "serverErrors": int(requests.get("5xx", 0)),
        "meanRequestSeconds": _mean(requests),
        "meanTimeToReadySeconds": _mean(ready),
        "readyCount": int(ready.get("count", 0)),
    }


def _families() -> Iterable[Any]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        workers = CollectorRegistry()
        MultiProcessCollector(workers)  # type: ignore[no-untyped-call]
        return list(workers.collect())
    return list(REGISTRY.collect())


def _fold(totals: dict[str, dict[str, float]], sample: Any) -> None:
    name, labels, value = sample.name, sample.labels, float(sample.value)

    def add(group: str, key: str) -> None:
        bucket = totals.setdefault(group, {})
        bucket[key] = bucket.get(key, 0.0) + value

    if name == f"{NS}_sandbox_creates_total":
        add("creates", labels["source"])
    elif name == f"{NS}_sandbox_stops_total":
        add("stops", labels["reason"])
    elif name == f"{NS}_quota_rejections_total":
        add("quota", labels["code"])
    elif name == f"{NS}_usage_charged_seconds_total":
        add("charged", "all")
    elif name == f"{NS}_github_deliveries_total":
        add("github", labels["outcome"])
    elif name == f"{NS}_provider_errors_total":
        add("providerErrors", labels["kind"])
    elif name == f"{NS}_http_request_duration_seconds_count":
        add("requests", "count")
        if labels["status"].startswith("5") and labels["route"] != "other":  # API, not previews
            add("requests", "5xx")
    elif name == f"{NS}_http_request_duration_seconds_sum":
        add("requests", "sum")
    elif name == f"{NS}_sandbox_time_to_ready_seconds_count":
        add("ready", "count")
    elif name == f"{NS}_sandbox_time_to_ready_seconds_sum":
        add("ready", "sum")


def _mean(group: Mapping[str, float]) -> float | None:
    count = group.get("count", 0.0)
    return round(group.get("sum", 0.0) / count, 3) if count else None
