"""Daytona sandboxes through the `daytona` SDK: the provider (`provider`) and its settings
(`config`), how SDK errors map to ours and are retried (`errors`), session commands with live
output (`sessions`), and how our sandboxes are labelled and Daytona's states read (`labels`)."""

from midori_preview.providers.daytona.config import DaytonaProviderConfig
from midori_preview.providers.daytona.provider import DaytonaProvider, DaytonaSandboxFailed

__all__ = ["DaytonaProvider", "DaytonaProviderConfig", "DaytonaSandboxFailed"]
