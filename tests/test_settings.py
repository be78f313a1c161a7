"""Settings: .env.example lists every setting with its default; embedded defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from midori_preview.settings import Settings, env_example

ROOT = Path(__file__).resolve().parents[1]


def test_env_example_lists_every_setting_with_its_default() -> None:
    text = (ROOT / ".env.example").read_text()
    assert text == env_example(), "run `make env-example` and commit .env.example"
    for name in Settings.model_fields:
        assert f"\n{name.upper()}=" in text


def test_embedded_defaults_need_nothing_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert s.redis_url is None
    assert s.provider_name == "local"
    assert s.effective_auth_mode == "dev"


def test_a_secret_is_never_defaulted_to_dev_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_JWT_SECRET", "s3cret-value")
    assert Settings(_env_file=None).effective_auth_mode == "jwt"  # type: ignore[call-arg]


def test_empty_values_from_a_copied_env_example_keep_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    env = tmp_path / ".env"
    env.write_text(env_example())
    s = Settings(_env_file=env)  # type: ignore[call-arg]
    assert s.effective_auth_mode == "dev"
    assert s.database_url is None and s.redis_url is None
    assert s.provider_name == "local"


def test_postgres_urls_are_made_async() -> None:
    s = Settings(_env_file=None, database_url="postgresql://u@h/db")  # type: ignore[call-arg]
    assert s.effective_database_url == "postgresql+asyncpg://u@h/db"


@pytest.mark.parametrize("name", ["NEXTAUTH_SECRET", "AUTH_SECRET"])
def test_a_session_secret_alone_turns_dev_auth_off(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    monkeypatch.setenv(name, "a-nextauth-secret")
    assert Settings(_env_file=None).effective_auth_mode == "jwt"  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "run"),  # dev mode: a developer's own commands
        ({"AUTH_JWT_SECRET": "s3cret-value"}, "refuse"),  # production: strangers' commands
        ({"AUTH_SECRET": "a-session-secret"}, "refuse"),
        ({"AUTH_JWT_SECRET": "s3cret-value", "LOCAL_SANDBOX_UNISOLATED_COMMANDS": "run"}, "run"),
        ({"LOCAL_SANDBOX_UNISOLATED_COMMANDS": "refuse"}, "refuse"),
    ],
)
def test_unisolated_commands_are_refused_by_default_in_production(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for field in Settings.model_fields:
        monkeypatch.delenv(field.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.effective_unisolated_commands == expected
