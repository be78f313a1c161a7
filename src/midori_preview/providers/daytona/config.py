"""What the Daytona provider needs: the app builds it from settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DaytonaProviderConfig:
    """Everything the Daytona provider needs; the app builds it from settings."""

    api_key: str = field(repr=False)
    api_url: str = "https://app.daytona.io/api"
    target: str | None = None
    deployment: str = "default"  # label value: which installation owns a sandbox
    snapshot: str | None = None
    image: str | None = None  # required with cpu/memory/disk: only image builds are sized
    cpu: int | None = None  # vCPUs
    memory: int | None = None  # GB
    disk: int | None = None  # GB
    idle_timeout_seconds: float = 300
    auto_stop_margin_seconds: float = 120
    workdir: str = "/home/daytona/app"
    request_timeout_seconds: float = 30
    upload_timeout_seconds: int = 300
    clone_timeout_seconds: float = 300
    retry_attempts: int = 4
    retry_deadline_seconds: float = 60
    retry_initial_backoff_seconds: float = 0.5
    retry_max_backoff_seconds: float = 8
    delete_deadline_seconds: float = 30  # deletes wait out 409s this long, then the reaper
    poll_interval_seconds: float = 0.5
    output_tail_lines: int = 50

    def __post_init__(self) -> None:
        if self.api_url.endswith("/"):
            raise ValueError("api_url must not end with a slash (the SDK would call //sandbox)")
        if self.image is None and (self.cpu or self.memory or self.disk):
            raise ValueError(
                "cpu/memory/disk need an image: Daytona sizes sandboxes built from an image, "
                "a snapshot brings its own resources"
            )
        if self.retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1")

    @property
    def auto_stop_minutes(self) -> int:
        """Daytona's auto-stop: a little above our idle timeout, whole minutes, at least 1."""
        return max(1, math.ceil((self.idle_timeout_seconds + self.auto_stop_margin_seconds) / 60))
