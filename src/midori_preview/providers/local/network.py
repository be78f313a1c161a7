"""A network of its own for every sandbox command: bubblewrap gives the command an empty network
namespace (`--unshare-net`) and holds it before exec (`--block-fd`) while pasta (Debian `passt`)
connects that namespace to the internet through ordinary sockets of this host.

pasta is started so that nothing on the host is reachable from inside: the gateway address is not
mapped to the host's loopback (`--no-map-gw`), no host port is forwarded into the namespace
(`-T none -U none`), and the only way in is the one TCP port a server listens on, bound by pasta on
the host's 127.0.0.1 (`-t 127.0.0.1/PORT`): the preview gateway's upstream. The namespace's own
loopback is its own: 127.0.0.1:5432 inside is not the host's Postgres.

pasta detaches once the namespace is configured (its exit is the readiness signal) and writes its
pid to a file in the sandbox's directory: the command's process group does not hold it, so it is
ended by that file when the command ends, when the sandbox is deleted, and by a later process of
the service that finds the file left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from midori_preview.providers.base import ProviderError

PASTA_TIMEOUT = 20.0  # pasta configures a namespace in milliseconds; a loaded host may be slower
SETUP_TIMEOUT = 20.0  # bubblewrap's own set-up of the sandbox, before it waits for us
PIDFILE_GLOB = "pasta-*.pid"


def pasta_path() -> str | None:
    return shutil.which("pasta")


@dataclass(frozen=True, slots=True)
class NetworkSupport:
    """Whether commands can get a network namespace of their own here, and if not, why."""

    isolated: bool
    problem: str | None = None


def probe_support(bwrap: str | None, pasta: str | None) -> NetworkSupport:
    """Checks once (at start-up) that bubblewrap can create a network namespace here and that
    pasta is installed to connect it."""
    if bwrap is None:
        return NetworkSupport(False, "bubblewrap is not installed")
    if pasta is None:
        return NetworkSupport(False, "pasta is not installed (apt-get install passt)")
    argv = [bwrap, "--ro-bind", "/", "/", "--unshare-net", "--cap-drop", "ALL", "--", "/bin/true"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return NetworkSupport(False, f"bubblewrap could not start: {exc}")
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["failed"]
        return NetworkSupport(False, f"this host cannot create network namespaces: {reason[0]}")
    return NetworkSupport(True)


class Gate:
    """The two pipes between us and one bubblewrap: it writes what it created to `info`, and waits
    on `block` before running the command."""

    def __init__(self) -> None:
        self.info_read, self.info_write = os.pipe()
        self.block_read, self.block_write = os.pipe()
        self._open = {self.info_read, self.info_write, self.block_read, self.block_write}

    def bwrap_args(self) -> list[str]:
        return ["--info-fd", str(self.info_write), "--block-fd", str(self.block_read)]

    @property
    def child_fds(self) -> tuple[int, int]:
        return (self.info_write, self.block_read)

    def _close(self, fd: int) -> None:
        if fd in self._open:
            self._open.discard(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def started(self) -> None:
        """The child holds its own copies now (and our info end sees EOF when it closes them)."""
        for fd in self.child_fds:
            self._close(fd)

    async def child_pid(self) -> int:
        """The pid (ours) of the sandbox's first process, from bubblewrap's info."""
        data = await asyncio.to_thread(_read_all, self.info_read)
        try:
            return int(json.loads(data)["child-pid"])
        except (ValueError, KeyError, TypeError):
            raise ProviderError("the sandbox could not start (bubblewrap gave no pid)") from None

    async def set_up(self, pid: int) -> None:
        """Wait until bubblewrap has set the sandbox up and waits on `block`: it configures the
        namespace's loopback itself, and pasta doing so at the same time makes it fail. The
        last thing it does before waiting is dropping every capability (`--cap-drop ALL`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETUP_TIMEOUT
        while not _capabilities_dropped(pid):
            if loop.time() > deadline:
                raise ProviderError("the sandbox could not start in time")
            await asyncio.sleep(0.002)

    def release(self) -> None:
        """Let the command run (once)."""
        if self.block_write in self._open:
            with contextlib.suppress(OSError):
                os.write(self.block_write, b"1")
            self._close(self.block_write)

    def close(self) -> None:
        for fd in list(self._open):
            self._close(fd)


def _capabilities_dropped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        raise ProviderError("the sandbox ended before its network was set up") from None
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16) == 0
    return False


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def pasta_argv(pasta: str, pidfile: Path, forward_port: int | None, ns: Namespaces) -> list[str]:
    ports = f"127.0.0.1/{forward_port}" if forward_port is not None else "none"
    argv = [pasta, "--config-net", "--quiet", "--no-map-gw"]
    argv += ["--tcp-ports", ports, "--udp-ports", "none", "--tcp-ns", "none", "--udp-ns", "none"]
    argv += ["--pid", str(pidfile)]
    if os.getuid() == 0:
        argv += ["--runas", "0:0"]  # as nobody, pasta could not join a namespace root made
    if ns.user is None:  # bubblewrap ran privileged: no user namespace of its own
        return [*argv, "--netns", ns.path(ns.net), "--netns-only"]
    return [*argv, "--userns", ns.path(ns.user), "--netns", ns.path(ns.net)]


