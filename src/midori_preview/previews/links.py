"""OpenAPI links between the preview operations (documentation, and the map schemathesis' stateful
tests walk): a preview's `sandboxId`, from whichever answer carries it, feeds every operation on
that preview — its status (by query and by path), events, heartbeat, stop, source update and
export to GitHub (tests/test_openapi.py checks that no operation taking a sandbox id is missed).

Each answer that names one preview links to all of those; the admin sandbox table links its
first row. Targets are named by `operationRef` (a JSON pointer into `paths`), so the links do not
depend on FastAPI's generated operation ids."""

from __future__ import annotations

from typing import Any

PREFIX = "/api/preview/daytona"
# name → (path, method, where the id goes: "query" / "path" parameter, or "body" field)
TARGETS: dict[str, tuple[str, str, str, str]] = {
    "GetStatus": (f"{PREFIX}/status", "get", "query", "sandboxId"),
    "GetPreview": (f"{PREFIX}/{{sandbox_id}}", "get", "path", "sandbox_id"),
    "FollowEvents": (f"{PREFIX}/events", "get", "query", "sandboxId"),
    "Heartbeat": (f"{PREFIX}/heartbeat", "post", "body", "sandboxId"),
    "Stop": (f"{PREFIX}/stop", "post", "body", "sandboxId"),
    "UpdateSource": (f"{PREFIX}/{{sandbox_id}}/source", "put", "path", "sandbox_id"),
    "ExportToGitHub": ("/api/github/repos", "post", "body", "sandboxId"),
}


def operation_ref(path: str, method: str) -> str:
    """`#/paths/<path as a JSON pointer token>/<method>` (RFC 6901: `~` → `~0`, `/` → `~1`)."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def sandbox_links(pointer: str = "/sandboxId") -> dict[str, Any]:
    """The `links` of a response whose JSON body holds a sandbox id at `pointer`."""
    expression = f"$response.body#{pointer}"
    links: dict[str, Any] = {}
    for name, (path, method, where, field) in TARGETS.items():
        link: dict[str, Any] = {
            "operationRef": operation_ref(path, method),
            "description": f"`{field}` of the same preview ({method.upper()} {path}).",
        }
        if where == "body":  # merged into the rest of the body (e.g. the heartbeat's `visible`)
            link["requestBody"] = {field: expression}
        else:
            link["parameters"] = {f"{where}.{field}": expression}
        links[name] = link
    return links


def with_links(response: dict[str, Any], pointer: str = "/sandboxId") -> dict[str, Any]:
    """`response` (an entry of a route's `responses`) with the sandbox links added."""
    return {**response, "links": sandbox_links(pointer)}


# For routes whose documented success is their `response_model`'s (nothing else to say).
LINKED: dict[int | str, dict[str, Any]] = {200: {"links": sandbox_links()}}
