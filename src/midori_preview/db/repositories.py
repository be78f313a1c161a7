"""Every repository on one database: what the composition root hands to the services."""

from __future__ import annotations

from dataclasses import dataclass

from midori_preview.db.database import Database
from midori_preview.db.github import GitHubRepository
from midori_preview.db.health import HealthRepository
from midori_preview.db.idempotency import IdempotencyRepository
from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.db.service_state import ServiceStateRepository
from midori_preview.db.sources import SourceRepository
from midori_preview.db.usage import UsageRepository


@dataclass(frozen=True, slots=True)
class Repositories:
    database: Database
    sandboxes: SandboxRepository
    usage: UsageRepository
    idempotency: IdempotencyRepository
    github: GitHubRepository
    service_state: ServiceStateRepository
    health: HealthRepository
    sources: SourceRepository

    @classmethod
    def on(cls, database: Database) -> Repositories:
        return cls(
            database=database,
            sandboxes=SandboxRepository(database),
            usage=UsageRepository(database),
            idempotency=IdempotencyRepository(database),
            github=GitHubRepository(database),
            service_state=ServiceStateRepository(database),
            health=HealthRepository(database),
            sources=SourceRepository(database),
        )
