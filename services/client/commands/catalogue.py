"""Catalogue and health commands: ``tasks``, ``models``, ``ready``."""

from __future__ import annotations

import typer

from services.client.commands.common import (
    ExitCode,
    JsonOpt,
    client,
    console,
    exit_codes,
    print_json,
)
from services.client.render import models_table, readiness_table, tasks_table

__all__ = ["tasks", "models", "ready"]


@exit_codes
def tasks(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """List the tasks that can be asked, with the model versions serving them.

    [bold]Example[/bold]

      skyserve tasks --json | jq '.[].name'

    A task with no versions is defined but not served yet.
    """
    with client(ctx) as sky:
        listing = sky.tasks()
    if json_output:
        print_json(listing)
    else:
        console.print(tasks_table(listing))


@exit_codes
def models(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """List every published model version (model cards: members, metrics).

    [bold]Example[/bold]

      skyserve models --json | jq '.[] | {task, version, metrics}'

    Plots and metrics.json of a version: GET /v1/models/TASK/VERSION on the API.
    """
    with client(ctx) as sky:
        listing = sky.models()
    if json_output:
        print_json(listing)
    else:
        console.print(models_table(listing))


@exit_codes
def ready(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Check that the service can answer: Redis, a live worker, published models.

    [bold]Examples[/bold]

      skyserve ready && skyserve batch catalog.csv
      skyserve ready --json | jq .checks

    Exits 0 when ready and 4 when not (or unreachable), so it works as a health gate.
    """
    with client(ctx) as sky:
        report = sky.ready()
    if json_output:
        print_json(report)
    else:
        console.print(readiness_table(report))
    raise typer.Exit(ExitCode.OK if report.get("ready") else ExitCode.UNAVAILABLE)