class Namespaces:
    """The sandbox's namespaces, opened by us: pasta, which gives up most capabilities before it
    opens them, could not open /proc/PID/ns/* of a process that still holds more (bubblewrap's,
    before it drops them); it gets our descriptors as /proc/self/fd/N instead."""

    def __init__(self, pid: int) -> None:
        self.net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.user: int | None = None
        try:
            if not _same_userns(pid):
                self.user = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self.net)
            raise

    @staticmethod
    def path(fd: int) -> str:
        return f"/proc/self/fd/{fd}"

    @property
    def fds(self) -> tuple[int, ...]:
        return (self.net,) if self.user is None else (self.net, self.user)

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _same_userns(pid: int) -> bool:
    return os.stat(f"/proc/{pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino


async def connect(pasta: str, child_pid: int, root: Path, forward_port: int | None) -> Path:
    """Connect the network namespace of `child_pid` (pasta detaches when it is done); returns
    the file holding pasta's pid."""
    pidfile = root / f"pasta-{secrets.token_hex(6)}.pid"
    try:
        ns = Namespaces(child_pid)
    except OSError:
        raise ProviderError("the sandbox ended before its network was set up") from None
    # Its messages go to a file, not a pipe: the detached pasta must hold nothing of ours open
    # (with uvloop, a pipe it inherited kept `communicate()` waiting).
    with tempfile.TemporaryFile() as err:
        try:
            process = await asyncio.create_subprocess_exec(
                *pasta_argv(pasta, pidfile, forward_port, ns),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                pass_fds=ns.fds,
            )
        finally:
            ns.close()
        try:
            async with asyncio.timeout(PASTA_TIMEOUT):
                code = await process.wait()
        except BaseException as exc:  # timed out, or cancelled: no pasta may stay behind
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())
            stop(pidfile)
            pidfile.unlink(missing_ok=True)
            if isinstance(exc, TimeoutError):
                raise ProviderError("the sandbox's network could not be set up in time") from None
            raise
        if code != 0:
            stop(pidfile)
            pidfile.unlink(missing_ok=True)
            err.seek(0)
            lines = err.read(4096).decode("utf-8", "replace").strip().splitlines()
            detail = lines[-1] if lines else f"pasta exited with {code}"
            raise ProviderError(f"the sandbox's network could not be set up: {detail}")
    return pidfile


def stop(pidfile: Path) -> int | None:
    """SIGKILL the pasta that wrote `pidfile` (checked by its command line: a pid may be reused);
    its pid, for `gone`."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pidfile.unlink(missing_ok=True)
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            ours = str(pidfile).encode() in f.read()
    except OSError:
        ours = False
    if not ours:
        pidfile.unlink(missing_ok=True)
        return None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    return pid  # the file stays until it is gone: whoever else ends it waits for it too


def gone(pid: int) -> bool:
    """Ended: every thread of it a zombie or gone (a zombie holds no socket any more — but a
    thread group's leader turns zombie while its other threads still exit holding the files)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X"):
            return False
    return True


async def end(pidfile: Path, *, timeout: float = 5.0) -> None:
    """Stop the pasta of `pidfile` and wait until it is gone: its forwarded port with it."""
    await end_all([pidfile], timeout=timeout)


async def end_all(files: list[Path], *, ports: Iterable[int] = (), timeout: float = 5.0) -> None:
    """End these pastas; return once each is gone and none of the host `ports` they forwarded
    is listening any more (the kernel tears a dead process's listening socket down a moment
    after the process itself: a stop must not answer before that)."""
    pids = [pid for pidfile in files if (pid := stop(pidfile)) is not None]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and not (  # noqa: ASYNC110 - polls /proc
        all(gone(pid) for pid in pids) and not listening(ports)
    ):
        await asyncio.sleep(0.005)
    for pidfile in files:
        pidfile.unlink(missing_ok=True)


def listening(ports: Iterable[int]) -> bool:
    """Whether a TCP socket listens on 127.0.0.1 at any of `ports` (read from /proc/net/tcp:
    no connection made)."""
    wanted = {f"0100007F:{port:04X}" for port in ports}
    if not wanted:
        return False
    try:
        with open("/proc/net/tcp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return False
    return any(
        fields[1] in wanted and fields[3] == "0A"  # 0A: LISTEN
        for fields in (line.split() for line in lines)
    )


def pidfiles(root: Path) -> list[Path]:
    """The pid files of every pasta of the sandbox directory `root`."""
    try:
        return list(root.glob(PIDFILE_GLOB))
    except OSError:
        return []


def stop_all(root: Path) -> None:
    """At start-up: end every pasta a sandbox directory of an earlier process names."""
    pids = [pid for pidfile in pidfiles(root) if (pid := stop(pidfile)) is not None]
    for _ in range(1000):  # at most ~5 s
        if all(gone(pid) for pid in pids):
            break
        time.sleep(0.005)
    for pidfile in pidfiles(root):
        pidfile.unlink(missing_ok=True)
