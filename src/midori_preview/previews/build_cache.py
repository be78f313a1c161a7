"""Built output of templates whose build does not depend on the promptJson (the vite template
reads its prompt.json at run time), kept per template version: after the first real
`npm ci` + `vite build`, a preview of that template only uploads the built files and its own
prompt.json and serves them — about the cost of a static preview.

On disk each entry is one `tar.gz` (`providers.files.pack`); whatever is read from it or
offered to it goes through `providers.files.untar`, so only safe regular files ever get in."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from midori_preview.logging import get_logger
from midori_preview.providers.base import FileData
from midori_preview.providers.files import ArchiveLimits, UnsafeArchive, UnsafePath, pack, untar

log = get_logger(__name__)

MAX_BYTES = 50 * 1024 * 1024
MAX_FILES = 2000
LIMITS = ArchiveLimits(max_files=MAX_FILES, max_bytes=MAX_BYTES)


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
            files = untar(path.read_bytes(), LIMITS)
        except (OSError, UnsafeArchive):
            log.warning("build_cache.unreadable", key=key)
            return None
        self._memory[key] = files
        return files

    async def store(self, key: str, files: Sequence[FileData]) -> bool:
        """Keep built files (as read back by `providers.files.read_archive` under `LIMITS`)."""
        try:
            archive = pack(files)
            kept = untar(archive, LIMITS)  # the same bounds whichever way files come in
        except (UnsafeArchive, UnsafePath) as exc:
            log.warning("build_cache.rejected", key=key, reason=str(exc)[:200])
            return False
        await asyncio.to_thread(self._write, key, archive)
        self._memory[key] = kept
        log.info("build_cache.stored", key=key, files=len(kept))
        return True

    async def put(self, key: str, archive: bytes) -> bool:
        """Keep a `tar.gz` of built files (regular files only, checked paths and sizes).

        Superseded by `store`: the pipeline's read-back goes through `read_archive`."""
        try:
            files = untar(archive, LIMITS)
        except UnsafeArchive as exc:
            log.warning("build_cache.rejected", key=key, reason=str(exc)[:200])
            return False
        return await self.store(key, files)

    def _write(self, key: str, archive: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        with os.fdopen(fd, "wb") as out:
            out.write(archive)
        os.replace(tmp, self._path(key))  # atomic: readers see all of it or nothing
