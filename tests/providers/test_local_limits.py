"""The local provider's per-sandbox limits, below the service: a pids cgroup per sandbox (which
also ends what left the sandbox's process group), the disk use it counts, and the loud
degradation where the host gives no cgroup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from midori_preview.providers.base import SandboxSpec
from midori_preview.providers.local import limits
from midori_preview.providers.local.limits import disk_usage
from tests.previews.helpers import pids_with_marker
from tests.providers.test_local_provider import MODES, STEP_TIMEOUT, make_provider, marker
from tests.support.waiting import eventually


@pytest.mark.parametrize("isolation", MODES)
async def test_what_left_the_process_group_ends_with_the_sandbox(
    tmp_path: Path, isolation: str
) -> None:
    provider = make_provider(tmp_path / "sandboxes", isolation)
    if provider.process_limit != "cgroup":
        await provider.aclose()
        pytest.skip(f"no pids cgroup here: {provider.cgroups.problem}")
    tag = marker()
    try:
        sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
        # A server whose shell started a daemon in a session of its own (out of the group).
        await provider.start_server(
            sandbox, f"setsid sh -c 'sleep 300; true' {tag} & exec sleep 300", port=3000
        )
        await eventually(lambda: bool(pids_with_marker(tag)), within=STEP_TIMEOUT, what="daemon")
        await provider.delete(sandbox)
        await eventually(lambda: not pids_with_marker(tag), within=10, what="daemon ended")
        assert provider.cgroups.base is not None
        assert not (provider.cgroups.base / "sbx1").exists()  # its cgroup is gone too
    finally:
        await provider.aclose()
        for pid in pids_with_marker(tag):
            os.kill(pid, 9)
    assert provider.cgroups.base is not None and not provider.cgroups.base.exists()


async def test_without_a_pids_cgroup_the_host_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path / "no-cgroups")
    provider = make_provider(tmp_path / "sandboxes", "none")
    try:
        assert provider.cgroups.base is None
        assert provider.cgroups.problem and "no pids cgroup controller" in provider.cgroups.problem
        # Root is exempt from RLIMIT_NPROC: nothing limits a sandbox's processes then.
        expected = None if os.getuid() == 0 else "rlimit"
        assert provider.process_limit == expected
        assert provider.isolation["processLimit"] == expected
    finally:
        await provider.aclose()


def test_disk_usage_counts_blocks_once_and_follows_no_link(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"x" * 1_000_000)
    os.link(tmp_path / "d" / "a", tmp_path / "hard")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "big").write_bytes(b"y" * 3_000_000)
    (tmp_path / "d" / "link").symlink_to(tmp_path / "outside")
    used = disk_usage(tmp_path / "d")
    assert 1_000_000 <= used < 1_200_000
    assert disk_usage(tmp_path / "d") < disk_usage(tmp_path) < 4_400_000 + 200_000
