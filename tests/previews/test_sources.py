"""Source planning (`plan_for`) and command detection (`DETECT` + `detected_commands`): what each
source kind turns into, a digest that depends on the source alone (stable across calls, key
orders and services), every validation with the field or path it names, and how a cloned
repository says how it wants to be previewed (the DETECT command run by a real shell)."""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from midori_preview.errors import PayloadTooLarge, PreviewError, ValidationFailed
from midori_preview.previews.schemas import CreatePreview
from midori_preview.previews.sources import (
    DETECT,
    STATIC_SERVER,
    BuildPlan,
    GitSource,
    detected_commands,
    digest_of,
    plan_for,
)
from midori_preview.providers.base import FileData
from midori_preview.templates import PROMPT_FILE, prompt_file_bytes, render_template

PROMPT = {"name": "บ้านกาแฟ Baan Kafae", "sections": [{"type": "hero", "title": "Slow coffee"}]}
GIT_PREFIXES = ["https://github.com/", "file:///srv/repos/"]


def plan(max_files: int = 10, max_bytes: int = 1000, **body: Any) -> BuildPlan:
    request = CreatePreview.model_validate({"projectId": "p", **body})
    return plan_for(
        request, allowed_git_prefixes=GIT_PREFIXES, max_files=max_files, max_bytes=max_bytes
    )


def refused(error: type[PreviewError], **body: Any) -> PreviewError:
    with pytest.raises(error) as caught:
        plan(**body)
    return caught.value


# --- each source kind ---------------------------------------------------------------------------


def test_a_prompt_renders_the_static_template_by_default() -> None:
    got = plan(promptJson=PROMPT)
    static = render_template("static", PROMPT)
    assert (got.source_kind, got.template, got.git) == ("prompt", "static", None)
    assert got.files == [FileData(f.path, f.content) for f in static.files]
    assert (got.install, got.build, got.start) == (static.install, static.build, static.start)
    assert (got.cache_key, got.overlay) == (None, []), "the static page depends on the prompt"
    assert plan(promptJson=PROMPT, template="static").files == got.files


def test_a_vite_prompt_is_cacheable_per_template_version_with_its_data_on_top() -> None:
    got = plan(promptJson=PROMPT, template="vite")
    vite = render_template("vite", PROMPT)
    assert (got.source_kind, got.template) == ("prompt", "vite")
    assert (got.install, got.build, got.start) == (vite.install, vite.build, vite.start)
    assert got.cache_key == f"vite-{vite.version}"
    assert got.overlay == [FileData(f"dist/{PROMPT_FILE}", prompt_file_bytes(PROMPT))]
    other = plan(promptJson={"name": "another site"}, template="vite")
    assert other.cache_key == got.cache_key, "one cached build serves every prompt"
    assert other.overlay != got.overlay


def test_files_are_decoded_and_served_statically_unless_told_otherwise() -> None:
    logo = bytes(range(256))
    got = plan(
        files=[
            {"path": "index.html", "content": "<h1>สวัสดี</h1>"},
            {
                "path": "img/logo.bin",
                "content": base64.b64encode(logo).decode(),
                "encoding": "base64",
            },
        ]
    )
    assert got.source_kind == "files" and got.template is None and got.git is None
    assert got.files == [
        FileData("index.html", "<h1>สวัสดี</h1>".encode()),
        FileData("img/logo.bin", logo),
    ]
    assert (got.install, got.build, got.start, got.port) == (None, None, STATIC_SERVER, 3000)
    assert got.cache_key is None

    custom = plan(
        files=[{"path": "a.js", "content": "x"}],
        install="npm ci",
        build="npm run build",
        start="node a.js",
        port=8080,
    )
    assert (custom.install, custom.build, custom.start, custom.port) == (
        "npm ci", "npm run build", "node a.js", 8080,
    )  # fmt: skip


