"""Fixtures for provider tests: the Daytona API emulator, served to the real `daytona` SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.daytona import DaytonaEmulator


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[DaytonaEmulator]:
    # The SDK's aiohttp sessions and httpx trust proxy variables: keep loopback traffic local.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with DaytonaEmulator() as emu:
        yield emu
