"""``skyserve-admin``: operator commands against the deployment's Redis.

    skyserve-admin keys create --scope submit --scope read --owner alice --note "survey pipeline"
    skyserve-admin keys list
    skyserve-admin keys revoke 3f2a9c1b7d4e

Reads ``SKYSERVE_REDIS_URL`` (or ``REDIS_URL``) and ``SKYSERVE_KEY_PREFIX`` like the
services, and says which Redis it used: next to ``make run`` (whose embedded Redis is on
``SKYSERVE_LOCAL_REDIS_PORT``, 6390) that is ``SKYSERVE_REDIS_URL=redis://127.0.0.1:6390/0``.
In the compose deployment (the images have no console scripts):
``docker compose exec api python -m services.admin keys …``.
"""

from __future__ import annotations

import re
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.apikeys import SCOPES, KeyStore
from shared.settings import SkyserveSettings

__all__ = ["app"]

app = typer.Typer(add_completion=False, help="Operator commands for a skyserve deployment.")
keys_app = typer.Typer(add_completion=False, help="Create, list and revoke API keys.")
app.add_typer(keys_app, name="keys")
console = Console()
err_console = Console(stderr=True)


def _store() -> tuple[KeyStore, redis.Redis]:
    """The key store in the configured Redis, once it answers (else exit 1, saying which)."""
    settings = SkyserveSettings()
    where = f"{_without_password(settings.redis_url)} (key prefix {settings.key_prefix!r})"
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        err_console.print(
            f"[red]Error:[/] cannot reach Redis at {escape(where)}: {escape(str(exc))}\n"
            "Set SKYSERVE_REDIS_URL to the deployment's Redis (next to `make run`: "
            "redis://127.0.0.1:6390/0, or the port in SKYSERVE_LOCAL_REDIS_PORT)."
        )
        raise typer.Exit(1) from None
    # Keys are per Redis and prefix: one written elsewhere is never seen by the API.
    err_console.print(f"Redis: {escape(where)}")
    return KeyStore(client, prefix=settings.key_prefix), client


def _without_password(url: str) -> str:
    """``redis://:secret@host/0`` → ``redis://:***@host/0``: URLs are printed."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


@keys_app.command("create")
def create(
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", help=f"Repeatable: {', '.join(SCOPES)}."),
    ] = ["submit", "read"],  # noqa: B006 (typer reads the default, never mutates it)
    owner: Annotated[
        str | None,
        typer.Option(help="Whose jobs the key acts for; keys of one owner share jobs. "
                     "Default: the key's own id."),
    ] = None,
    note: Annotated[str, typer.Option(help="A reminder of who or what uses the key.")] = "",
) -> None:
    """Make a key and print it once: only its hash is stored."""
    store, client = _store()
    try:
        token, record = store.create(scope, owner=owner, note=note)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    finally:
        client.close()
    console.print(f"key id {record.id}, owner {record.owner}, scopes {', '.join(record.scopes)}")
    console.print("The key (shown once; give it to its user, e.g. as SKYSERVE_API_KEY):")
    typer.echo(token)


@keys_app.command("list")
def list_keys() -> None:
    """Every key's id, owner, scopes, note and creation time (never the secret)."""
    store, client = _store()
    try:
        records = store.list()
    finally:
        client.close()
    table = Table("id", "owner", "scopes", "created", "note")
    for record in records:
        table.add_row(
            record.id, record.owner, ",".join(record.scopes),
            record.created.isoformat(timespec="seconds"), record.note,
        )
    console.print(table)
    if not records:
        console.print("No keys yet: skyserve-admin keys create --scope submit --scope read")


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The id 'keys list' shows.")]) -> None:
    """Delete a key; requests with it are refused from now on."""
    store, client = _store()
    try:
        found = store.revoke(key_id)
    finally:
        client.close()
    if not found:
        console.print(f"No key {key_id!r}.")
        raise typer.Exit(1)
    console.print(f"Revoked {key_id}.")


def main() -> None:
    """Console entry point ``skyserve-admin``."""
    app()
