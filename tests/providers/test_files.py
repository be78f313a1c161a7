"""The file safety helpers, each proven directly: writes that never follow a planted link, the
only untar we use (no `..`, absolute paths, links, devices; bounded count and size, checked
before anything is read), and reading a sandbox's directory back through the provider port."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from midori_preview.providers.base import FileData, ProviderSandbox, SandboxSpec
from midori_preview.providers.files import (
    ArchiveLimits,
    ArchiveTooLarge,
    EmptyArchive,
    UnsafeArchive,
    UnsafePath,
    pack,
    path_problem,
    read_archive,
    untar,
    write_files,
)
from midori_preview.providers.local import LocalProvider
from tests.providers.test_local_provider import make_provider

LIMITS = ArchiveLimits(max_files=10, max_bytes=10_000)
SITE = [
    FileData("index.html", b"<h1>hi</h1>"),
    FileData("css/site.css", b"h1{}"),
    FileData("img/dot.bin", bytes(range(256))),
    FileData("content/name.txt", "บ้านกาแฟ\n".encode()),
]


# --- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("index.html", None),
        ("a/b/c.txt", None),
        ("", "empty or too long"),
        ("x" * 1025, "empty or too long"),
        ("a\x00b", "contains NUL"),
        ("a\\b", "contains a backslash"),
        ("/etc/passwd", "is absolute"),
        ("C:x", "is absolute"),
        ("../x", "contains '..'"),
        ("a/../../x", "contains '..'"),
        ("a//b", "has an empty or '.' segment"),
        ("./a", "has an empty or '.' segment"),
        ("a/", "has an empty or '.' segment"),
        ("a\nb", "contains a control character"),
    ],
)
def test_path_rules(path: str, problem: str | None) -> None:
    assert path_problem(path) == problem


# --- writing ----------------------------------------------------------------------------------


def test_files_are_written_byte_exact_with_their_directories(tmp_path: Path) -> None:
    write_files(tmp_path, SITE)
    for f in SITE:
        assert (tmp_path / f.path).read_bytes() == f.content
    write_files(tmp_path, [FileData("index.html", b"again")])  # overwrites in place
    assert (tmp_path / "index.html").read_bytes() == b"again"


def test_a_planted_file_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside.txt"
    root.mkdir()
    outside.write_text("precious")
    (root / "index.html").symlink_to(outside)
    with pytest.raises(UnsafePath) as caught:
        write_files(root, [FileData("index.html", b"pwned")])
    assert caught.value.path == "index.html"
    assert outside.read_text() == "precious"


def test_a_planted_directory_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "css").symlink_to(outside)
    with pytest.raises(UnsafePath):
        write_files(root, [FileData("css/site.css", b"pwned")])
    with pytest.raises(UnsafePath):
        write_files(root, [FileData("css/new/site.css", b"pwned")])
    assert list(outside.iterdir()) == []


def test_a_symlink_to_inside_is_refused_too(tmp_path: Path) -> None:
    """Even a link that stays inside: its target may change between a check and the write."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePath):
        write_files(tmp_path, [FileData("alias/x.txt", b"x")])
    assert list((tmp_path / "real").iterdir()) == []


@pytest.mark.parametrize("path", ["../escape.txt", "/abs.txt", "a//b", ""])
def test_unsafe_paths_are_refused_before_anything_is_written(tmp_path: Path, path: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(UnsafePath):
        write_files(root, [FileData(path, b"x")])
    assert list(tmp_path.rglob("*")) == [root]


def test_a_file_where_a_directory_is_needed_is_refused(tmp_path: Path) -> None:
    write_files(tmp_path, [FileData("a", b"file")])
    with pytest.raises(UnsafePath):
        write_files(tmp_path, [FileData("a/b.txt", b"x")])
    (tmp_path / "d").mkdir()
    with pytest.raises(UnsafePath):
        write_files(tmp_path, [FileData("d", b"x")])


# --- archives ---------------------------------------------------------------------------------


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None], mode: str = "w:gz") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def member(name: str, data: bytes = b"x", **attrs: object) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data if info.isfile() else None


def test_pack_and_untar_round_trip_byte_exact_and_deterministic() -> None:
    archive = pack(SITE)
    assert untar(archive, LIMITS) == SITE
    assert pack(SITE) == archive  # no times, no owners: the same files make the same bytes


def test_tar_as_made_by_tar_c_dot_is_read_without_the_leading_dot() -> None:
    directory = tarfile.TarInfo(".")
    directory.type = tarfile.DIRTYPE
    archive = tar_of((directory, None), member("./index.html", b"a"), member("./d/e.txt", b"b"))
    assert untar(archive, LIMITS) == [FileData("index.html", b"a"), FileData("d/e.txt", b"b")]
    assert untar(tar_of(member("a.txt"), mode="w"), LIMITS) == [FileData("a.txt", b"x")]


