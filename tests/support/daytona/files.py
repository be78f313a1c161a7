"""The toolbox's bulk upload (`POST /files/bulk-upload`), as Daytona's daemon does it.

Checked against daytonaio/daytona v0.190.0 (the last public tag), apps/daemon/pkg/toolbox/fs/
upload_files.go, read line by line; copied here, kinder in nothing:

- multipart parts are read in order; `files[i].path` is the destination, taken raw and
  `strings.TrimSpace`d (leading and trailing Unicode white space is dropped: `"a.txt "` is written
  to `a.txt`); an empty one is an error "empty path". A `files[i].file` part before its `.path`
  is an error "missing .path metadata" (the multipart filename is not read).
- no confinement at all: `os.MkdirAll(filepath.Dir(dest), 0755)` then `os.Create(dest)`, as the
  daemon's user. An absolute path is written where it says, `..` is resolved by the kernel (after
  `filepath.Dir` cleaned the directory lexically: `work/a/../b` fails with ENOENT unless `work/a`
  exists), symlinks are followed, an existing file is truncated.
- each failing file (NUL in the path, a name over 255 bytes, a path under a regular file, a
  directory as the destination, …) adds an error string, as Go prints it (`<dest>: create: open
  <dest>: no such file or directory`, `<dest>: mkdir <dir>: …`), and the loop goes on: the other
  files are written. Any error → 400 `{"errors": [...], "files": [...]}`; else 200 `{"files":
  [{"path", "bytes"}]}`. (The SDK raises `DaytonaError("400: <errors joined>")` for the first.)
- the SDK (0.226.1) also sends each destination as the part's filename, so aiohttp refuses a
  destination with CR, LF or NUL client-side; the daemon (v0.190.0) reads only `.path`.

The emulator keeps a sandbox's file system on this host: /home/daytona is the sandbox's
directory (`Sandbox.home`), every other path lives under `Sandbox.rootfs` (a skeleton of an
image's top directories: /etc, /tmp, /srv, …), so that a write outside /home/daytona is both
harmless here and visible to tests.
Symlinks are resolved inside that emulated file system, component by component as the kernel
does, never through this host's own /.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.daytona.state import HOME, Sandbox

HOME_PARTS = HOME.strip("/").split("/")
# The top of a sandbox image's file system (the rest of it is not emulated).
SKELETON = ("etc", "home", "opt", "root", "srv", "tmp", "usr", "var")
MAX_SYMLINKS = 40  # Linux' limit (ELOOP)
# Go's unicode.IsSpace (strings.TrimSpace): ASCII white space, U+0085, U+00A0 and the Unicode
# White_Space characters above Latin-1.
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"  # noqa: E501


def make_rootfs(home: Path) -> None:
    """The emulated file system outside /home/daytona of a new sandbox whose home is `home`."""
    rootfs = home.with_name(home.name + ".rootfs")
    for name in SKELETON:
        (rootfs / name).mkdir(parents=True)


def host_of(sb: Sandbox, parts: list[str]) -> Path:
    """The host path of a sandbox path given as its components from /."""
    if parts[:2] == HOME_PARTS:
        return sb.home.joinpath(*parts[2:])
    return sb.rootfs.joinpath(*parts)


def resolve(sb: Sandbox, path: str, *, follow_last: bool = True) -> Path:
    """Where `path` (absolute, in the sandbox) leads, following links as the kernel does.
    Raises OSError (ENOENT, ENOTDIR, ELOOP) where the kernel would."""
    pending = path.split("/")
    done: list[str] = []
    links = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        here = host_of(sb, [*done, name])
        is_last = not any(p not in ("", ".") for p in pending)
        if here.is_symlink() and (follow_last or not is_last):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            pending = target.split("/") + pending
            continue
        if not is_last and [*done, name] != HOME_PARTS[:1]:  # /home: the mount point's parent
            if not here.exists():
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            if not here.is_dir():
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        done.append(name)
    return host_of(sb, done)


def mkdir_all(sb: Sandbox, directory: str) -> None:
    """Go's os.MkdirAll: done if it is a directory; else its parent first, then mkdir."""
    try:
        target = resolve(sb, directory)
        if target.is_dir():
            return
        if target.exists():
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory)
    except OSError as error:
        if error.errno != errno.ENOENT:
            raise
    parent = posixpath.dirname(directory.rstrip("/"))
    if parent and parent != directory:
        mkdir_all(sb, parent)
    resolve(sb, directory, follow_last=False).mkdir(mode=0o755, exist_ok=True)


def go_error(error: OSError) -> str:
    """An errno as Go prints it (`syscall.Errno.Error()`: the C text, lower-cased)."""
    text = error.strerror or str(error)
    return text[:1].lower() + text[1:]


def create(sb: Sandbox, dest: str, content: bytes) -> str | None:
    """`os.MkdirAll(filepath.Dir(dest))` then `os.Create(dest)` and the write: None, or the
    error string the daemon reports for this file."""
    path = dest if dest.startswith("/") else f"{HOME}/{dest}"  # daemon's cwd: assumed home
    directory = posixpath.normpath(posixpath.dirname(path))  # filepath.Dir cleans
    try:
        if "\x00" not in directory:
            mkdir_all(sb, directory)
    except OSError as error:
        return f"{dest}: mkdir {directory}: mkdir {directory}: {go_error(error)}"
    try:
        if "\x00" in path:
            raise OSError(errno.EINVAL, "invalid argument")
        with open(resolve(sb, path), "wb") as out:  # O_CREAT | O_TRUNC, 0666 &^ umask
            out.write(content)
    except OSError as error:
        return f"{dest}: create: open {dest}: {go_error(error)}"
    return None


async def bulk_upload(sb: Sandbox, request: web.Request) -> web.StreamResponse:
    reader = await request.multipart()
    destinations: dict[str, str] = {}
    errors: list[str] = []
    files: list[dict[str, object]] = []
    while (part := await reader.next()) is not None:
        if not isinstance(part, aiohttp.BodyPartReader):
            errors.append("reading part: nested multipart")
            break
        name = part.name or ""
        index = re.sub(r"^files\[|\]\.(path|file)$", "", name)
        if name.endswith(".path"):
            raw = bytes(await part.read(decode=False))
            dest = raw.decode("utf-8", "surrogateescape").strip(GO_SPACE)
            if not dest:
                errors.append(f"path[{index}]: empty path")
                continue
            destinations[index] = dest
        elif name.endswith(".file"):
            content = bytes(await part.read(decode=False))
            if index not in destinations:
                errors.append(f"file[{index}]: missing .path metadata")
                continue
            dest = destinations[index]
            if (problem := create(sb, dest, content)) is not None:
                errors.append(problem)
                continue
            files.append({"path": dest, "bytes": len(content)})
        else:
            await part.read(decode=False)  # other fields are skipped
    if errors:
        return web.json_response({"errors": errors, "files": files}, status=400)
    return web.json_response({"files": files})
