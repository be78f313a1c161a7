"""The life of a preview after POST: stop leaves nothing behind, a failed build ends in `error`
and frees everything, heartbeats answer by state, the event stream tells the whole story (replayed
and live), and Idempotency-Key holds under concurrent retries."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from sqlalchemy import text

from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.previews.helpers import (
    API,
    SSE,
    create,
    create_running,
    fetch_preview,
    files_body,
    group_alive,
    host_port,
    pids_with_cwd,
    pids_with_cwd_inode,
    pids_with_marker,
    port_answers,
    read_events,
    read_sse,
    served_app,
    settles,
    statuses,
    stop,
    workspace_of,
)
from tests.support.waiting import builds_settle

SITE = {"index.html": "<h1>hello</h1>"}


async def heartbeat(running: Running, sandbox_id: str, user: str = "alice") -> dict[str, object]:
    res = await running.client.post(
        f"{API}/heartbeat", json={"sandboxId": sandbox_id}, headers=user_headers(user)
    )
    return {"http": res.status_code, **res.json()}


# --- stop -------------------------------------------------------------------------------------


async def test_stop_removes_processes_and_workspace(service_app: Running) -> None:
    marker = f"midori-bg-{secrets.token_hex(4)}"
    # A background grandchild that outlives its shell: stop must take the whole tree.
    start = (
        f"(sh -c 'sleep 300; true' {marker} &); exec python3 -m http.server $PORT --bind 127.0.0.1"
    )
    status = await create_running(service_app, files_body("stoppable", SITE, start=start))
    sandbox_id = status["sandboxId"]
    root = workspace_of(service_app, sandbox_id)
    work = root / "work"
    port = host_port(service_app, sandbox_id)
    pgids = [int(p) for p in (root / "pgids").read_text().split()]
    st = work.stat()
    # Before: the checks below can see what they look for.
    assert len(pids_with_cwd(work)) >= 2  # the server and the background sleeper
    assert pids_with_marker(marker)
    assert port_answers(port)
    assert any(group_alive(g) for g in pgids)

    res = await stop(service_app, sandbox_id)
    assert res.status_code == 200, res.text
    body = res.json()
    assert (body["status"], body["reason"]) == ("stopped", "user")
    assert body["previewUrl"] is None and body["previewToken"] is None

    assert not root.exists()
    # Gone when `stop` answers: no grace period.
    assert pids_with_cwd_inode(st.st_dev, st.st_ino) == []
    assert pids_with_marker(marker) == []
    assert not any(group_alive(g) for g in pgids)
    assert not port_answers(port)

    again = await stop(service_app, sandbox_id)  # idempotent
    assert again.status_code == 200
    assert (again.json()["status"], again.json()["reason"]) == ("stopped", "user")


async def test_stop_during_build_cancels_it(service_app: Running) -> None:
    marker = f"midori-build-{secrets.token_hex(4)}"
    body = files_body("slow", SITE, build=f"sh -c 'sleep 300; true' {marker}")
    res = await create(service_app, body)
    sandbox_id = res.json()["sandboxId"]
    async with asyncio.timeout(20):
        while not pids_with_marker(marker):
            await asyncio.sleep(0.05)

    stopped = await stop(service_app, sandbox_id)
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "stopped"
    assert pids_with_marker(marker) == []
    assert not workspace_of(service_app, sandbox_id).exists()
    assert service_app.service.builds_in_flight() == []


# --- failure ----------------------------------------------------------------------------------


async def test_failing_build_ends_in_error_and_frees_everything(service_app: Running) -> None:
    marker = f"midori-fail-{secrets.token_hex(4)}"
    body = files_body(
        "broken", SITE, build=f"(sh -c 'sleep 300; true' {marker} &); echo boom; exit 3"
    )
    res = await create(service_app, body)
    assert res.status_code == 202
    sandbox_id = res.json()["sandboxId"]

    # The build's background grandchild keeps its output open: the step must still end at its
    # exit, not when the grandchild does (or at BUILD_STEP_TIMEOUT).
    await builds_settle(service_app.service, within=30)
    status = await service_app.wait_until(sandbox_id, "error")
    assert status["reason"] == "error:build"
    assert status["error"]["step"] == "build"
    assert status["error"]["exitCode"] == 3
    assert "boom" in status["logsTail"]
    assert status["previewUrl"] is None
    assert not workspace_of(service_app, sandbox_id).exists()
    assert await settles(lambda: pids_with_marker(marker) == [])

    hb = await heartbeat(service_app, sandbox_id)
    assert hb["http"] == 410
    assert hb["error"] == {  # type: ignore[comparison-overlap]
        "code": "sandbox_stopped",
        "message": "This preview is no longer running.",
        "sandboxId": sandbox_id,
        "reason": "error:build",
    }

    # The slot is free again: with one preview per user, the next one starts and runs.
    following = await create_running(service_app, files_body("fixed", SITE))
    assert following["sandboxId"] != sandbox_id


async def test_failing_install_and_missing_server(tmp_path: Path, backend: Backend) -> None:
    # A server that exits fails the start at once, long before start_timeout.
    settings = make_settings(tmp_path, backend, start_timeout_seconds=600)
    async with running_app(settings) as app:
        res = await create(app, files_body("no-install", SITE, install="exit 7"))
        status = await app.wait_until(res.json()["sandboxId"], "error")
        assert (status["error"]["step"], status["error"]["exitCode"]) == ("install", 7)

        res = await create(app, files_body("no-server", SITE, start="echo not a server"))
        assert res.status_code == 202, res.text  # the failed one holds no slot
        async with asyncio.timeout(30):
            status = await app.wait_until(res.json()["sandboxId"], "error")
        assert status["error"]["step"] == "start"
        assert (status["error"]["code"], status["error"]["exitCode"]) == ("server_exited", 0)
        assert "not a server" in status["logsTail"]
        assert not workspace_of(app, status["sandboxId"]).exists()


# --- heartbeat --------------------------------------------------------------------------------


async def test_heartbeat_running_then_stopped(service_app: Running) -> None:
    status = await create_running(service_app, files_body("hb", SITE))
    sandbox_id = status["sandboxId"]

    hb = await heartbeat(service_app, sandbox_id)
    assert hb["http"] == 200
    assert hb["sandboxId"] == sandbox_id
    assert hb["nextHeartbeatSeconds"] == service_app.settings.heartbeat_interval_seconds
    assert hb["usage"] is not None

    await stop(service_app, sandbox_id)
    hb = await heartbeat(service_app, sandbox_id)
    assert hb["http"] == 410
    assert hb["error"]["code"] == "sandbox_stopped"  # type: ignore[index]
    assert hb["error"]["reason"] == "user"  # type: ignore[index]


# --- events -----------------------------------------------------------------------------------


async def test_events_replay_whole_story_and_end_after_stop(service_app: Running) -> None:
    body = files_body("evented", SITE, install="echo installing-deps", build="echo building-site")
    status = await create_running(service_app, body)
    sandbox_id = status["sandboxId"]
    await stop(service_app, sandbox_id)

    events = await read_events(service_app, sandbox_id)  # returns: the stream ended
    assert statuses(events) == [
        "requested", "creating", "uploading", "installing", "building", "starting", "running",
        "stopping", "stopped",
    ]  # fmt: skip
    logs = [(e.data["step"], e.data["line"]) for e in events if e.event == "log"]
    assert ("install", "installing-deps") in logs
    assert ("build", "building-site") in logs
    # Each log line sits between its step's status and the next one.
    kinds = [e.data["line"] if e.event == "log" else e.data["status"] for e in events]
    assert kinds.index("installing") < kinds.index("installing-deps") < kinds.index("building")
    assert kinds.index("building") < kinds.index("building-site") < kinds.index("starting")
    assert events[-1].data == {"status": "stopped", "reason": "user"}

    # Resuming after the `running` event replays only what came after it.
    running_id = next(e.id for e in events if e.event == "status" and e.data["status"] == "running")
    assert running_id
    rest = await read_events(service_app, sandbox_id, **{"Last-Event-ID": running_id})
    assert statuses(rest) == ["stopping", "stopped"]

    # Resuming after the last event of an ended stream closes at once with the final status
    # (an EventSource that reconnects must not hang, nor loop).
    async with asyncio.timeout(3):
        tail = await read_events(service_app, sandbox_id, **{"Last-Event-ID": events[-1].id})
    assert [e.data for e in tail] == [{"status": "stopped", "reason": "user"}]
    assert tail[0].id == events[-1].id


async def test_events_of_a_failed_build_end_with_error(service_app: Running) -> None:
    res = await create(service_app, files_body("fails", SITE, build="echo boom; exit 3"))
    sandbox_id = res.json()["sandboxId"]
    await service_app.wait_until(sandbox_id, "error")

    events = await read_events(service_app, sandbox_id)
    assert statuses(events)[-1] == "error"
    assert events[-1].data["step"] == "build"
    assert events[-1].data["exitCode"] == 3
    assert any(e.event == "log" and e.data["line"] == "boom" for e in events)


async def test_events_are_delivered_live(tmp_path: Path, backend: Backend) -> None:
    """Over a real HTTP server: events arrive while the build is still running, and the stream
    ends by itself once the sandbox is stopped."""
    gate = "go"
    build = f"echo waiting-for-gate; while [ ! -f {gate} ]; do sleep 0.05; done; echo gate-open"
    async with served_app(make_settings(tmp_path, backend)) as app:
        res = await create(app, files_body("live", SITE, build=build))
        assert res.status_code == 202, res.text
        sandbox_id = res.json()["sandboxId"]
        seen: list[SSE] = []
        async with (
            asyncio.timeout(30),
            app.client.stream(
                "GET", f"{API}/events", params={"sandboxId": sandbox_id}, headers=user_headers()
            ) as stream,
        ):
            async for event in read_sse(stream.aiter_lines()):
                seen.append(event)
                if event.event == "log" and event.data["line"] == "waiting-for-gate":
                    # Delivered while the build still blocks on the gate.
                    now = await app.client.get(f"{API}/{sandbox_id}", headers=user_headers())
                    assert now.json()["status"] == "building"
                    (workspace_of(app, sandbox_id) / "work" / gate).touch()
                if event.event == "status" and event.data["status"] == "running":
                    page = await fetch_preview(app, (await app.wait_until(sandbox_id)))
                    assert page.status_code == 200
                    assert (await stop(app, sandbox_id)).status_code == 200
        # The loop ended because the server closed the stream after `stopped`.
        assert statuses(seen) == [
            "requested", "creating", "uploading", "building", "starting", "running",
            "stopping", "stopped",
        ]  # fmt: skip
        assert any(e.event == "log" and e.data["line"] == "gate-open" for e in seen)


# --- idempotency ------------------------------------------------------------------------------


async def sandbox_rows(running: Running, user: str) -> int:
    async with running.services.engine.connect() as conn:
        result = await conn.execute(
            text("SELECT count(*) FROM sandboxes WHERE user_id = :u"), {"u": user}
        )
        return int(result.scalar_one())


async def test_idempotent_create_under_concurrent_retries(service_app: Running) -> None:
    body = files_body("idem", SITE)
    key = f"key-{secrets.token_hex(8)}"
    answers = await asyncio.gather(*(create(service_app, body, key=key) for _ in range(20)))

    assert {r.status_code for r in answers} <= {200, 202}, [r.text for r in answers]
    ids = {r.json()["sandboxId"] for r in answers}
    assert len(ids) == 1
    assert await sandbox_rows(service_app, "alice") == 1
    (sandbox_id,) = ids
    await service_app.wait_until(sandbox_id, "running")

    # A retry after the build still names the same sandbox.
    retry = await create(service_app, body, key=key)
    assert retry.json()["sandboxId"] == sandbox_id

    other = await create(service_app, files_body("idem", {"index.html": "changed"}), key=key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert await sandbox_rows(service_app, "alice") == 1

    # Keys belong to their user: bob's same key is a new request of his own.
    bobs = await create(service_app, body, key=key, user="bob")
    assert bobs.status_code == 202
    assert bobs.json()["sandboxId"] != sandbox_id
    await service_app.wait_until(bobs.json()["sandboxId"], "running", user="bob")


async def test_local_sandboxes_of_an_earlier_process_are_closed_at_start(
    tmp_path: Path, backend: Backend
) -> None:
    settings = make_settings(tmp_path, backend)
    async with running_app(settings) as first:
        status = await create_running(first, files_body("site", SITE))
    # The process is gone (its sandboxes died with it); the next one starts on the same data.
    async with running_app(settings) as second:
        row = await second.wait_until(status["sandboxId"], "stopped")
        assert row["reason"] == "lost"
        again = await create(second, files_body("site", SITE))
        assert again.status_code == 202, again.text  # the slot was freed
        await second.wait_until(again.json()["sandboxId"], "running")
