"""The npm package of the browser client (`clients/js/`) ships the very file the service serves,
and its own tests (node's test runner) pass."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from midori_preview.app import create_app
from tests.conftest import Backend, make_settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "clients" / "js"
SERVED = ROOT / "src" / "midori_preview" / "web" / "static" / "preview-client.js"


async def test_the_package_ships_the_file_the_service_serves(
    tmp_path: Path, backend: Backend
) -> None:
    shipped = (PACKAGE / "preview-client.js").read_bytes()
    assert shipped == SERVED.read_bytes(), "run `make js-client` after editing the client"
    app = create_app(make_settings(tmp_path, backend))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            res = await client.get("/static/preview-client.js")
    assert res.status_code == 200 and res.content == shipped
    manifest = json.loads((PACKAGE / "package.json").read_text(encoding="utf-8"))
    assert manifest["type"] == "module"
    assert manifest["exports"]["."] == {
        "types": "./preview-client.d.ts",
        "default": "./preview-client.js",
    }
    for name in manifest["files"]:
        assert (PACKAGE / name).is_file(), name


def test_the_packages_node_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed (apt-get install nodejs)")
    done = subprocess.run(
        [node, "--test", "test/"], cwd=PACKAGE, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout
