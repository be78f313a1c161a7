"""The emulator's bulk upload is the daemon's (daytona v0.190.0, apps/daemon/pkg/toolbox/fs/
upload_files.go; see tests/support/daytona/files.py), driven by the real SDK: no confinement,
paths `TrimSpace`d, `..` and symlinks resolved by the kernel, per-file errors with the other files
still written. These are the behaviours the service's own path checks have to stand in front of."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from daytona import AsyncDaytona, AsyncSandbox, DaytonaConfig, DaytonaError, FileUpload

from tests.support.daytona import DaytonaEmulator


@pytest.fixture
async def sandbox(emulator: DaytonaEmulator) -> AsyncIterator[AsyncSandbox]:
    config = DaytonaConfig(
        api_key=emulator.api_key, api_url=emulator.api_url, target=emulator.target
    )
    client = AsyncDaytona(config)
    try:
        yield await client.create(timeout=30)
    finally:
        await client.close()


def home(emulator: DaytonaEmulator, sb: AsyncSandbox) -> Path:
    return emulator.sandbox_home(sb.id)


def rootfs(emulator: DaytonaEmulator, sb: AsyncSandbox) -> Path:
    """Where the emulator keeps what the sandbox has outside /home/daytona."""
    h = home(emulator, sb)
    return h.with_name(h.name + ".rootfs")


async def test_paths_are_trimmed_of_white_space(
    emulator: DaytonaEmulator, sandbox: AsyncSandbox
) -> None:
    uploads = [
        FileUpload(b"one", "/home/daytona/a.txt "),
        FileUpload(b"two", "/home/daytona/b.txt\u3000"),
        FileUpload(b"three", " /home/daytona/c.txt\u2028"),
    ]
    await sandbox.fs.upload_files(uploads)
    h = home(emulator, sandbox)
    assert sorted(p.name for p in h.iterdir()) == ["a.txt", "b.txt", "c.txt"]
    assert (h / "a.txt").read_bytes() == b"one" and (h / "c.txt").read_bytes() == b"three"


async def test_nothing_confines_a_write(emulator: DaytonaEmulator, sandbox: AsyncSandbox) -> None:
    """Absolute paths and `..` go where they say: outside the home directory too."""
    uploads = [
        FileUpload(b"etc", "/etc/planted"),
        FileUpload(b"up", "/home/daytona/../outside.txt"),
    ]
    await sandbox.fs.upload_files(uploads)
    assert (rootfs(emulator, sandbox) / "etc" / "planted").read_bytes() == b"etc"
    assert (rootfs(emulator, sandbox) / "home" / "outside.txt").read_bytes() == b"up"
    assert not Path("/etc/planted").exists()  # this host's own / is never written


async def test_a_symlink_on_the_way_is_followed_inside_the_sandbox(
    emulator: DaytonaEmulator, sandbox: AsyncSandbox
) -> None:
    h = home(emulator, sandbox)
    (h / "app").mkdir()
    (h / "app" / "link").symlink_to("/srv")  # as a git source could plant it
    (h / "app" / "dangling").symlink_to("/nowhere")
    await sandbox.fs.upload_files([FileUpload(b"x", "/home/daytona/app/link/x.txt")])
    assert (rootfs(emulator, sandbox) / "srv" / "x.txt").read_bytes() == b"x"
    assert not Path("/srv/x.txt").exists()
    # Go's MkdirAll meets a link to nothing: mkdir says it exists, Lstat says it is no directory
    with pytest.raises(DaytonaError, match="mkdir /home/daytona/app/dangling: file exists"):
        await sandbox.fs.upload_files([FileUpload(b"x", "/home/daytona/app/dangling/x.txt")])


async def test_the_sdk_refuses_control_characters_itself(sandbox: AsyncSandbox) -> None:
    """A destination rides in the multipart filename too: aiohttp refuses a header with an
    ASCII control character but tab (CR, LF, NUL, DEL, …) before anything is sent."""
    for bad in ("/home/daytona/a\nb", "/home/daytona/a\x00b", "/home/daytona/a\x7fb"):
        with pytest.raises(DaytonaError, match="Forbidden control character"):
            await sandbox.fs.upload_files([FileUpload(b"x", bad)])


async def test_one_bad_file_fails_the_call_and_the_others_are_written(
    emulator: DaytonaEmulator, sandbox: AsyncSandbox
) -> None:
    uploads = [
        FileUpload(b"ok", "/home/daytona/ok.txt"),
        FileUpload(b"long", "/home/daytona/" + "n" * 256),
        # `filepath.Dir` cleans `gone/..` away, so `gone` is never made: the kernel says ENOENT
        FileUpload(b"dots", "/home/daytona/gone/../dots.txt"),
        FileUpload(b"under", "/home/daytona/ok.txt/under"),
        FileUpload(b"last", "/home/daytona/last.txt"),
    ]
    with pytest.raises(DaytonaError) as caught:
        await sandbox.fs.upload_files(uploads)
    message = str(caught.value)
    assert caught.value.status_code == 400, message
    for expected in (
        "file name too long",
        "/home/daytona/gone/../dots.txt: create: open /home/daytona/gone/../dots.txt: no such file",
        "not a directory",
    ):
        assert expected in message, message
    h = home(emulator, sandbox)
    assert sorted(p.name for p in h.iterdir()) == ["last.txt", "ok.txt"]
