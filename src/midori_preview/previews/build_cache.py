"""Built output of templates whose build does not depend on the promptJson (the vite template
reads its prompt.json at run time), kept per template version: after the first real
`npm ci` + `vite build`, a preview of that template only uploads the built files and its own
prompt.json and serves them — about the cost of a static preview."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import tempfile
from pathlib import Path

from midori_preview.logging import get_logger
from midori_preview.providers.base import FileData

log = get_logger(__name__)

MAX_BYTES = 50 * 1024 * 1024
MAX_FILES = 2000


class BuildCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._memory: dict[str, list[FileData]] = {}

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.tar.gz"

    def get(self, key: str) -> list[FileData] | None:
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if not path.exists():
            return None
        try:
            files = unpack(path.read_bytes())
        except (OSError, ValueError, tarfile.TarError):
            log.warning("build_cache.unreadable", key=key)
            return None
        self._memory[key] = files
        return files

    async def put(self, key: str, archive: bytes) -> bool:
        """Keep a `tar.gz` of built files (regular files only, checked paths and sizes)."""
        try:
            files = unpack(archive)
        except (ValueError, tarfile.TarError) as exc:
            log.warning("build_cache.rejected", key=key, reason=str(exc)[:200])
            return False
        await asyncio.to_thread(self._write, key, archive)
        self._memory[key] = files
        log.info("build_cache.stored", key=key, files=len(files))
        return True

    def _write(self, key: str, archive: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "wb") as out:
            out.write(archive)
        os.replace(tmp, self._path(key))  # atomic: readers see all of it or nothing


def unpack(archive: bytes) -> list[FileData]:
    if len(archive) > MAX_BYTES:
        raise ValueError("archive too large")
    files: list[FileData] = []
    total = 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar:
            if member.isdir():
                continue
            if not member.isfile():
                raise ValueError(f"not a regular file: {member.name}")
            name = member.name.removeprefix("./")
            parts = name.split("/")
            if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise ValueError(f"unsafe path: {member.name}")
            total += member.size
            if total > MAX_BYTES or len(files) >= MAX_FILES:
                raise ValueError("build output too large")
            data = tar.extractfile(member)
            if data is None:
                raise ValueError(f"unreadable: {member.name}")
            files.append(FileData(name, data.read()))
    if not files:
        raise ValueError("empty build output")
    return files
