"""Bad create payloads are refused with 422 `validation_error` before anything is admitted: no
row, no slot, no workspace, and a message that says what was wrong (naming the bad path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from tests.conftest import Running, user_headers
from tests.previews.helpers import create, files_body

BAD_PATHS = [
    "../x",
    "a/../../x",
    "..",
    "/etc/passwd",
    "C:/Windows/x",
    "a\\b",
    "a\x00b",
    "a\nb",
    "./a",
    "a/./b",
    "a//b",
    "a/",
]


async def assert_nothing_admitted(running: Running) -> None:
    async with running.services.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT count(*) FROM sandboxes"))).scalar_one()
    assert rows == 0
    assert running.service.builds_in_flight() == []
    sandboxes = running.settings.data_dir / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == []


def validation_error(res: Any) -> str:
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["code"] == "validation_error", error
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


async def test_bad_file_paths_are_named_in_the_422(service_app: Running) -> None:
    for path in BAD_PATHS:
        body = files_body("p", {"index.html": "<h1>ok</h1>", path: "x"})
        res = await create(service_app, body)
        message = validation_error(res)
        assert repr(path) in message, (path, message)
        assert res.json()["error"]["path"] == path
    await assert_nothing_admitted(service_app)


async def test_a_good_path_next_to_the_bad_ones_is_fine(service_app: Running) -> None:
    """The checks above refuse the path, not the shape: nested names with dots pass."""
    body = files_body("p", {"index.html": "x", "a/b.c/..d/e..f/.well-known/x": "y"})
    res = await create(service_app, body)
    assert res.status_code == 202, res.text


def _git(url: str, ref: str | None = None) -> dict[str, Any]:
    return {"projectId": "g", "git": {"url": url, **({"ref": ref} if ref else {})}}


PAYLOADS: list[tuple[str, dict[str, Any], str]] = [
    (
        "two sources",
        {"projectId": "p", "promptJson": {"name": "x"}, "files": [{"path": "a", "content": ""}]},
        "exactly one source",
    ),
    ("no source", {"projectId": "p"}, "exactly one source"),
    ("unknown field", {"projectId": "p", "promptJson": {}, "bogusField": 1}, "bogusField"),
    (
        "bad base64",
        {
            "projectId": "p",
            "files": [{"path": "logo.png", "content": "not*base64!", "encoding": "base64"}],
        },
        "'logo.png' is not valid base64",
    ),
    (
        "bad encoding",
        {"projectId": "p", "files": [{"path": "a", "content": "", "encoding": "latin-1"}]},
        "encoding",
    ),
    (
        "bad template",
        {"projectId": "p", "promptJson": {"name": "x"}, "template": "react"},
        "template",
    ),
    (
        "template without promptJson",
        {"projectId": "p", "files": [{"path": "a", "content": ""}], "template": "static"},
        "template",
    ),
    (
        "commands with promptJson",
        {"projectId": "p", "promptJson": {}, "build": "make"},
        "promptJson",
    ),
    ("bad project id", {"projectId": "a b/c", "promptJson": {}}, "projectId"),
    (
        "port below 1024",
        {"projectId": "p", "files": [{"path": "a", "content": ""}], "port": 80},
        "port",
    ),
    ("git url with credentials", _git("https://u:p@github.com/x/y"), "credentials"),
    ("git url with a token as user", _git("https://ghp_secret@github.com/x/y"), "credentials"),
    ("git url outside prefixes", _git("https://gitlab.com/x/y"), "allowed prefix"),
    (
        "git host that only starts alike",
        _git("https://github.com.evil.example/x/y"),
        "allowed prefix",
    ),
    ("git file url elsewhere", _git("file:///etc/x"), "allowed prefix"),
    ("git ssh url", _git("git@github.com:x/y.git"), "git URL"),
    ("option-looking ref", _git("https://github.com/x/y", "--upload-pack=x"), "invalid git ref"),
    ("ref with ..", _git("https://github.com/x/y", "main..evil"), "invalid git ref"),
    ("ref with a space", _git("https://github.com/x/y", "a b"), "invalid git ref"),
    ("ref with a newline", _git("https://github.com/x/y", "main\n"), "invalid git ref"),
]


async def test_bad_payloads_get_422(service_app: Running) -> None:
    wrong = []
    for name, body, expect in PAYLOADS:
        res = await create(service_app, body)
        error = res.json().get("error", {})
        if res.status_code != 422 or error.get("code") != "validation_error":
            wrong.append((name, res.status_code, res.text))
        elif expect not in error.get("message", ""):
            wrong.append((name, "message", error.get("message")))
        # Never echo a credential back, not even inside the validation message.
        if "u:p@" in res.text or "ghp_secret" in res.text:
            wrong.append((name, "echoed a credential", res.text))
    assert wrong == []
    await assert_nothing_admitted(service_app)


async def test_invalid_json_and_wrong_types(service_app: Running) -> None:
    res = await service_app.client.post(
        "/api/preview/daytona",
        content=b"{not json",
        headers={"X-User-Id": "alice", "content-type": "application/json"},
    )
    validation_error(res)
    res = await create(service_app, {"projectId": "p", "files": {"path": "a"}})
    assert "files" in validation_error(res)
    await assert_nothing_admitted(service_app)


async def test_git_file_url_cannot_climb_out_of_its_prefix(
    service_app: Running, tmp_path: Path
) -> None:
    for url in (f"file://{tmp_path}/../../etc/x", f"file://{tmp_path}/%2e%2e/%2e%2e/etc/x"):
        validation_error(await create(service_app, _git(url)))


async def test_a_prompt_json_that_json_cannot_carry_is_a_422(service_app: Running) -> None:
    for raw in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": {"b": [1e999]}}'):
        res = await service_app.client.post(
            "/api/preview/daytona",
            content=b'{"projectId": "p", "promptJson": ' + raw + b"}",
            headers={**user_headers(), "content-type": "application/json"},
        )
        assert "promptJson" in validation_error(res), res.text
    await assert_nothing_admitted(service_app)
