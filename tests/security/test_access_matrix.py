"""BOLA/BFLA matrix derived from the app's own route table (its OpenAPI document), so that a new
route cannot be missed: every operation is either about a sandbox (an id in its path, query or
body), admin-only (it documents a 403), or on the short list of the others below with the reason
it is safe. Then, as another user, every sandbox operation on Alice's sandbox answers 404 and
changes nothing; as a plain user every admin operation answers 403 and does nothing; without
credentials every operation that needs a user answers 401."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.quota.helpers import create_running, ledger
from tests.support.clock import ManualClock

# Neither about one sandbox nor admin-only: why each is safe for any caller.
OTHERS = {
    ("GET", "/healthz"): "public: process up",
    ("GET", "/readyz"): "public: dependencies up, booleans only",
    ("GET", "/metrics"): "public: counters without user ids or secrets",
    ("POST", "/api/preview/daytona"): "user: creates the caller's own sandbox",
    ("GET", "/api/preview/usage"): "user: the caller's own usage",
    ("POST", "/api/integrations/github"): "GitHub: HMAC-signed deliveries only",
    ("GET", "/r/{link}"): "signed review link: the link is the credential",
}
PUBLIC = {op for op, why in OTHERS.items() if not why.startswith("user")}


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]


def body_schema(spec: dict[str, Any], op: dict[str, Any]) -> dict[str, Any] | None:
    schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if schema and "$ref" in schema:
        return dict(spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    return schema


def is_about_a_sandbox(spec: dict[str, Any], op: dict[str, Any]) -> bool:
    names = {p["name"] for p in op.get("parameters", []) if p["in"] in ("path", "query")}
    body = body_schema(spec, op) or {}
    return bool(names & {"sandbox_id", "sandboxId"}) or "sandboxId" in body.get("properties", {})


def is_admin(op: dict[str, Any]) -> bool:
    return "403" in op["responses"]


def sample(schema: dict[str, Any]) -> Any:
    """A plausible value for a required property (the first enum value, examples first)."""
    if "anyOf" in schema:
        return sample(schema["anyOf"][0])
    if "enum" in schema:
        return schema["enum"][0]
    return {"string": "site", "boolean": True, "integer": 1, "object": {}, "array": []}.get(
        schema.get("type", "string"), "x"
    )


def request_for(
    spec: dict[str, Any], method: str, path: str, op: dict[str, Any], sandbox_id: str
) -> tuple[str, dict[str, str], Any]:
    params: dict[str, str] = {}
    for p in op.get("parameters", []):
        value = sandbox_id if p["name"] in ("sandbox_id", "sandboxId") else None
        if p["in"] == "path":
            path = path.replace("{" + p["name"] + "}", value or "x")
        elif p["in"] == "query" and (value or p.get("required")):
            params[p["name"]] = value or str(p["schema"].get("examples", [None])[0] or "2026-01-01")
    body = None
    schema = body_schema(spec, op)
    if method in ("POST", "PUT", "PATCH") and schema is not None:
        props = schema.get("properties", {})
        body = dict(schema.get("examples", [{}])[0])  # a valid body, where the schema shows one
        body |= {k: sample(props[k]) for k in schema.get("required", []) if k not in body}
        if "sandboxId" in props:
            body["sandboxId"] = sandbox_id
    return path, params, body


async def call(
    client: httpx.AsyncClient, method: str, path: str, params: Any, body: Any, headers: Any
) -> httpx.Response:
    return await client.request(method, path, params=params, json=body, headers=headers)


async def snapshot(running: Running, sandbox_id: str) -> dict[str, Any]:
    row = await running.services.db.sandboxes.get(sandbox_id)
    assert row is not None
    columns = ("status", "reason", "last_heartbeat_at", "charged_until", "visible", "updated_at")
    return {
        "row": {c: getattr(row, c) for c in columns},
        "ledger": await ledger(running),
        "slots": sorted(await running.services.quota.slot_holders("alice")),
        "reaper": await running.services.reaper.last_run(),
        "paused": await running.services.reaper.is_paused(),
    }


async def test_every_route_is_classified_and_guarded(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, pg_backend), clock=clock) as running:
        spec = running.app.openapi()
        ops = operations(spec)
        sandbox_ops = [(m, p, op) for m, p, op in ops if is_about_a_sandbox(spec, op)]
        admin_ops = [(m, p, op) for m, p, op in ops if is_admin(op)]
        unclassified = [
            (m, p)
            for m, p, op in ops
            if (m, p) not in OTHERS and not is_about_a_sandbox(spec, op) and not is_admin(op)
        ]
        assert unclassified == [], "classify each new route here (sandbox, admin or OTHERS)"
        assert not {(m, p) for m, p, _ in sandbox_ops} & {(m, p) for m, p, _ in admin_ops}
        assert len(sandbox_ops) >= 6 and len(admin_ops) >= 5  # the table was read

        sandbox_id = await create_running(running)
        before = await snapshot(running, sandbox_id)
        bob = user_headers("bob")
        answers: dict[str, tuple[int, str]] = {}
        for method, path, op in sandbox_ops:
            url, params, body = request_for(spec, method, path, op, sandbox_id)
            res = await call(running.client, method, url, params, body, bob)
            code = res.json().get("error", {}).get("code", "") if res.content else ""
            answers[f"{method} {path}"] = (res.status_code, code)
            assert sandbox_id not in res.text or code == "sandbox_not_found", res.text
        assert answers == dict.fromkeys(answers, (404, "sandbox_not_found")), answers

        for method, path, op in admin_ops:
            variants = [None]
            schema = body_schema(spec, op) or {}
            action = schema.get("properties", {}).get("action", {})
            if "enum" in action:  # every action of the admin's POST
                variants = [{"action": a} for a in action["enum"]]
            for variant in variants:
                url, params, body = request_for(spec, method, path, op, sandbox_id)
                res = await call(running.client, method, url, params, variant or body, bob)
                assert (res.status_code, res.json()["error"]["code"]) == (403, "forbidden"), (
                    method, path, variant, res.text,
                )  # fmt: skip

        for method, path, op in ops:  # no credentials at all
            if (method, path) in PUBLIC:
                continue
            url, params, body = request_for(spec, method, path, op, sandbox_id)
            res = await call(running.client, method, url, params, body, {})
            assert res.status_code == 401, (method, path, res.status_code, res.text)

        assert await snapshot(running, sandbox_id) == before  # nothing changed anywhere
        assert (await running.client.get(
            "/api/preview/daytona/status", params={"sandboxId": sandbox_id},
            headers=user_headers("alice"),
        )).json()["status"] == "running"  # fmt: skip
