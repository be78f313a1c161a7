"""Every setting of the service, from the environment (and `.env`); the only module reading it."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Service settings; the defaults give a working embedded setup (SQLite, in-process store)."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, env_ignore_empty=True
    )

    # --- service -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, description="Port the HTTP server listens on.")
    public_url: str | None = Field(
        None, description="This service's public base URL (default http://localhost:{PORT})."
    )
    data_dir: Path = Field(
        Path("./.midori-preview"), description="SQLite file and local sandbox workspaces."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy async URL; unset = SQLite file in DATA_DIR."
    )
    database_pool_size: int = Field(
        20,
        description="Postgres connections each replica keeps open (and a quarter as many more "
        "for status reads).",
    )
    database_max_overflow: int = Field(
        10,
        description="Extra connections a replica may open under load (and a quarter as many "
        "more for status reads); replicas × 1.25 × (pool size + overflow) must fit in the "
        "server's max_connections.",
    )
    database_pool_timeout_seconds: float = Field(
        30, description="Longest a request waits for a free connection (then 503)."
    )
    redis_url: str | None = Field(
        None, description="Redis URL; unset = in-process Redis-compatible store."
    )
    log_level: str = Field("INFO", description="Log level.")
    log_json: bool = Field(False, description="Render logs as JSON lines instead of console text.")
    preview_deployment: str = Field(
        "default", description="Name of this deployment; labels every provider sandbox."
    )
    replica_id: str | None = Field(
        None, description="This replica's id for build leases (default: hostname + pid)."
    )

    # --- auth --------------------------------------------------------------------------------
    auth_mode: Literal["jwt", "dev"] | None = Field(
        None, description="jwt or dev; default dev only when no auth secret (JWT/NextAuth) is set."
    )
    auth_jwt_secret: SecretStr | None = Field(None, description="HS256 secret for bearer JWTs.")
    auth_jwt_audience: str | None = Field(None, description="Required `aud` claim, if set.")
    auth_jwt_issuer: str | None = Field(None, description="Required `iss` claim, if set.")
    allowed_origins: CsvList = Field(
        default_factory=list, description="Comma-separated browser origins allowed (CORS)."
    )

    # --- lifecycle ---------------------------------------------------------------------------
    heartbeat_interval_seconds: int = Field(120, description="Heartbeat interval told to browsers.")
    heartbeat_grace_seconds: int = Field(
        30, description="Slack on top of one interval when charging a heartbeat."
    )
    idle_timeout_seconds: int = Field(300, description="No heartbeat this long → stopped (idle).")
    hidden_idle_timeout_seconds: int = Field(
        180, description="Idle allowance after the browser reported a hidden tab."
    )
    max_sandbox_ttl_seconds: int = Field(7200, description="Hard cap on one sandbox's life.")
    daily_usage_cap_seconds: int = Field(3600, description="Preview time per user per day.")
    usage_warning_seconds: int = Field(300, description="Warn when this much time is left today.")
    usage_timezone: str = Field("UTC", description="Where a usage day starts and ends.")
    max_concurrent_sandboxes_per_user: int = Field(1, description="Live sandboxes per user.")
    create_rate_per_minute: int = Field(10, description="Creates per user per minute.")
    create_queue_wait_seconds: float = Field(
        60,
        description="Longest a create queues behind the same user's other creates (then 503).",
    )
    update_rate_per_minute: int = Field(
        60, description="Live updates (PUT …/source) per user per minute (not counted as creates)."
    )
    update_wait_seconds: int = Field(
        900, description="How long an update of a preview still building waits for it to run."
    )
    sandbox_create_timeout_seconds: int = Field(300, description="Provider create timeout.")
    build_step_timeout_seconds: int = Field(600, description="Timeout of one install/build step.")
    upload_timeout_seconds: int = Field(120, description="Timeout of the bulk file upload.")
    start_timeout_seconds: int = Field(
        120, description="How long the server may take to answer its first probe."
    )
    build_lease_seconds: int = Field(
        60, description="A build's owner lease; renewed while the build runs."
    )
    reaper_interval_seconds: int = Field(30, description="How often the reaper runs.")
    reaper_sync_interval_seconds: int = Field(
        300, description="How often the reaper reconciles with the provider and Redis."
    )
    reaper_enabled: bool = Field(True, description="Run the reaper in this process.")
    heartbeat_flush_interval_seconds: float = Field(
        2.0,
        gt=0,
        description="How often heartbeats queued in Redis are written to Postgres (rows, ledger).",
    )
    reaper_batch_size: int = Field(
        200, ge=1, description="Due rows the reaper reads per query (it continues until none)."
    )
    reaper_concurrency: int = Field(
        32, ge=1, description="Sandboxes the reaper stops at once (provider calls in flight)."
    )
    stopped_retention_seconds: int = Field(7200, description="Stopped rows leave the active view.")
    state_retention_seconds: int = Field(86400, description="Ephemeral state is pruned after this.")
    orphan_grace_seconds: int = Field(
        600, description="Provider sandboxes unknown to the DB are deleted after this age."
    )
    daytona_delete_deadline_seconds: float = Field(
        30,
        description="A delete answered 409 (sandbox mid-transition) is retried this long, then "
        "handed to the reaper.",
    )
    daytona_list_lag_seconds: float = Field(
        60,
        description="Daytona's listings are eventually consistent: a sandbox younger than this "
        "missing from one is not taken as gone (local listings do not lag).",
    )
    pending_delete_retry_seconds: float = Field(
        15, description="First wait before the reaper retries a provider delete that failed."
    )
    idempotency_ttl_seconds: int = Field(86400, description="How long Idempotency-Key is kept.")
    max_request_bytes: int = Field(
        20 * 1024 * 1024, description="Largest accepted create body, in bytes."
    )
    max_files: int = Field(2000, description="Most files in one `files` source.")
    request_body_timeout_seconds: float = Field(
        30, description="A request body not fully received within this many seconds is a 408."
    )

    # --- sources -----------------------------------------------------------------------------
    git_allowed_url_prefixes: CsvList = Field(
        default_factory=lambda: ["https://github.com/"],
        description="Comma-separated URL prefixes git sources may clone from.",
    )
    template_build_cache: bool = Field(
        True,
        description="Reuse a template's build per template version (vite: no npm per preview).",
    )
    git_clone_timeout_seconds: int = Field(120, description="Timeout of a git clone.")

    # --- preview serving ---------------------------------------------------------------------
    preview_base_domain: str = Field(
        "preview.localhost",
        description="Preview hosts are {port}-{label}.<this domain> (every provider's).",
    )
    preview_public_port: int | None = Field(
        None, description="Port in preview URLs (default: PORT); None-80/443 omitted."
    )
    preview_scheme: Literal["http", "https"] = Field("http", description="Scheme of preview URLs.")
    preview_reload_script: bool = Field(
        True,
        description="The gateway adds a tiny script to HTML pages of previews that reloads them "
        "when the preview is updated in place (keeping the scroll position).",
    )
    preview_signing_secret: SecretStr | None = Field(
        None,
        description="Key of signed preview links: the same on every replica "
        "(default: a random key kept in DATA_DIR).",
    )
    open_url_ttl_seconds: int = Field(
        14400, description="Lifetime of a signed openUrl (outlasts a viewing session)."
    )

    # --- browser sessions --------------------------------------------------------------------
    nextauth_secret: SecretStr | None = Field(
        None, description="NextAuth v4 secrets (comma-separated, current first): accept its cookie."
    )
    auth_secret: SecretStr | None = Field(
        None, description="Auth.js v5 secrets (comma-separated, current first): accept its cookie."
    )

    # --- local provider ----------------------------------------------------------------------
    local_sandbox_isolation: Literal["auto", "bwrap", "none"] = Field(
        "auto", description="auto = bubblewrap when installed, else plain processes."
    )
    local_sandbox_network: Literal["isolated", "host"] = Field(
        "isolated",
        description="isolated = each command in a network namespace of its own (bubblewrap + "
        "pasta: the internet, nothing of the host) where the host can; host = the host's network.",
    )
    local_sandbox_unisolated_commands: Literal["auto", "refuse", "run"] = Field(
        "auto",
        description="Sandboxes without a network of their own: refuse user-supplied commands or "
        "run them anyway; auto = refuse when an auth secret is set (production).",
    )
    local_sandbox_memory_mb: int = Field(2048, description="Data-segment limit per sandbox (MB).")
    local_sandbox_max_processes: int = Field(
        256,
        description="Processes per sandbox (a pids cgroup where the host allows one): past it, "
        "the sandbox is ended (sandbox_process_limit).",
    )
    local_sandbox_max_file_mb: int = Field(512, description="Largest file a sandbox may write.")
    local_sandbox_tmp_mb: int = Field(512, description="Size of a sandbox's /tmp (in memory), MB.")
    local_sandbox_disk_mb: int = Field(
        4096,
        description="Disk a sandbox's workspace and home may use (MB; 0 = no limit): past it, "
        "the sandbox is ended (sandbox_disk_limit).",
    )
    local_sandbox_watch_seconds: float = Field(
        1.0,
        gt=0,
        description="How often each sandbox's disk use and process limit are checked (seconds).",
    )
    local_npm_cache: bool = Field(
        True, description="Share one npm download cache between local sandboxes."
    )

    # --- github ------------------------------------------------------------------------------
    github_webhook_secret: SecretStr | None = Field(
        None, description="Webhook secret; unset = the GitHub webhook route is off (404)."
    )
    github_token: SecretStr | None = Field(
        None, description="Token for the GitHub API and git pushes (or use the App settings)."
    )
    github_app_id: int | None = Field(
        None, description="GitHub App id (App auth instead of token)."
    )
    github_app_private_key: SecretStr | None = Field(
        None, description="GitHub App private key (PEM) that signs the App's JWTs."
    )
    github_app_installation_id: int | None = Field(
        None, description="Installation id when a webhook does not name one (App auth)."
    )
    github_api_url: str = Field(
        "https://api.github.com", description="GitHub REST API base URL (GitHub Enterprise too)."
    )
    github_clone_base_url: str = Field(
        "https://github.com", description="Repositories are cloned/pushed at <this>/owner/name.git."
    )
    github_repo_allowlist: CsvList = Field(
        default_factory=list,
        description="Comma-separated owner/name patterns (fnmatch) whose PRs are previewed.",
    )
    github_build_forks: bool = Field(False, description="Also preview pull requests from forks.")
    github_actions_token: SecretStr | None = Field(
        None,
        description="Bearer token of the GitHub Actions trigger (the workflow's "
        "PREVIEW_API_TOKEN secret); unset = the trigger is off.",
    )
    github_fork_label: str = Field(
        "preview",
        description="Label a maintainer adds to build a fork PR whose author is no collaborator.",
    )
    github_push_branches: CsvList = Field(
        default_factory=list,
        description="Comma-separated branch patterns whose pushes get a preview (none = off).",
    )
    github_max_concurrent_previews: int = Field(
        5, description="Live GitHub previews at once (the service user's own limit)."
    )
    github_preview_ttl_seconds: int = Field(
        86400, description="Longest life of a PR preview (no idle reaping; closed PRs stop it)."
    )
    github_service_user: str = Field("github", description="User that owns GitHub previews.")
    github_repo_creates_per_minute: int = Field(
        30,
        description="GitHub previews started per repository per minute (their own budget, "
        "not the service user's CREATE_RATE_PER_MINUTE); more wait their turn.",
    )
    github_rate_wait_max_seconds: float = Field(
        600, description="Longest a GitHub preview waits for its repository's budget."
    )
    github_webhook_max_bytes: int = Field(
        5 * 1024 * 1024, description="Largest accepted webhook body, in bytes."
    )
    github_review_link_ttl_seconds: int = Field(
        3600, description="Lifetime of the preview link handed out by a review-link visit."
    )
    github_link_secret: SecretStr | None = Field(
        None, description="Key of review links (default: derived from GITHUB_WEBHOOK_SECRET)."
    )
    github_request_timeout_seconds: float = Field(10, description="One GitHub API call.")
    github_retry_attempts: int = Field(4, description="Attempts for a retryable GitHub call.")
    github_retry_backoff_seconds: float = Field(
        1.0, description="First retry delay of a GitHub call (doubles each attempt)."
    )
    github_retry_max_wait_seconds: float = Field(
        30, description="Longest wait before a GitHub retry (longer rate limits fail at once)."
    )
    github_secondary_rate_limit_wait_seconds: float = Field(
        60,
        description="Wait after a secondary rate limit that names none (doubles while it lasts).",
    )

    # --- daytona -----------------------------------------------------------------------------
    daytona_api_key: SecretStr | None = Field(None, description="Set to use Daytona sandboxes.")
    daytona_api_url: str = Field("https://app.daytona.io/api", description="Daytona API URL.")
    daytona_target: str | None = Field(None, description="Daytona target region.")
    daytona_snapshot: str | None = Field(None, description="Daytona snapshot to create from.")
    daytona_image: str | None = Field(
        None, description="Image to build sandboxes from (needed for CPU/memory/disk sizes)."
    )
    daytona_cpu: int | None = Field(None, description="vCPUs per sandbox (snapshot default).")
    daytona_memory_gb: int | None = Field(None, description="Memory per sandbox in GB.")
    daytona_disk_gb: int | None = Field(None, description="Disk per sandbox in GB.")
    daytona_request_timeout_seconds: float = Field(30, description="One Daytona API call.")
    daytona_retry_attempts: int = Field(4, description="Attempts for a retryable Daytona call.")
    daytona_retry_deadline_seconds: float = Field(60, description="Overall retry deadline.")

    @field_validator(
        "allowed_origins",
        "git_allowed_url_prefixes",
        "github_repo_allowlist",
        "github_push_branches",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @cached_property
    def effective_auth_mode(self) -> Literal["jwt", "dev"]:
        if self.auth_mode is not None:
            return self.auth_mode
        secrets = (self.auth_jwt_secret, self.nextauth_secret, self.auth_secret)
        return "jwt" if any(s is not None for s in secrets) else "dev"

    @cached_property
    def effective_unisolated_commands(self) -> Literal["refuse", "run"]:
        if self.local_sandbox_unisolated_commands != "auto":
            return self.local_sandbox_unisolated_commands
        secrets = (self.auth_jwt_secret, self.nextauth_secret, self.auth_secret)
        return "refuse" if any(s is not None for s in secrets) else "run"

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+asyncpg://" + url.split("://", 1)[1]
            return url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'midori-preview.db').resolve()}"

    @cached_property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://localhost:{self.port}").rstrip("/")

    @cached_property
    def effective_preview_port(self) -> int:
        return self.preview_public_port or self.port

    @cached_property
    def provider_name(self) -> Literal["daytona", "local"]:
        return "daytona" if self.daytona_api_key is not None else "local"


def env_example() -> str:
    """`.env.example`: every setting with its default and its one-line description."""
    lines = [
        "# midori-preview settings, each with its default. Copy to .env and change what you need;",
        "# unset values keep the embedded defaults (SQLite, in-process store, local sandboxes).",
    ]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default is None:
            value = ""
        elif isinstance(default, bool):
            value = str(default).lower()
        elif isinstance(default, list):
            value = ",".join(str(v) for v in default)
        else:
            value = str(default)
        lines.append(f"# {field.description}")
        lines.append(f"{name.upper()}={value}")
    return "\n".join(lines) + "\n"
