"""What a live update changes: the source a sandbox serves (`Manifest`: the commands and port it
was built with, the sha256 of every file the service put into it) against an update's body →
the files to upload, the paths to delete, whether to install and build again — or a 409 naming
what differs, when only a new preview could serve it. Pure: no I/O."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from midori_preview.errors import SourceIncompatible, ValidationFailed
from midori_preview.previews.schemas import UpdateSource
from midori_preview.previews.sources import (
    DEFAULT_PORT,
    BuildPlan,
    digest_of,
    files_of,
    validate_path,
)
from midori_preview.providers.base import FileData
from midori_preview.templates import PROMPT_FILE, prompt_file_bytes, render_template

# Files whose change means dependencies to install again (when the source has an install step).
DEPENDENCY_FILES = frozenset(
    {"package.json", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml",
     "requirements.txt", "pyproject.toml"}
)  # fmt: skip
VITE_PROMPT = f"dist/{PROMPT_FILE}"  # the built page fetches it at run time


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a sandbox serves: `spec` (kind, template, port, start, build, install) and `files`
    (path → sha256 of what the service wrote)."""

    spec: dict[str, Any]
    files: dict[str, str]


@dataclass(frozen=True, slots=True)
class UpdatePlan:
    manifest: Manifest  # what the sandbox serves once the update is applied
    digest: str  # the row's new source digest
    uploads: list[FileData] = field(default_factory=list)
    deletions: list[str] = field(default_factory=list)
    install: str | None = None  # run again (in the staging copy) when set
    build: str | None = None

    @property
    def noop(self) -> bool:
        return not (self.uploads or self.deletions or self.install or self.build)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_of(plan: BuildPlan) -> Manifest:
    """What a new sandbox will serve once its build runs (recorded at admission)."""
    spec = {
        "kind": plan.source_kind,
        "template": plan.template,
        "port": plan.port,
        "start": plan.start,
        "build": plan.build,
        "install": plan.install,
    }
    if plan.template == "vite":
        prompt = next((f for f in plan.overlay if f.path == VITE_PROMPT), None)
        files = {VITE_PROMPT: sha(prompt.content)} if prompt else {}
    else:
        files = {f.path: sha(f.content) for f in plan.files}
    return Manifest(spec, files)


def fallback_manifest(kind: str, template: str | None, port: int) -> Manifest:
    """A sandbox created before sources were recorded: what its row tells (every file new)."""
    spec = {"kind": kind, "template": template, "port": port, "start": None, "build": None,
            "install": None}  # fmt: skip
    return Manifest(spec, {})


def plan_update(
    body: UpdateSource, current: Manifest, *, max_files: int, max_bytes: int
) -> UpdatePlan:
    """The update of a sandbox serving `current` to `body`: SourceIncompatible (409) when it
    needs a new preview, ValidationFailed / PayloadTooLarge for a bad body."""
    if body.prompt_json is not None:
        return _prompt_update(body, current)
    return _files_update(body, current, max_files=max_files, max_bytes=max_bytes)


def _incompatible(differences: dict[str, tuple[Any, Any]]) -> SourceIncompatible:
    names = ", ".join(differences)
    return SourceIncompatible(
        f"This preview cannot take that source ({names} differ); start a new preview.",
        differences={k: {"preview": a, "update": b} for k, (a, b) in differences.items()},
    )


def _prompt_update(body: UpdateSource, current: Manifest) -> UpdatePlan:
    spec = current.spec
    if spec.get("kind") != "prompt":
        raise _incompatible({"source": (spec.get("kind"), "prompt")})
    template = body.template or spec.get("template") or "static"
    if template != spec.get("template"):
        raise _incompatible({"template": (spec.get("template"), template)})
    assert body.prompt_json is not None
    source = {
        "promptJson": body.prompt_json,
        **({"template": body.template} if body.template else {}),
    }
    digest = digest_of(source)
    try:
        if template == "vite":
            wanted = [FileData(VITE_PROMPT, prompt_file_bytes(body.prompt_json))]
        else:
            built = render_template(template, body.prompt_json)
            wanted = [FileData(f.path, f.content) for f in built.files]
    except ValueError as exc:
        raise ValidationFailed(f"promptJson: {exc}", field="promptJson") from None
    files = {f.path: sha(f.content) for f in wanted}
    uploads = [f for f in wanted if current.files.get(f.path) != files[f.path]]
    return UpdatePlan(Manifest(dict(spec), files), digest, uploads)


def _files_update(
    body: UpdateSource, current: Manifest, *, max_files: int, max_bytes: int
) -> UpdatePlan:
    spec = dict(current.spec)
    if spec.get("kind") != "files":
        raise _incompatible({"source": (spec.get("kind"), "files")})
    differences: dict[str, tuple[Any, Any]] = {}
    port = spec.get("port") or DEFAULT_PORT
    if body.port is not None and body.port != port:
        differences["port"] = (port, body.port)
    start = spec.get("start")
    if body.start is not None and start is not None and body.start != start:
        differences["start"] = (start, body.start)
    if differences:
        raise _incompatible(differences)
    wanted = _decoded(body, max_files=max_files, max_bytes=max_bytes)
    files = dict(current.files)
    uploads = [f for f in wanted if files.get(f.path) != sha(f.content)]
    for f in uploads:
        files[f.path] = sha(f.content)
    deletions = [validate_path(p) for p in dict.fromkeys(body.deletions or ())]
    clash = {f.path for f in wanted} & set(deletions)
    if clash:
        raise ValidationFailed(f"{sorted(clash)[0]!r} is both written and deleted", path=min(clash))
    deletions = [p for p in deletions if p in files or not current.files]
    for p in deletions:
        files.pop(p, None)
    install_changed = body.install is not None and body.install != spec.get("install")
    build_changed = body.build is not None and body.build != spec.get("build")
    spec["install"] = body.install if body.install is not None else spec.get("install")
    spec["build"] = body.build if body.build is not None else spec.get("build")
    touched = {p.rsplit("/", 1)[-1] for p in [*(f.path for f in uploads), *deletions]}
    changed = bool(uploads or deletions)
    install = spec["install"] if install_changed or (touched & DEPENDENCY_FILES) else None
    build = spec["build"] if changed or build_changed or install else None
    if install and not spec["build"]:
        build = None
    manifest = Manifest(spec, files)
    digest = digest_of({"spec": spec, "files": files})
    return UpdatePlan(manifest, digest, uploads, deletions, install, build)


def _decoded(body: UpdateSource, *, max_files: int, max_bytes: int) -> list[FileData]:
    """The body's files, checked and decoded as create checks them."""
    return files_of(body.files or [], max_files=max_files, max_bytes=max_bytes)
