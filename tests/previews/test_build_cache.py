"""The template build cache keeps safe regular files only, on disk as one tar.gz per key, and
reads back exactly what it stored (also in a new process, from disk)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from midori_preview.previews.build_cache import BuildCache
from midori_preview.providers.base import FileData
from midori_preview.providers.files import pack

BUILT = [FileData("index.html", b"<h1>built</h1>"), FileData("assets/app.js", b"x=1")]


async def test_stored_files_come_back_from_memory_and_from_disk(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    assert cache.get("vite-1") is None
    assert await cache.store("vite-1", BUILT)
    assert cache.get("vite-1") == BUILT
    assert (tmp_path / "vite-1.tar.gz").read_bytes() == pack(BUILT)
    assert BuildCache(tmp_path).get("vite-1") == BUILT  # a new process reads it from disk
    assert [p.name for p in tmp_path.iterdir()] == ["vite-1.tar.gz"]  # no temporary left


async def test_unsafe_files_are_not_kept(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path)
    assert not await cache.store("vite-1", [FileData("../escape", b"x")])
    assert not await cache.store("vite-2", [])
    assert cache.get("vite-1") is None and not list(tmp_path.iterdir())


async def test_a_tampered_entry_on_disk_is_a_miss(tmp_path: Path) -> None:
    """What is read from disk goes through the same untar: a link in it is never served."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        link = tarfile.TarInfo("index.html")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "vite-1.tar.gz").write_bytes(out.getvalue())
    assert BuildCache(tmp_path).get("vite-1") is None


async def test_an_unreadable_file_on_disk_is_a_miss(tmp_path: Path) -> None:
    (tmp_path / "vite-1.tar.gz").write_bytes(b"garbage")
    assert BuildCache(tmp_path).get("vite-1") is None
