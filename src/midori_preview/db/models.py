"""ORM tables. All SQL lives in this package; services use its per-domain repositories."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    func,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from midori_preview.previews.states import SandboxStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class StatusType(TypeDecorator[SandboxStatus]):
    """A sandbox's state: the enum in Python, its value in a VARCHAR(16) column (an unknown value
    is refused on the way in and on the way out)."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else SandboxStatus(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> SandboxStatus | None:
        return None if value is None else SandboxStatus(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Sandbox(Base):
    __tablename__ = "sandboxes"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(200))
    project_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16), default="user")  # user | github
    provider: Mapped[str] = mapped_column(String(32))
    provider_id: Mapped[str | None] = mapped_column(String(200))
    source_kind: Mapped[str] = mapped_column(String(16))
    source_digest: Mapped[str] = mapped_column(String(64))
    template: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[SandboxStatus] = mapped_column(StatusType())
    reason: Mapped[str | None] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer)
    preview_url: Mapped[str | None] = mapped_column(Text)
    preview_token: Mapped[str | None] = mapped_column(Text)
    open_url: Mapped[str | None] = mapped_column(Text)
    open_url_expires_at: Mapped[datetime | None]
    # Where the preview gateway forwards this sandbox's traffic (the provider's own URL and the
    # headers that authorize the gateway there): secrets, never shown. Set when it runs.
    upstream_url: Mapped[str | None] = mapped_column(Text)
    upstream_headers: Mapped[dict[str, str] | None] = mapped_column(JSON)
    error_step: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_exit_code: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    logs_tail: Mapped[list[str] | None] = mapped_column(JSON)
    commands_run: Mapped[int] = mapped_column(Integer, default=0)
    visible: Mapped[bool] = mapped_column(Boolean, default=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    ready_at: Mapped[datetime | None]
    last_heartbeat_at: Mapped[datetime | None]
    charged_until: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]
    expires_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    # Live updates: which version of its source the preview serves (1 = as created), and when
    # the current one went live (None: never updated).
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    source_updated_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_sandboxes_user_status", "user_id", "status"),
        Index("ix_sandboxes_status_active", "status", "active"),
        Index("ix_sandboxes_user_project_digest", "user_id", "project_id", "source_digest"),
        # The reaper's due queries (migration 0006): past the TTL, lease lost, stuck stopping;
        # idle is `ix_sandboxes_idle` below (an expression).
        Index("ix_sandboxes_status_expires", "status", "expires_at"),
        Index("ix_sandboxes_status_lease", "status", "lease_expires_at"),
        Index("ix_sandboxes_active_status_updated", "active", "status", "updated_at"),
    )


# When a running sandbox was last known watched: its last heartbeat, else when it became ready,
# else its creation. The reaper's idle and watched queries order by it; indexed as such.
SEEN_AT = func.coalesce(Sandbox.last_heartbeat_at, Sandbox.ready_at, Sandbox.created_at)
Index("ix_sandboxes_idle", Sandbox.status, Sandbox.kind, Sandbox.visible, SEEN_AT)


class SandboxSource(Base):
    """What a sandbox serves, as live updates compare it: the commands and port it was built
    with (`spec`) and the sha256 of every file the service put into it (`files`)."""

    __tablename__ = "sandbox_sources"

    sandbox_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    files: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime]


class UsageLedger(Base):
    """Charged preview seconds per user, project and day (in USAGE_TIMEZONE)."""

    __tablename__ = "usage_ledger"

    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD
    project_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    seconds: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime]

    __table_args__ = (Index("ix_usage_ledger_day", "day"),)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    user_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    sandbox_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]


class ServiceState(Base):
    """Small shared switches and facts (reaper paused, last pass) that every replica reads."""

    __tablename__ = "service_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime]


class GitHubDelivery(Base):
    """One received GitHub webhook delivery: a redelivery with the same id is acted on once."""

    __tablename__ = "github_deliveries"

    delivery_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime]
    # None while its work runs (or it asked for none), `done`, or `failed`: a manual redelivery
    # of a failed delivery runs again, of any other is a no-op.
    outcome: Mapped[str | None] = mapped_column(String(16), default=None)

    __table_args__ = (Index("ix_github_deliveries_received_at", "received_at"),)


class GitHubPreview(Base):
    """What a pull request (`pr:<n>`) or branch (`branch:<name>`) of a repository is previewed
    by: its sandbox, head commit, the one PR comment and the current GitHub deployment."""

    __tablename__ = "github_previews"

    repo: Mapped[str] = mapped_column(String(200), primary_key=True)  # owner/name
    target: Mapped[str] = mapped_column(String(300), primary_key=True)
    pr_number: Mapped[int | None] = mapped_column(Integer)
    branch: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))  # building | ready | failed | stopped | closed
    sandbox_id: Mapped[str | None] = mapped_column(String(32))
    head_sha: Mapped[str] = mapped_column(String(40))
    comment_id: Mapped[int | None] = mapped_column(BigInteger)
    deployment_id: Mapped[int | None] = mapped_column(BigInteger)
    installation_id: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str | None] = mapped_column(Text)
    event_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # What GitHub should show, kept until it does (the reconcile job re-sends what is unsynced).
    comment_body: Mapped[str | None] = mapped_column(Text, default=None)
    comment_synced: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    deploy_state: Mapped[str | None] = mapped_column(String(16), default=None)
    deploy_description: Mapped[str | None] = mapped_column(String(140), default=None)
    deploy_url: Mapped[str | None] = mapped_column(Text, default=None)
    deploy_synced: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    __table_args__ = (Index("ix_github_previews_sandbox_id", "sandbox_id"),)


class PendingDelete(Base):
    """A provider sandbox that must be deleted and was not yet (Daytona answered 409 while it
    was mid-transition, or did not answer): the reaper keeps trying until it is gone. Without a
    `provider_id` (a create that timed out before naming its sandbox) it stands for whatever
    carries our `sandbox_id` label."""

    __tablename__ = "pending_deletes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(32))
    provider_id: Mapped[str | None] = mapped_column(String(200))
    sandbox_id: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]

    __table_args__ = (Index("ix_pending_deletes_next_attempt_at", "next_attempt_at"),)
