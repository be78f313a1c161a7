"""Site templates: the files, commands and cache key that turn a promptJson into a preview site.

`static` renders HTML and CSS here, with Jinja2. `vite` is a real Vite project whose build does
not depend on the promptJson: the page fetches `prompt.json` at run time. So one build per
`version` can serve every project: keep the built `dist/`, and for each project write its
`prompt.json` (the `public/prompt.json` file of the build) into `dist/` and serve that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from midori_preview.providers.commands import static_server
from midori_preview.templates import content

__all__ = [
    "PROMPT_FILE",
    "TEMPLATES",
    "TemplateBuild",
    "TemplateFile",
    "prompt_file_bytes",
    "render_template",
]

TEMPLATES = ("static", "vite")
PROMPT_FILE = "prompt.json"
SERVE = static_server()
VITE_INSTALL = "npm ci --no-audit --no-fund"
VITE_BUILD = "npm run build"
VITE_START = static_server("dist")
_NAV_LIMIT = 6
# Never shipped from a template directory, should a developer have run npm in it.
_SKIPPED = frozenset({"__pycache__", "node_modules", "dist", ".DS_Store"})


@dataclass(frozen=True)
class TemplateFile:
    path: str  # relative, forward slashes
    content: bytes


@dataclass(frozen=True)
class TemplateBuild:
    files: list[TemplateFile]
    install: str | None  # shell command line, run in the site directory
    build: str | None
    start: str  # long-running server listening on 127.0.0.1:$PORT
    version: str  # hash of the template's own files and commands, not of the promptJson


def render_template(name: str, prompt_json: dict[str, Any]) -> TemplateBuild:
    """The files and commands of template `name` for one promptJson.

    Raises ValueError for an unknown template name or a promptJson that is not JSON (NaN, etc.).
    """
    if name == "static":
        return _static(prompt_json)
    if name == "vite":
        return _vite(prompt_json)
    raise ValueError(f"unknown template {name!r}; expected one of: {', '.join(TEMPLATES)}")


def prompt_file_bytes(prompt_json: dict[str, Any]) -> bytes:
    """The promptJson exactly as the site reads it: UTF-8 JSON, non-ASCII text kept as is."""
    try:
        text = json.dumps(prompt_json, ensure_ascii=False, indent=2, allow_nan=False)
        return (text + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"promptJson cannot be written as JSON: {exc}") from exc


def _static(prompt_json: dict[str, Any]) -> TemplateBuild:
    page = content.page(prompt_json)
    nav = [s for s in page.sections if s.title][:_NAV_LIMIT]
    env = _environment()
    html = env.get_template("index.html.j2").render(page=page, hero=page.hero, nav=nav)
    theme = env.get_template("theme.css.j2").render(theme=page.theme)
    css = _shared_css() + theme.encode("utf-8")
    return TemplateBuild(
        files=[
            TemplateFile("index.html", html.encode("utf-8")),
            TemplateFile("styles.css", css),
            TemplateFile(PROMPT_FILE, prompt_file_bytes(prompt_json)),
        ],
        install=None,
        build=None,
        start=SERVE,
        version=_static_version(),
    )


def _vite(prompt_json: dict[str, Any]) -> TemplateBuild:
    return TemplateBuild(
        files=[
            *_vite_files(),
            TemplateFile("public/" + PROMPT_FILE, prompt_file_bytes(prompt_json)),
        ],
        install=VITE_INSTALL,
        build=VITE_BUILD,
        start=VITE_START,
        version=_vite_version(),
    )


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("midori_preview.templates", "static"),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def _root() -> Traversable:
    return files("midori_preview.templates")


@cache
def _shared_css() -> bytes:
    return (_root() / "shared" / "site.css").read_bytes()


def _walk(directory: Traversable, prefix: str = "") -> Iterator[TemplateFile]:
    for entry in directory.iterdir():
        if entry.name in _SKIPPED:
            continue
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        else:
            yield TemplateFile(prefix + entry.name, entry.read_bytes())


@cache
def _vite_files() -> tuple[TemplateFile, ...]:
    found = [*_walk(_root() / "vite"), TemplateFile("src/style.css", _shared_css())]
    return tuple(sorted(found, key=lambda f: f.path))


def _digest(name: str, parts: list[TemplateFile], *commands: str | None) -> str:
    """sha256 over the template's files (sorted by path) and commands; stable across processes."""
    h = hashlib.sha256(f"midori-template:{name}\0".encode())
    for part in sorted(parts, key=lambda f: f.path):
        h.update(f"{part.path}\0{len(part.content)}\0".encode())
        h.update(part.content)
    for command in commands:
        h.update(f"\0{command or ''}".encode())
    return h.hexdigest()[:16]


@cache
def _static_version() -> str:
    # content.py shapes the page as much as the Jinja files do, so it is part of the template.
    parts = [
        *_walk(_root() / "static"),
        TemplateFile("shared/site.css", _shared_css()),
        TemplateFile("content.py", (_root() / "content.py").read_bytes()),
    ]
    return _digest("static", parts, None, None, SERVE)


@cache
def _vite_version() -> str:
    return _digest("vite", list(_vite_files()), VITE_INSTALL, VITE_BUILD, VITE_START)
