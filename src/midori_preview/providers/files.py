"""Files going into and out of sandboxes, safely. Each rule lives here once:

- `path_problem`: what makes a path unusable as a relative path inside a directory;
- `write_files`: a file set written under a directory without following any link, so a link
  planted there (by a sandbox's own processes) cannot redirect a write outside it;
- `pack` / `untar`: `tar.gz` archives of regular files, and the only way we read an archive we
  did not make: no `..`, no absolute paths, no links or devices, bounded count and size;
- `read_archive`: a directory of a sandbox read back through the provider port, with one
  command (`tar | base64`), never one per file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import gzip
import io
import os
import re
import shlex
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from midori_preview.providers.base import (
    FileData,
    ProviderError,
    ProviderSandbox,
    SandboxProvider,
)

MAX_PATH = 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


def path_problem(path: str) -> str | None:
    """Why `path` cannot be a relative path that stays inside a directory, or None if it can."""
    parts = path.split("/")
    if not path or len(path) > MAX_PATH:
        return "empty or too long"
    if "\x00" in path:
        return "contains NUL"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/") or _DRIVE.match(path):
        return "is absolute"
    if ".." in parts:
        return "contains '..'"
    if any(part in ("", ".") for part in parts):
        return "has an empty or '.' segment"
    if any(ord(c) < 32 for c in path):
        return "contains a control character"
    return None


# --- writing ----------------------------------------------------------------------------------


class UnsafePath(ValueError):
    """A file could not be written where it says: its path, or a link on its way."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path!r} {problem}")
        self.path = path
        self.problem = problem


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def write_files(root: Path, files: Sequence[FileData]) -> None:
    """Write each file under `root` (which must exist), creating directories on the way.

    Every component below `root` is opened relative to its parent with `O_NOFOLLOW`, so a symlink
    anywhere on the path (planted before, or swapped in while we write) is refused, never
    followed. Blocking: run it in a thread from async code."""
    base = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for f in files:
            if problem := path_problem(f.path):
                raise UnsafePath(f.path, problem)
            *dirs, name = f.path.split("/")
            try:
                with _directory(base, dirs) as parent:
                    fd = os.open(name, _FILE_FLAGS, 0o644, dir_fd=parent)
                    with os.fdopen(fd, "wb") as out:
                        out.write(f.content)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
                    raise UnsafePath(f.path, "goes through a link or a non-directory") from None
                raise
    finally:
        os.close(base)


@contextlib.contextmanager
def _directory(base: int, parts: Sequence[str]) -> Iterator[int]:
    """A descriptor of `base`/`parts`, each level created if missing and never a link."""
    current = base
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=current)
            opened = os.open(part, _DIR_FLAGS, dir_fd=current)
            if current != base:
                os.close(current)
            current = opened
        yield current
    finally:
        if current != base:
            os.close(current)


# --- archives ---------------------------------------------------------------------------------


class UnsafeArchive(ValueError):
    """An archive we refuse: unreadable, or a member that is not a safe regular file."""


class ArchiveTooLarge(UnsafeArchive):
    """More files (`kind == "files"`) or more bytes (`kind == "bytes"`) than allowed."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class EmptyArchive(UnsafeArchive):
    """No regular file in the archive."""


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_files: int
    max_bytes: int  # the files' total size, uncompressed
    # Leave links, devices and unsafe paths out instead of refusing the whole archive (for a
    # project's own tree, where a committed symlink is no reason to fail).
    skip_unsafe: bool = False


def pack(files: Sequence[FileData]) -> bytes:
    """A `tar.gz` of regular files, byte-identical for the same files (no times, no owners)."""
    out = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for f in files:
            if problem := path_problem(f.path):
                raise UnsafePath(f.path, problem)
            info = tarfile.TarInfo(f.path)
            info.size = len(f.content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(f.content))
    return out.getvalue()


def untar(data: bytes, limits: ArchiveLimits) -> list[FileData]:
    """The regular files of a tar archive (gzip-compressed or not), paths checked, sizes bounded
    by the members' headers before anything is read. Raises `UnsafeArchive` (or a subclass)."""
    files: list[FileData] = []
    total = members = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                members += 1
                total += max(member.size, 0)
                if members > 2 * limits.max_files + 1000:  # directories, links... bounded too
                    raise ArchiveTooLarge("too many archive members", kind="files")
                if total > limits.max_bytes:
                    raise ArchiveTooLarge("the files are too large", kind="bytes")
                if member.isdir():
                    continue
                name = member.name.removeprefix("./")
                problem = path_problem(name) if member.isfile() else "is not a regular file"
                if problem is not None:
                    if limits.skip_unsafe:
                        continue
                    raise UnsafeArchive(f"{member.name[:200]!r} {problem}")
                if len(files) >= limits.max_files:
                    raise ArchiveTooLarge(f"more than {limits.max_files} files", kind="files")
                content = tar.extractfile(member)
                if content is None:
                    raise UnsafeArchive(f"{name[:200]!r} is unreadable")
                files.append(FileData(name, content.read()))
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        raise UnsafeArchive("not a readable tar archive") from None
    if not files:
        raise EmptyArchive("no files in the archive")
    return files


# --- reading a sandbox's files back -----------------------------------------------------------


class ArchiveReadFailed(ProviderError):
    """The command reading a directory back exited with an error."""

    code = "archive_read_failed"


async def read_archive(
    provider: SandboxProvider,
    sandbox: ProviderSandbox,
    directory: str = ".",
    *,
    exclude: Sequence[str] = (),
    timeout: float,
    limits: ArchiveLimits,
) -> list[FileData]:
    """The files under `directory` (relative to the workdir) of a sandbox, read with one command
    through the port (`tar | base64`) and unpacked by `untar` under `limits`. `exclude` holds
    tar `--exclude` patterns. Raises `ProviderError` from the provider, `ArchiveReadFailed`,
    `UnsafeArchive` (`ArchiveTooLarge` as soon as the output outgrows what `limits` allow)."""
    excludes = [f"--exclude={shlex.quote(pattern)}" for pattern in exclude]
    command = " ".join(["tar", "-C", shlex.quote(directory), *excludes, "-czf", "-", "."])
    command += " | base64"
    # base64 of a gzip of at most max_bytes of files plus tar headers: a generous bound that
    # keeps a runaway sandbox from filling our memory before `untar` counts exactly.
    cap = (limits.max_bytes + 1024 * limits.max_files + 65536) * 4 // 3
    lines: list[str] = []
    size = 0

    async def collect(line: str, stream: str) -> None:
        nonlocal size
        if stream != "stdout":
            return
        size += len(line)
        if size <= cap:
            lines.append(line.strip())

    result = await provider.exec(sandbox, command, timeout=timeout, on_output=collect)
    if size > cap:
        raise ArchiveTooLarge("the files are too large", kind="bytes")
    if result.exit_code != 0:
        raise ArchiveReadFailed(f"reading {directory!r} back failed (exit {result.exit_code})")
    try:
        data = base64.b64decode("".join(lines), validate=True)
    except (binascii.Error, ValueError):
        raise UnsafeArchive("the read-back is not base64") from None
    return untar(data, limits)
