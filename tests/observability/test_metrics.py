"""`/metrics` in Prometheus text: what a preview's life records (creates, time to ready, provider
calls, charged seconds, stops by reason, quota refusals, request latency by route template,
sandboxes by state), the admin's headline figures from the same samples, and several uvicorn
workers adding up in PROMETHEUS_MULTIPROC_DIR mode."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Backend, make_settings, running_app, user_headers
from tests.quota.helpers import body, create, create_running, heartbeat, stop
from tests.support.clock import ManualClock
from tests.support.servers import free_port
from tests.support.waiting import eventually

NS = "midori_preview"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            found[key] = found.get(key, 0.0) + s.value
    return found


def total(text: str, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples(text).items()
        if n == name and all((k, val) in ls for k, val in labels.items())
    )


async def test_a_previews_life_is_in_the_metrics(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, pg_backend)
    async with running_app(settings, clock=clock) as running:
        before = (await running.client.get("/metrics")).text
        sandbox_id = await create_running(running, "site")
        refused = await create(running, "other", content="<p>2</p>")
        assert refused.status_code == 409, refused.text
        clock.advance(30)
        assert (await heartbeat(running, sandbox_id)).status_code == 200
        assert (await stop(running, sandbox_id)).status_code == 200
        await running.service.flush_heartbeats()  # charges are counted as they reach the ledger
        res = await running.client.get("/metrics")
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/plain")
        after = res.text

        def delta(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        assert delta(f"{NS}_sandbox_creates_total", kind="user", source="files") == 1
        assert delta(f"{NS}_sandbox_time_to_ready_seconds_count", provider="local") == 1
        assert delta(f"{NS}_provider_call_duration_seconds_count", operation="create") == 1
        assert delta(f"{NS}_provider_call_duration_seconds_count", operation="delete") >= 1
        assert delta(f"{NS}_quota_rejections_total", code="concurrency_limit") == 1
        assert delta(f"{NS}_usage_charged_seconds_total") == 30
        assert delta(f"{NS}_sandbox_stops_total", reason="user") == 1
        route = "/api/preview/daytona/status"
        assert delta(f"{NS}_http_request_duration_seconds_count", route=route, status="200") >= 1
        # route templates, never raw paths (no sandbox id in any label)
        assert sandbox_id not in after
        assert total(after, f"{NS}_sandboxes", state="stopped") == 1
        assert total(after, f"{NS}_sandboxes", state="running") == 0

        # the admin's figures: the same samples, admins only
        user = await running.client.get("/api/preview/admin/metrics", headers=user_headers("eve"))
        assert user.status_code == 403
        figures = (
            await running.client.get(
                "/api/preview/admin/metrics", headers=user_headers("root", admin=True)
            )
        ).json()
        assert figures["sandboxesByState"] == {"stopped": 1}
        assert figures["creates"] == total(after, f"{NS}_sandbox_creates_total")
        assert figures["stopsByReason"]["user"] == total(
            after, f"{NS}_sandbox_stops_total", reason="user"
        )
        assert figures["usageChargedSeconds"] == total(after, f"{NS}_usage_charged_seconds_total")
        count = f"{NS}_http_request_duration_seconds_count"
        assert figures["requests"] >= total(after, count)  # it is read later: more, not fewer


async def test_provider_errors_are_counted_by_kind(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    """A build whose start command exits: the provider's probe fails, counted by our code."""
    settings = make_settings(tmp_path, pg_backend)
    async with running_app(settings, clock=clock) as running:
        before = (await running.client.get("/metrics")).text
        res = await running.client.post(
            "/api/preview/daytona",
            json=body("bad", start="exit 3", port=3000),
            headers=user_headers("alice"),
        )
        assert res.status_code == 202, res.text
        await running.wait_until(res.json()["sandboxId"], "error")
        after = (await running.client.get("/metrics")).text
    name = f"{NS}_sandbox_stops_total"
    assert total(after, name) - total(before, name) == 1
    errors = f"{NS}_provider_errors_total"
    assert (
        total(after, errors, kind="server_exited") - total(before, errors, kind="server_exited")
        == 1
    )


async def test_workers_add_up_in_multiprocess_mode(tmp_path: Path, pg_backend: Backend) -> None:
    """Two uvicorn workers, one PROMETHEUS_MULTIPROC_DIR: any worker's `/metrics` counts every
    worker's requests."""
    assert pg_backend.database_url is not None
    prom = tmp_path / "prom"
    prom.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "DATABASE_URL": pg_backend.database_url,
        "REDIS_URL": pg_backend.redis_url or "",
        "DATA_DIR": str(tmp_path / "data"),
        "PREVIEW_DEPLOYMENT": f"mw{port}",
        "REAPER_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "midori_preview.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"

        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"{base}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(up, within=90, what="two workers serving", interval=0.2)
        n = 0

        def both_answered() -> bool:  # each worker writes its own file once it counts a request
            return len([p for p in prom.iterdir() if p.name.startswith("histogram_")]) == 2

        while not both_answered() or n < 20:
            assert n < 2000, "one worker answered every request"
            async with httpx.AsyncClient() as c:  # a new connection each: spread over workers
                assert (await c.get(f"{base}/readyz")).status_code == 200
            n += 1

        async def all_counted() -> bool:
            async with httpx.AsyncClient() as c:
                text = (await c.get(f"{base}/metrics")).text
            name = f"{NS}_http_request_duration_seconds_count"
            return total(text, name, route="/readyz") == n

        await eventually(all_counted, within=10, what=f"{n} /readyz requests counted")
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


def test_the_grafana_dashboard_shows_every_metric_and_only_ours() -> None:
    """deploy/grafana/midori-preview.json: valid JSON, each of its queries on a metric the service
    defines, and each metric the service defines on some panel."""
    import json
    import re

    from prometheus_client import REGISTRY

    path = Path(__file__).resolve().parents[2] / "deploy/grafana/midori-preview.json"
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for expr in exprs
        for name in re.findall(rf"{NS}_[a-z_]+", expr)
    }
    defined = {f.name for f in REGISTRY.collect() if f.name.startswith(NS)} | {f"{NS}_sandboxes"}
    assert used == defined, (used - defined, defined - used)
