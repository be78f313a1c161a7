"""Local sandboxes have a network of their own (bubblewrap + pasta): a start command inside one
cannot connect to the host's Postgres or Redis on 127.0.0.1, nor to the service's own port, nor to
another sandbox's server, while its own server stays reachable through the preview gateway.

The same probe with LOCAL_SANDBOX_NETWORK=host (the host's network) connects to every one of them:
what the isolated run reports is the namespace's doing, not a probe that never connects. These
tests only ever aim at the host's loopback addresses."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import REDIS_URL, Backend, make_settings, running_app
from tests.previews.helpers import (
    cafe_prompt,
    create,
    create_running,
    fetch_preview,
    files_body,
    host_port,
    port_answers,
    served_app,
)

needs_netns = pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("pasta") is None,
    reason="bubblewrap and pasta (passt) are needed for sandbox networks",
)

# Connects to each name=port on 127.0.0.1 and ::1 and prints name@address:open|closed.
PROBE = """\
import socket, sys
for arg in sys.argv[1:]:
    name, port = arg.split("=")
    for host in ("127.0.0.1", "::1"):
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                state = "open"
        except OSError:
            state = "closed"
        print(f"{name}@{host}:{state}")
"""
SITE = {"index.html": "<h1>box</h1>"}
SERVE = 'exec python3 -m http.server "$PORT" --bind 127.0.0.1'


def pg_port(backend: Backend) -> int:
    assert backend.database_url is not None
    return urlsplit(backend.database_url.replace("+asyncpg", "")).port or 5432


def redis_port() -> int:
    return urlsplit(REDIS_URL).port or 6379


@needs_netns
@pytest.mark.parametrize("network", ["isolated", "host"])
async def test_a_start_command_reaches_nothing_on_the_host(
    tmp_path: Path, pg_backend: Backend, network: str
) -> None:
    settings = make_settings(tmp_path, pg_backend, local_sandbox_network=network)
    async with served_app(settings) as app:
        service_port = urlsplit(str(app.client.base_url)).port
        other = await create_running(app, files_body("other", SITE))
        other_port = host_port(app, other["sandboxId"])
        targets = {
            "postgres": pg_port(pg_backend),
            "redis": redis_port(),
            "service": service_port,
            "other-sandbox": other_port,
        }
        for name, port in targets.items():  # each really listens on the host's loopback
            assert port is not None and port_answers(port), name
        args = " ".join(f"{name}={port}" for name, port in targets.items())
        body = files_body(
            "probe",
            {**SITE, "probe.py": PROBE},
            start=f"python3 probe.py {args} > net.txt; {SERVE}",
        )
        status = await create_running(app, body, user="bob")
        report = (await fetch_preview(app, status, "/net.txt")).text.split()
        readyz = (await app.client.get("/readyz")).json()
    reached = {line.split("@")[0] for line in report if line.endswith(":open")}
    assert len(report) == 2 * len(targets), report
    if network == "isolated":
        assert readyz["sandboxIsolation"]["network"] is True, readyz
        assert reached == set(), report
    else:  # the control: the same probe on the host's network reaches every one of them
        assert readyz["sandboxIsolation"]["network"] is False, readyz
        assert reached == set(targets), report


async def test_without_a_network_of_their_own_user_commands_are_refused(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        Backend("embedded", None, None),
        local_sandbox_network="host",  # as on a host that cannot create network namespaces
        local_sandbox_unisolated_commands="refuse",
    )
    async with running_app(settings) as app:
        readyz = (await app.client.get("/readyz")).json()
        assert readyz["sandboxIsolation"]["network"] is False
        assert readyz["sandboxIsolation"]["problem"] == "LOCAL_SANDBOX_NETWORK=host"
        assert readyz["sandboxIsolation"]["unisolatedCommands"] == "refuse"

        res = await create(app, files_body("own", SITE, build="echo hi > hi.txt"))
        assert res.status_code == 202, res.text
        status = await app.wait_until(res.json()["sandboxId"], "error")
        assert status["error"]["step"] == "build"
        assert status["error"]["code"] == "isolation_unavailable", status["error"]
        assert "network" in status["error"]["message"]

        # The service's own commands still run: a template, static files.
        site = await create_running(
            app, {"projectId": "cafe", "promptJson": cafe_prompt()}, user="bob"
        )
        assert (await fetch_preview(app, site)).status_code == 200
