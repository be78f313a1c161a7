"""Turn a create request into a build plan: validated files, commands and port.

Paths are checked here, before anything reaches a sandbox; a bad one is a 422 naming it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from midori_preview.errors import PayloadTooLarge, ValidationFailed
from midori_preview.previews.schemas import CreatePreview, FileIn
from midori_preview.providers.base import FileData, GitCredentials
from midori_preview.providers.commands import STATIC_SERVER, static_server
from midori_preview.templates import PROMPT_FILE, prompt_file_bytes, render_template

DEFAULT_PORT = 3000
SAFE_REF = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]{1,255}(?<!\.lock)(?<!/)$")


# Asked right before the clone (tokens expire); what it answers is used once, never stored.
CredentialSource = Callable[[], Awaitable[GitCredentials | None]]


@dataclass(frozen=True, slots=True)
class GitSource:
    url: str
    ref: str | None
    credentials: CredentialSource | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class BuildPlan:
    source_kind: str  # prompt | files | git
    files: list[FileData] = field(default_factory=list)
    git: GitSource | None = None
    install: str | None = None
    build: str | None = None
    start: str | None = None  # None for git: detected after the clone
    port: int = DEFAULT_PORT
    template: str | None = None
    digest: str = ""
    # Templates whose build ignores the promptJson: the built output directory can be cached per
    # template version (`cache_key`) and reused with `overlay` (the request's own data) on top.
    cache_key: str | None = None
    output_dir: str = "dist"
    overlay: list[FileData] = field(default_factory=list)


def validate_path(path: str) -> str:
    """A relative path that stays inside the workspace, or a 422 naming it."""
    problem = None
    if not path or len(path.encode("utf-8", "surrogatepass")) > 1024:
        problem = "empty or too long"
    elif any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in path.split("/")):
        problem = "has a name longer than 255 bytes"
    elif "\x00" in path:
        problem = "contains NUL"
    elif "\\" in path:
        problem = "contains a backslash"
    elif path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        problem = "is absolute"
    elif any(part in ("..",) for part in path.split("/")):
        problem = "contains '..'"
    elif any(part in ("", ".") for part in path.split("/")):
        problem = "has an empty or '.' segment"
    elif any(ord(c) < 32 or 127 <= ord(c) < 160 for c in path):  # Unicode's Cc, DEL included
        problem = "contains a control character"
    elif path[-1].isspace():  # Daytona's toolbox trims it: the file would land elsewhere
        problem = "ends with white space"
    if problem:
        raise ValidationFailed(f"invalid file path {path!r}: {problem}", path=path)
    return path


def validate_git(url: str, ref: str | None, allowed_prefixes: list[str]) -> GitSource:
    parts = urlsplit(url)
    if parts.username or parts.password or "@" in parts.netloc:
        raise ValidationFailed("git URL must not contain credentials", field="git.url")
    if url.startswith("-") or any(c.isspace() for c in url) or "\x00" in url:
        raise ValidationFailed("invalid git URL", field="git.url")
    # `..` (plain or %-encoded) could climb out of an allowed prefix such as file:///srv/repos/
    if any(seg in ("..", ".") for seg in unquote(parts.path).split("/")) or "\\" in url:
        raise ValidationFailed("git URL must not contain '.' or '..' segments", field="git.url")
    if not any(url.startswith(prefix) for prefix in allowed_prefixes):
        raise ValidationFailed(
            "git URL is not under an allowed prefix (GIT_ALLOWED_URL_PREFIXES)", field="git.url"
        )
    if ref is not None and not SAFE_REF.fullmatch(ref):
        raise ValidationFailed(f"invalid git ref {ref!r}", field="git.ref")
    return GitSource(url, ref)


def decode_file(path: str, content: str, encoding: str) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationFailed(f"file {path!r} is not valid base64", path=path) from None
    return content.encode("utf-8")


def digest_of(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def plan_for(
    body: CreatePreview, *, allowed_git_prefixes: list[str], max_files: int, max_bytes: int
) -> BuildPlan:
    source = body.model_dump(
        mode="json", exclude={"project_id", "replace"}, exclude_none=True, by_alias=True
    )
    digest = digest_of(source)
    if body.prompt_json is not None:
        name = body.template or "static"
        try:
            built = render_template(name, body.prompt_json)
        except ValueError as exc:  # e.g. NaN / Infinity, which JSON cannot carry
            raise ValidationFailed(f"promptJson: {exc}", field="promptJson") from None
        cacheable = name == "vite"
        return BuildPlan(
            source_kind="prompt",
            files=[FileData(f.path, f.content) for f in built.files],
            install=built.install,
            build=built.build,
            start=built.start,
            template=name,
            digest=digest,
            cache_key=f"{name}-{built.version}" if cacheable else None,
            overlay=[FileData(f"dist/{PROMPT_FILE}", prompt_file_bytes(body.prompt_json))]
            if cacheable
            else [],
        )
    port = body.port or DEFAULT_PORT
    if body.files is not None:
        files = files_of(body.files, max_files=max_files, max_bytes=max_bytes)
        return BuildPlan(
            source_kind="files",
            files=files,
            install=body.install,
            build=body.build,
            start=body.start or STATIC_SERVER,
            port=port,
            digest=digest,
        )
    assert body.git is not None
    git = validate_git(body.git.url, body.git.ref, allowed_git_prefixes)
    return BuildPlan(
        source_kind="git",
        git=git,
        install=body.install,
        build=body.build,
        start=body.start,
        port=port,
        digest=digest,
    )


# One command that tells how a cloned repository wants to be previewed (no shell per file).
# preview.json comes back as ONE line (JSON has no raw newlines inside strings, so dropping them
# keeps it valid): command output is kept as a tail of lines, and a long pretty-printed file
# would lose its first lines. Capped below the 64 KiB line limit of output readers.
DETECT = (
    "if [ -f preview.json ]; then echo '#preview.json'; "
    "head -c 60000 preview.json | tr -d '\\r\\n'; echo; "
    "elif [ -f index.html ]; then echo '#static'; "
    "elif [ -f package.json ]; then echo '#node'; else echo '#none'; fi"
)


def files_of(given: list[FileIn], *, max_files: int, max_bytes: int) -> list[FileData]:
    """A `files` source's files, each path checked (inside the workspace, no duplicates, none
    under another file) and decoded; bounded in count and size."""
    if len(given) > max_files:
        raise PayloadTooLarge(f"at most {max_files} files per preview")
    seen: set[str] = set()
    files: list[FileData] = []
    total = 0
    for f in given:
        path = validate_path(f.path)
        if path in seen:
            raise ValidationFailed(f"duplicate file path {path!r}", path=path)
        seen.add(path)
        data = decode_file(path, f.content, f.encoding)
        total += len(data)
        files.append(FileData(path, data))
    if total > max_bytes:
        raise PayloadTooLarge(f"files add up to more than {max_bytes} bytes")
    for path in seen:  # "a" and "a/b": a file cannot also be a directory
        parts = path.split("/")
        clash = next(("/".join(parts[:i]) for i in range(1, len(parts))
                      if "/".join(parts[:i]) in seen), None)  # fmt: skip
        if clash is not None:
            raise ValidationFailed(f"file path {path!r} is under the file {clash!r}", path=path)
    return files


def detected_commands(output: list[str]) -> tuple[str | None, str | None, str, int | None]:
    """(install, build, start, port) from the DETECT command's output."""
    kind = output[0].strip() if output else "#none"
    if kind == "#preview.json":
        try:
            spec = json.loads("\n".join(output[1:]))
            if not isinstance(spec, dict):
                raise ValueError
        except ValueError:
            raise ValidationFailed("preview.json is not a JSON object") from None
        out_dir = spec.get("outputDir")
        start = spec.get("start")
        if start is None and out_dir:
            validate_path(str(out_dir))
            start = static_server(str(out_dir))
        port = spec.get("port")
        return (
            _str_or_none(spec.get("install")),
            _str_or_none(spec.get("build")),
            str(start or STATIC_SERVER),
            int(port) if isinstance(port, int) else None,
        )
    if kind == "#node":
        # --if-present: a package.json without a build script is served as it is.
        return (
            "npm install --no-audit --no-fund",
            "npm run build --if-present",
            _serve_first_of_dist(),
            None,
        )
    return None, None, STATIC_SERVER, None


def _serve_first_of_dist() -> str:
    return (
        'for d in dist build out public .; do if [ -d "$d" ]; then '
        f'exec {STATIC_SERVER} --directory "$d"; fi; done'
    )


def _str_or_none(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value.strip() else None
