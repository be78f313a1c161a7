"""`midori-preview serve | migrate | env-example`."""

from __future__ import annotations

import typer
import uvicorn

from midori_preview.settings import Settings

cli = typer.Typer(add_completion=False, help="midori-preview: live previews of Midori projects.")


@cli.command()
def serve(
    host: str | None = typer.Option(None, help="Bind address (default HOST setting)."),
    port: int | None = typer.Option(None, help="Port (default PORT setting)."),
) -> None:
    """Run the service (migrations run at start)."""
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    from midori_preview.app import create_app

    uvicorn.run(
        create_app(settings, freeze_gc=True),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        access_log=False,
    )


@cli.command()
def migrate() -> None:
    """Run `alembic upgrade head` against the configured database."""
    from midori_preview.db.engine import upgrade_head

    settings = Settings()
    upgrade_head(settings.effective_database_url)
    typer.echo("database is at head")


@cli.command("env-example")
def env_example() -> None:
    """Print .env.example (every setting, its default and what it does)."""
    from midori_preview.settings import env_example as render

    typer.echo(render(), nl=False)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