UNSAFE: dict[str, Callable[[], tuple[tarfile.TarInfo, bytes | None]]] = {
    "dot-dot": lambda: member("../../etc/cron.d/x"),
    "absolute": lambda: member("/etc/passwd"),
    "symlink": lambda: member("link", b"", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
    "hardlink": lambda: member("hard", b"", type=tarfile.LNKTYPE, linkname="/etc/passwd"),
    "char device": lambda: member("tty", b"", type=tarfile.CHRTYPE, devmajor=5, devminor=0),
    "block device": lambda: member("sda", b"", type=tarfile.BLKTYPE, devmajor=8, devminor=0),
    "fifo": lambda: member("pipe", b"", type=tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_an_unsafe_member_refuses_the_archive(kind: str) -> None:
    archive = tar_of(member("ok.txt"), UNSAFE[kind]())
    with pytest.raises(UnsafeArchive):
        untar(archive, LIMITS)


@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_skip_mode_leaves_an_unsafe_member_out(kind: str) -> None:
    archive = tar_of(member("ok.txt"), UNSAFE[kind]())
    lenient = ArchiveLimits(max_files=10, max_bytes=10_000, skip_unsafe=True)
    assert untar(archive, lenient) == [FileData("ok.txt", b"x")]


def test_too_many_files_are_refused() -> None:
    with pytest.raises(ArchiveTooLarge) as caught:
        untar(tar_of(*(member(f"f{i}") for i in range(11))), LIMITS)
    assert caught.value.kind == "files"
    assert len(untar(tar_of(*(member(f"f{i}") for i in range(10))), LIMITS)) == 10


def test_too_many_members_of_any_kind_are_refused() -> None:
    dirs = []
    for i in range(1100):
        info = tarfile.TarInfo(f"d{i}")
        info.type = tarfile.DIRTYPE
        dirs.append((info, None))
    with pytest.raises(ArchiveTooLarge):
        untar(tar_of(*dirs, member("f")), LIMITS)


def test_too_large_files_are_refused_from_their_headers() -> None:
    with pytest.raises(ArchiveTooLarge) as caught:
        untar(tar_of(member("a", b"x" * 6000), member("b", b"y" * 6000)), LIMITS)
    assert caught.value.kind == "bytes"
    # A header claiming more than the limit is refused before its data is read (here there is
    # none: the archive is cut right after the header).
    info = tarfile.TarInfo("bomb")
    info.size = 10**12
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    with pytest.raises(ArchiveTooLarge):
        untar(header, LIMITS)


@pytest.mark.parametrize("data", [b"", b"not a tar", pack(SITE)[:100]])
def test_unreadable_archives_are_refused(data: bytes) -> None:
    with pytest.raises(UnsafeArchive):
        untar(data, LIMITS)


def test_an_archive_without_files_is_empty() -> None:
    directory = tarfile.TarInfo("d")
    directory.type = tarfile.DIRTYPE
    with pytest.raises(EmptyArchive):
        untar(tar_of((directory, None)), LIMITS)


# --- reading back through the port ------------------------------------------------------------


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[tuple[LocalProvider, ProviderSandbox]]:
    provider = make_provider(tmp_path / "sandboxes", "auto")
    sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
    try:
        yield provider, sandbox
    finally:
        await provider.aclose()


async def test_a_directory_is_read_back_with_one_command(
    local: tuple[LocalProvider, ProviderSandbox],
) -> None:
    provider, sandbox = local
    await provider.upload(
        sandbox,
        [
            *SITE,
            FileData("node_modules/x/index.js", b"big"),
            FileData("dist/app.js", b"built"),
            FileData("dist/prompt.json", b"{}"),
            FileData("dist/assets/a.css", b"a"),
        ],
    )
    everything = await read_archive(
        provider, sandbox, exclude=["node_modules"], timeout=30, limits=LIMITS
    )
    assert sorted(f.path for f in everything) == sorted(
        ["dist/app.js", "dist/assets/a.css", "dist/prompt.json", *(f.path for f in SITE)]
    )
    assert {f.path: f.content for f in everything}["img/dot.bin"] == bytes(range(256))
    dist = await read_archive(
        provider, sandbox, "dist", exclude=["./prompt.json"], timeout=30, limits=LIMITS
    )
    assert sorted(dist, key=lambda f: f.path) == [
        FileData("app.js", b"built"),
        FileData("assets/a.css", b"a"),
    ]


async def test_links_made_in_the_sandbox_do_not_come_back(
    local: tuple[LocalProvider, ProviderSandbox],
) -> None:
    provider, sandbox = local
    await provider.upload(sandbox, [FileData("index.html", b"hi")])
    made = await provider.exec(sandbox, "ln -s /etc/passwd passwd", timeout=30)
    assert made.exit_code == 0
    with pytest.raises(UnsafeArchive):
        await read_archive(provider, sandbox, timeout=30, limits=LIMITS)
    lenient = ArchiveLimits(max_files=10, max_bytes=10_000, skip_unsafe=True)
    assert await read_archive(provider, sandbox, timeout=30, limits=lenient) == [
        FileData("index.html", b"hi")
    ]


async def test_a_read_back_past_its_limits_is_refused(
    local: tuple[LocalProvider, ProviderSandbox],
) -> None:
    provider, sandbox = local
    # Incompressible, so the command's output itself outgrows the bound.
    await provider.upload(sandbox, [FileData("noise.bin", os.urandom(200_000))])
    with pytest.raises(ArchiveTooLarge) as caught:
        await read_archive(provider, sandbox, timeout=30, limits=LIMITS)
    assert caught.value.kind == "bytes"
    # Compressible: the output is small, the files' own size is what is over.
    await provider.exec(sandbox, "rm noise.bin && head -c 20000 /dev/zero > zeros", timeout=30)
    with pytest.raises(ArchiveTooLarge):
        await read_archive(provider, sandbox, timeout=30, limits=LIMITS)
