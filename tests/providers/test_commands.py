"""The static file server command, defined once: what files sources, repository detection and
the templates serve with."""

from __future__ import annotations

from midori_preview.previews.sources import detected_commands
from midori_preview.providers.commands import STATIC_SERVER, static_server
from midori_preview.templates import render_template


def test_the_static_server_listens_on_port_on_the_loopback_only() -> None:
    assert static_server() == STATIC_SERVER
    assert '"$PORT"' in STATIC_SERVER and "--bind 127.0.0.1" in STATIC_SERVER


def test_a_directory_is_passed_as_one_shell_word() -> None:
    assert static_server("dist") == f"{STATIC_SERVER} --directory dist"
    assert static_server("my site; rm -rf ~") == f"{STATIC_SERVER} --directory 'my site; rm -rf ~'"


def test_every_default_server_is_this_one() -> None:
    assert render_template("static", {}).start == STATIC_SERVER
    assert render_template("vite", {}).start == static_server("dist")
    assert detected_commands(["#static"])[2] == STATIC_SERVER
    assert detected_commands(["#preview.json", '{"outputDir": "out"}'])[2] == static_server("out")
    assert f"exec {STATIC_SERVER} --directory" in detected_commands(["#node"])[2]
