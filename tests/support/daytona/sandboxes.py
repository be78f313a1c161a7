"""The sandbox API: create (with the planned faults), get, list by labels, delete, start, stop,
labels, auto-stop/archive/delete intervals, last activity, and the toolbox proxy URL."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.support.daytona import files, routes
from tests.support.daytona.faults import FaultInjection
from tests.support.daytona.state import (
    ORGANIZATION_ID,
    ApiError,
    Handler,
    Sandbox,
    State,
    iso,
    json_body,
    str_map,
)


class SandboxApi:
    def __init__(self, state: State, faults: FaultInjection) -> None:
        self.state = state
        self.faults = faults

    def handlers(self) -> dict[str, Handler]:
        return {
            routes.CREATE: self.create,
            routes.LIST: self.list,
            routes.GET: self.get,
            routes.DELETE: self.delete,
            routes.START: self.start,
            routes.STOP: self.stop,
            routes.LABELS: self.labels,
            routes.AUTOSTOP: self.intervals,
            routes.AUTOARCHIVE: self.intervals,
            routes.AUTODELETE: self.intervals,
            routes.LAST_ACTIVITY: self.last_activity,
            routes.TOOLBOX_PROXY_URL: self.toolbox_proxy_url,
            routes.SOCKET_IO: self.socket_io,
        }

    def new_sandbox(self, body: dict[str, Any], *, created_at: datetime) -> Sandbox:
        """A sandbox (and its directory) from a create body; not yet registered."""
        assert self.state.root is not None
        sandbox_id = str(uuid.uuid4())
        home = self.state.root / sandbox_id
        intervals = {}
        for key, default in (
            ("autoStopInterval", 15),
            ("autoArchiveInterval", 7 * 24 * 60),
            ("autoDeleteInterval", -1),
        ):
            value = body.get(key, default)
            if value is None:
                value = default
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApiError(400, f"{key} must be an integer")
            intervals[key] = value
        resources = {}
        for key, default in (("cpu", 1), ("memory", 1), ("disk", 3)):
            value = body.get(key) or default
            if not isinstance(value, int):
                raise ApiError(400, f"{key} must be an integer")
            resources[key] = value
        labels, env = str_map(body.get("labels"), "labels"), str_map(body.get("env"), "env")
        home.mkdir()
        files.make_rootfs(home)
        return Sandbox(
            id=sandbox_id,
            name=str(body.get("name") or sandbox_id),
            home=home,
            labels=labels,
            env=env,
            snapshot=body.get("snapshot"),
            target=str(body.get("target") or self.state.target),
            public=bool(body.get("public") or False),
            cpu=resources["cpu"],
            memory=resources["memory"],
            disk=resources["disk"],
            auto_stop_interval=intervals["autoStopInterval"],
            auto_archive_interval=intervals["autoArchiveInterval"],
            auto_delete_interval=intervals["autoDeleteInterval"],
            created_at=created_at,
            updated_at=created_at,
            built_from_image="buildInfo" in body,
        )

    def dto(self, sb: Sandbox, *, list_item: bool = False) -> dict[str, Any]:
        """The sandbox as the API returns it (list items leave out `env` and `kvm`)."""
        self.state.advance(sb)
        dto: dict[str, Any] = {
            "id": sb.id,
            "organizationId": ORGANIZATION_ID,
            "name": sb.name,
            "user": "daytona",
            "env": dict(sb.env),
            "labels": dict(sb.labels),
            "public": sb.public,
            "networkBlockAll": False,
            "kvm": False,
            "target": sb.target,
            "cpu": sb.cpu,
            "gpu": 0,
            "memory": sb.memory,
            "disk": sb.disk,
            "state": sb.state,
            "autoStopInterval": sb.auto_stop_interval,
            "autoArchiveInterval": sb.auto_archive_interval,
            "autoDeleteInterval": sb.auto_delete_interval,
            "createdAt": iso(sb.created_at),
            "updatedAt": iso(sb.updated_at),
            "toolboxProxyUrl": self.state.toolbox_url,
        }
        if sb.snapshot is not None:
            dto["snapshot"] = sb.snapshot
        if sb.error_reason is not None:
            dto["errorReason"] = sb.error_reason
            dto["recoverable"] = False
        if list_item:
            del dto["env"], dto["kvm"]
        return dto

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        if (limited := self.faults.take_create_limit()) is not None:
            raise limited
        sandbox = self.new_sandbox(body, created_at=datetime.now(UTC))
        plan = self.faults.take_create_plan()
        now, delay = time.monotonic(), self.faults.start_delay
        first = "pending_build" if sandbox.built_from_image else "creating"
        middle = "building_snapshot" if sandbox.built_from_image else "pulling_snapshot"
        sandbox.busy_seconds = self.faults.take_busy_seconds()
        sandbox.listed_from = now + self.faults.list_lag
        with self.state.lock:
            self.check_quota(sandbox)
            if plan is not None and plan.kind == "hang":
                sandbox.state = "starting"
                if plan.delay:
                    sandbox.schedule = [(now + plan.delay, "error")]
                    sandbox.error_reason = "the sandbox timed out while starting"
            elif plan is not None and plan.kind == "slow" and plan.busy:
                sandbox.state = "starting"
                sandbox.schedule = [(now + plan.delay, "started")]
            elif plan is not None and plan.kind in ("error", "build_failed"):
                sandbox.state = first
                sandbox.schedule = [(now + delay, plan.kind)]
                sandbox.error_reason = plan.reason
            elif delay > 0:
                sandbox.state = first
                sandbox.schedule = [
                    (now + delay / 3, middle), (now + 2 * delay / 3, "starting"),
                    (now + delay, "started"),
                ]  # fmt: skip
            self.state.sandboxes[sandbox.id] = sandbox
            dto = self.dto(sandbox)
        if sandbox.state in ("error", "build_failed"):
            dto["state"] = first  # as answered: it fails on its way to `started`
            dto.pop("errorReason", None)
            dto.pop("recoverable", None)
        if plan is not None and plan.kind == "slow":
            await self.state.sleep(plan.delay)
        return web.json_response(dto)

    def check_quota(self, new: Sandbox) -> None:
        """Daytona's organization totals (`SandboxService.validateOrganizationQuotas`): 400."""
        quota = self.faults.quota
        live = [sb for sb in self.state.sandboxes.values() if sb.state not in ("stopped",)]
        for name, limit, unit in (("CPU", quota.cpu, ""), ("memory", quota.memory, "GiB"),
                                  ("disk", quota.disk, "GiB")):  # fmt: skip
            if limit is None:
                continue
            used = sum(getattr(sb, name.lower()) for sb in live) + getattr(new, name.lower())
            if used > limit:
                raise ApiError(
                    400,
                    f"Total {name} limit exceeded. Maximum allowed: {limit}{unit}.\n"
                    "To increase concurrency limits, upgrade your organization's Tier.",
                )

    async def list(self, request: web.Request) -> web.StreamResponse:
        wanted: dict[str, str] = {}
        if "labels" in request.query:
            try:
                wanted = str_map(json.loads(request.query["labels"]), "labels")
            except ValueError:
                raise ApiError(400, "labels must be a JSON object") from None
        states = set(request.query.getall("states", []))
        try:
            limit = int(request.query.get("limit", "100"))
            offset = int(request.query.get("cursor") or 0)
        except ValueError:
            raise ApiError(400, "limit and cursor must be integers") from None
        if not 1 <= limit <= 200:
            raise ApiError(400, "limit must be between 1 and 200")
        with self.state.lock:
            matching = [
                sb
                for sb in sorted(self.state.sandboxes.values(), key=lambda s: (s.created_at, s.id))
                if all(sb.labels.get(k) == v for k, v in wanted.items())
            ]
            now = time.monotonic()  # eventually consistent: fresh ones may be missing
            matching = [sb for sb in matching if sb.listed_from <= now]
            for sb in matching:
                self.state.advance(sb)
            matching = [sb for sb in matching if sb.state != "destroyed"]
            if states:
                matching = [sb for sb in matching if sb.state in states]
            page = matching[offset : offset + limit]
            items = [self.dto(sb, list_item=True) for sb in page]
        more = offset + limit < len(matching)
        return web.json_response(
            {"items": items, "nextCursor": str(offset + limit) if more else None}
        )

    async def get(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.find(request)
        with self.state.lock:
            return web.json_response(self.dto(sandbox))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.find(request)
        with self.state.lock:
            if sandbox.busy_seconds and sandbox.busy_until is None:  # the fault starts now
                sandbox.busy_until = time.monotonic() + sandbox.busy_seconds
            if self.state.pending(sandbox):
                raise ApiError(409, "Sandbox state change in progress")
            delay = self.faults.destroy_delay
            if delay > 0:
                self.state.terminate(sandbox)
                sandbox.state = "destroying"
                sandbox.schedule = [(time.monotonic() + delay, "destroyed")]
                return web.json_response(self.dto(sandbox))
            self.state.destroy(sandbox)
        dto = self.dto(sandbox)
        dto["state"] = "destroyed"
        return web.json_response(dto)

    async def start(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.find(request)
        with self.state.lock:
            if sandbox.state != "started":
                sandbox.state, sandbox.error_reason = "started", None
                sandbox.preview_token = secrets.token_hex(16)
                sandbox.updated_at = datetime.now(UTC)
            return web.json_response(self.dto(sandbox))

    async def stop(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.find(request)
        with self.state.lock:
            self.state.stop(sandbox)
            return web.json_response(self.dto(sandbox))

    async def labels(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.find(request)
        labels = str_map((await json_body(request)).get("labels"), "labels")
        with self.state.lock:
            sandbox.labels = labels
        return web.json_response({"labels": labels})

    async def intervals(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.find(request)
        try:
            interval = int(request.match_info["interval"])
        except ValueError:
            raise ApiError(400, "interval must be an integer") from None
        kind = request.path.rsplit("/", 2)[-2]
        with self.state.lock:
            if kind == "autostop":
                sandbox.auto_stop_interval = interval
            elif kind == "autoarchive":
                sandbox.auto_archive_interval = interval
            else:
                sandbox.auto_delete_interval = interval
            return web.json_response(self.dto(sandbox))

    async def last_activity(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.find(request)
        with self.state.lock:
            sandbox.updated_at = datetime.now(UTC)
        return web.Response(status=201)

    async def toolbox_proxy_url(self, request: web.Request) -> web.StreamResponse:
        self.state.find(request)
        return web.json_response({"url": self.state.toolbox_url})

    async def socket_io(self, request: web.Request) -> web.StreamResponse:
        # No event gateway: the SDK falls back to polling sandbox state.
        raise ApiError(404, "socket.io is not emulated")
