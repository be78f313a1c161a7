"""Per-sandbox limits that rlimits cannot give: a process count per sandbox (a cgroup's pids.max:
RLIMIT_NPROC counts per uid and does not apply to root at all), and a disk budget for the
sandbox's directory (checked by a watchdog: no filesystem quota is needed). A sandbox past either
is ended by the provider with a clear error code."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

from midori_preview.logging import get_logger
from midori_preview.providers.base import ProviderError

log = get_logger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PREFIX = "midori-preview-"


class SandboxLimitExceeded(ProviderError):
    """The sandbox went past one of its limits and was ended."""

    code = "sandbox_limit"


class ProcessLimitExceeded(SandboxLimitExceeded):
    code = "sandbox_process_limit"


class DiskLimitExceeded(SandboxLimitExceeded):
    code = "sandbox_disk_limit"


@dataclass(frozen=True, slots=True)
class ProcessCgroups:
    """Where this service makes a pids cgroup per sandbox (None: it cannot, `problem` says
    why)."""

    base: Path | None
    problem: str | None = None

    def sandbox(self, sandbox_id: str, max_processes: int) -> SandboxCgroup | None:
        if self.base is None or max_processes <= 0:
            return None
        path = self.base / sandbox_id
        try:
            path.mkdir(exist_ok=True)
            (path / "pids.max").write_text(str(max_processes))
        except OSError as exc:
            log.warning("sandbox.cgroup_failed", sandbox_id=sandbox_id, error=str(exc))
            return None
        return SandboxCgroup(path)

    def remove(self) -> None:
        if self.base is not None:
            with contextlib.suppress(OSError):
                self.base.rmdir()


def _pids_hierarchy(root: Path) -> tuple[Path | None, str | None]:
    """The pids controller's hierarchy: cgroup v2 (unified) or v1's `pids` mount."""
    controllers = root / "cgroup.controllers"
    if controllers.exists():  # v2: children of the root get pids once it is enabled there
        if "pids" not in controllers.read_text().split():
            return None, "the cgroup v2 hierarchy has no pids controller"
        try:
            (root / "cgroup.subtree_control").write_text("+pids")
        except OSError as exc:
            return None, f"cannot enable the pids controller ({exc.strerror})"
        return root, None
    if (root / "pids" / "cgroup.procs").exists():  # v1
        return root / "pids", None
    return None, f"no pids cgroup controller under {root}"


def find_process_cgroups(root: Path | None = None) -> ProcessCgroups:
    """This provider's own cgroup directory for its sandboxes, made now. Leftovers of an earlier
    process of the service (dead pid) are emptied and removed first."""
    hierarchy, problem = _pids_hierarchy(root or CGROUP_ROOT)
    if hierarchy is None:
        return ProcessCgroups(None, problem)
    for old in hierarchy.glob(f"{PREFIX}*"):
        pid = old.name.removeprefix(PREFIX).split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for child in [p for p in old.iterdir() if p.is_dir()]:
                SandboxCgroup(child).remove()
            with contextlib.suppress(OSError):
                old.rmdir()
    # One per provider (tests run several in one process, with the same sandbox ids).
    base = hierarchy / f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        base.mkdir(exist_ok=True)
        probe = base / "probe"
        probe.mkdir(exist_ok=True)
        ok = (probe / "pids.max").exists()
        probe.rmdir()
    except OSError as exc:
        return ProcessCgroups(None, f"cannot make a cgroup in {hierarchy} ({exc.strerror})")
    if not ok:
        return ProcessCgroups(None, f"cgroups in {hierarchy} have no pids.max")
    return ProcessCgroups(base)


@dataclass(frozen=True, slots=True)
class SandboxCgroup:
    path: Path

    def join(self) -> None:
        """Move the calling process in (between fork and exec: everything it starts follows)."""
        with open(self.path / "cgroup.procs", "w") as f:
            f.write("0")

    def limit_hit(self) -> bool:
        """Whether a fork was refused for want of pids."""
        try:
            events = (self.path / "pids.events").read_text()
        except OSError:
            return False
        for line in events.splitlines():
            key, _, value = line.partition(" ")
            if key == "max" and value.strip() not in ("", "0"):
                return True
        return False

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self) -> None:
        """SIGKILL every process in it, also those that left their process group (`setsid`).
        Frozen in place: with no pids left to fork into, killing converges."""
        kill_file = self.path / "cgroup.kill"  # v2, Linux 5.14+
        if kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1")
                return
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        self.kill_all()
        for _ in range(200):  # killed processes leave the cgroup as they are reaped
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                os.sched_yield()
        log.warning("sandbox.cgroup_left", path=str(self.path), pids=len(self.pids()))


def disk_usage(path: Path) -> int:
    """Bytes of disk used under `path` (allocated blocks, each hard-linked file once, symlinks
    not followed)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return total