def test_git_is_cloned_later_and_its_start_detected_after() -> None:
    got = plan(git={"url": "https://github.com/owner/site.git", "ref": "main"}, build="make")
    assert got.source_kind == "git" and got.files == []
    assert got.git == GitSource("https://github.com/owner/site.git", "main")
    assert (got.install, got.build, got.start, got.port) == (None, "make", None, 3000)
    assert plan(git={"url": "file:///srv/repos/site"}).git == GitSource(
        "file:///srv/repos/site", None
    )


# --- the digest ---------------------------------------------------------------------------------


def test_the_digest_is_of_the_source_alone_and_stable() -> None:
    files = [{"path": "index.html", "content": "hi"}]
    first = plan(files=files).digest
    assert plan(files=files).digest == first
    assert plan(files=files, replace=True).digest == first, "replace is not part of the source"
    request = CreatePreview.model_validate({"projectId": "other", "files": files})
    other_project = plan_for(request, allowed_git_prefixes=[], max_files=9, max_bytes=99)
    assert other_project.digest == first, "nor is the project (it is compared alongside)"
    assert plan(files=[{"path": "index.html", "content": "hi!"}]).digest != first
    assert plan(files=files, start="node a.js").digest != first
    reordered = {"sections": PROMPT["sections"], "name": PROMPT["name"]}
    assert plan(promptJson=reordered).digest == plan(promptJson=PROMPT).digest
    assert plan(promptJson=PROMPT, template="vite").digest != plan(promptJson=PROMPT).digest


def test_the_digest_is_sha256_of_canonical_json() -> None:
    # Stored on rows and compared across replicas and deploys: its form must not drift.
    canonical = '{"a":1,"b":[1,"ü"]}'
    assert digest_of({"b": [1, "ü"], "a": 1}) == hashlib.sha256(canonical.encode()).hexdigest()


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "C:/x", "../x", "a/../../x", "a//b", "./a", "a/./b", "a\\b", "a\x01b", "a/"],
)
def test_a_bad_file_path_is_a_422_naming_it(path: str) -> None:
    err = refused(ValidationFailed, files=[{"path": path, "content": "x"}])
    assert err.extra == {"path": path}
    assert repr(path) in err.message


def test_duplicate_paths_and_bad_base64_are_422() -> None:
    twice = [{"path": "a.txt", "content": "1"}, {"path": "a.txt", "content": "2"}]
    assert refused(ValidationFailed, files=twice).extra == {"path": "a.txt"}
    bad = [{"path": "b.bin", "content": "not base64!", "encoding": "base64"}]
    assert "not valid base64" in refused(ValidationFailed, files=bad).message


def test_too_many_files_or_bytes_is_413_and_the_limits_themselves_pass() -> None:
    three = [{"path": f"f{i}", "content": "x" * 10} for i in range(3)]
    assert len(plan(files=three, max_files=3, max_bytes=30).files) == 3
    refused(PayloadTooLarge, files=three, max_files=2, max_bytes=30)
    refused(PayloadTooLarge, files=three, max_files=3, max_bytes=29)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://user:secret@github.com/o/r.git", "credentials"),
        ("https://token@github.com/o/r.git", "credentials"),
        ("https://gitlab.com/o/r.git", "allowed prefix"),
        ("file:///srv/repos/../secrets", "'..' segments"),
        ("file:///srv/repos/%2e%2e/secrets", "'..' segments"),
        ("https://github.com/o/r.git\\x", "'..' segments"),
        ("https://github.com/o/r .git", "invalid git URL"),
        ("-uhttps://github.com/o/r.git", "invalid git URL"),
    ],
)
def test_a_bad_git_url_is_a_422(url: str, problem: str) -> None:
    err = refused(ValidationFailed, git={"url": url})
    assert problem in err.message and err.extra == {"field": "git.url"}
    assert "secret" not in err.message


