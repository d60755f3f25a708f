"""What every ``skyserve`` command shares: exit codes, consoles, options, error mapping."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from services.client.errors import (
    SkyserveAPIError,
    SkyserveConnectionError,
    SkyserveTimeoutError,
)
from services.client.http import SkyserveClient
from services.client.render import print_problem

__all__ = [
    "ExitCode",
    "ResultsFormat",
    "ServerOptions",
    "console",
    "err_console",
    "client",
    "exit_codes",
    "TaskOpt",
    "VersionOpt",
    "WaitOpt",
    "TimeoutOpt",
    "JsonOpt",
    "parse_pins",
    "print_json",
]


class ExitCode(IntEnum):
    """What ``skyserve`` exits with; scripts may rely on these."""

    OK = 0
    FAILED = 1  # a job or batch failed, or some batch rows did (unless --allow-failures)
    USAGE = 2  # typer/click usage errors
    REFUSED = 3  # the API refused the request (4xx)
    UNAVAILABLE = 4  # server error (5xx), not ready, or unreachable
    TIMED_OUT = 5  # still not finished when --timeout ran out
    INTERRUPTED = 130  # Ctrl-C


class ResultsFormat(StrEnum):
    """How batch results are downloaded (``--format``, else from the ``--out`` extension)."""

    csv = "csv"
    json = "json"
    ecsv = "ecsv"
    fits = "fits"
    votable = "votable"
    parquet = "parquet"


console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class ServerOptions:
    """The server the commands talk to, from the global --url and --api-key."""

    url: str | None
    api_key: str | None

    def client(self) -> SkyserveClient:
        return SkyserveClient(self.url, api_key=self.api_key)


def client(ctx: typer.Context) -> SkyserveClient:
    """A client for the server named by the global options (or the environment)."""
    options = ctx.find_object(ServerOptions) or ServerOptions(None, None)
    return options.client()


def exit_codes(command: Callable[P, R]) -> Callable[P, R]:
    """Turn client errors into a readable message and the documented exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except SkyserveAPIError as exc:
            print_problem(err_console, exc)
            raise typer.Exit(
                ExitCode.REFUSED if exc.status < 500 else ExitCode.UNAVAILABLE
            ) from exc
        except SkyserveConnectionError as exc:
            err_console.print(f"[bold red]Error:[/] {escape(str(exc))}")
            raise typer.Exit(ExitCode.UNAVAILABLE) from exc
        except SkyserveTimeoutError as exc:
            err_console.print(f"[bold yellow]Timed out:[/] {escape(str(exc))}")
            raise typer.Exit(ExitCode.TIMED_OUT) from exc
        except KeyboardInterrupt:
            err_console.print("[yellow]Interrupted; anything submitted keeps running.[/]")
            raise typer.Exit(ExitCode.INTERRUPTED) from None

    return run


TaskOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--task",
        "-t",
        metavar="TASK",
        help="Task to ask (repeat, or comma-separate); default: every served task.",
        show_default=False,
    ),
]
VersionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--version",
        metavar="TASK=N",
        help="Pin a model version as TASK=N (repeatable).",
        show_default=False,
    ),
]
WaitOpt = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Wait for the answer, or print the job and exit.")
]
TimeoutOpt = Annotated[
    float, typer.Option(min=0, metavar="SECONDS", help="Seconds to wait before exit code 5.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def parse_pins(values: Sequence[str] | None) -> dict[str, int]:
    """``--version inclination=1`` (repeated or comma-separated) → ``{"inclination": 1}``.

    Raises
    ------
    typer.BadParameter
        For a pin that is not ``TASK=N`` (exit code 2).
    """
    pins: dict[str, int] = {}
    for value in values or []:
        for part in value.split(","):
            task, sep, number = part.partition("=")
            if not sep or not number.strip().isdigit():
                raise typer.BadParameter(
                    f"{part!r} is not TASK=N, e.g. inclination=1.", param_hint="--version"
                )
            pins[task.strip()] = int(number)
    return pins


def print_json(data: Any) -> None:
    """JSON on stdout, plain (no colours or wrapping), so it pipes into jq."""
    typer.echo(json.dumps(data, indent=2, default=str))