@pytest.mark.parametrize("ref", ["-x", "a..b", "x.lock", "a//b", "main/", "a b", "a~1", "é"])
def test_a_bad_git_ref_is_a_422(ref: str) -> None:
    err = refused(ValidationFailed, git={"url": "https://github.com/o/r.git", "ref": ref})
    assert err.extra == {"field": "git.ref"}


@pytest.mark.parametrize("ref", ["main", "feature/x-1", "v1.2.3", "a" * 40, "release_2026.01"])
def test_good_git_refs_pass(ref: str) -> None:
    git = plan(git={"url": "https://github.com/o/r.git", "ref": ref}).git
    assert git is not None and git.ref == ref


def test_a_prompt_that_json_cannot_carry_is_a_422() -> None:
    err = refused(ValidationFailed, promptJson={"price": float("nan")})
    assert err.extra == {"field": "promptJson"}


# --- command detection --------------------------------------------------------------------------


def detect(workspace: Path) -> list[str]:
    """Run DETECT in `workspace` with a real shell, as the pipeline does in a sandbox."""
    done = subprocess.run(
        ["bash", "-c", DETECT], cwd=workspace, capture_output=True, text=True, check=True
    )
    return done.stdout.splitlines()


def test_preview_json_says_how_to_build_and_serve(tmp_path: Path) -> None:
    spec = {"install": "npm ci", "build": "npm run build", "outputDir": "my site", "port": 4000}
    (tmp_path / "preview.json").write_text(json.dumps(spec, indent=2).replace("\n", "\r\n"))
    (tmp_path / "index.html").write_text("ignored: preview.json wins")
    output = detect(tmp_path)
    assert output[0] == "#preview.json" and len(output) == 2, "one line, whatever its layout"
    assert detected_commands(output) == (
        "npm ci",
        "npm run build",
        f"{STATIC_SERVER} --directory {shlex.quote('my site')}",
        4000,
    )


def test_preview_json_start_wins_and_blank_or_odd_values_are_ignored() -> None:
    spec = {
        "install": "  ",
        "build": 7,
        "start": "node server.js",
        "outputDir": "dist",
        "port": "80",
    }
    assert detected_commands(["#preview.json", json.dumps(spec)]) == (
        None, None, "node server.js", None,
    )  # fmt: skip
    assert detected_commands(["#preview.json", "{}"]) == (None, None, STATIC_SERVER, None)


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '"text"', ""])
def test_a_preview_json_that_is_not_an_object_is_a_422(content: str) -> None:
    with pytest.raises(ValidationFailed, match=r"preview\.json is not a JSON object"):
        detected_commands(["#preview.json", content])


def test_preview_json_output_dir_must_stay_in_the_workspace() -> None:
    with pytest.raises(ValidationFailed) as caught:
        detected_commands(["#preview.json", json.dumps({"outputDir": "../../etc"})])
    assert caught.value.extra == {"path": "../../etc"}


def test_a_static_site_is_served_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>hi</h1>")
    (tmp_path / "package.json").write_text("{}")  # index.html comes first
    assert detect(tmp_path) == ["#static"]
    assert detected_commands(["#static"]) == (None, None, STATIC_SERVER, None)


def test_a_node_project_is_installed_built_and_its_output_served(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text('{"name": "site"}')
    assert detect(tmp_path) == ["#node"]
    install, build, start, port = detected_commands(["#node"])
    assert (install, build, port) == (
        "npm install --no-audit --no-fund",
        "npm run build --if-present",
        None,
    )
    # The first output directory that exists is served.
    for name in ("build", "public"):
        (tmp_path / name).mkdir()
    (tmp_path / "public" / "marker").write_text("")
    served = subprocess.run(
        ["bash", "-c", start.replace(STATIC_SERVER, "echo")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert served.stdout.split() == ["--directory", "build"]


def test_nothing_recognisable_is_served_statically(tmp_path: Path) -> None:
    assert detect(tmp_path) == ["#none"]
    assert detected_commands(["#none"]) == detected_commands([]) == (
        None, None, STATIC_SERVER, None,
    )  # fmt: skip
