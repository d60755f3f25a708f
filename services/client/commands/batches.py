"""Batch commands: ``batch`` submits a catalog, ``batch-results`` follows one and downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from services.client.commands.common import (
    ExitCode,
    ResultsFormat,
    TaskOpt,
    VersionOpt,
    client,
    err_console,
    exit_codes,
    parse_pins,
)
from services.client.errors import SkyserveTimeoutError
from services.client.http import SkyserveClient
from services.client.render import BatchProgress
from shared.schemas import Batch, JobStatus
from shared.tables import format_for_path

__all__ = ["batch", "batch_results"]


FormatOpt = Annotated[
    ResultsFormat | None,
    typer.Option(
        "--format",
        metavar="FORMAT",
        help="csv, json, ecsv, fits (binary table), votable or parquet "
        "(default: from the --out extension, else csv).",
    ),
]
AllowFailuresOpt = Annotated[
    bool,
    typer.Option(
        "--allow-failures",
        help="Exit 0 even if some rows failed (by default a batch with failed rows exits 1).",
    ),
]
# Kept so scripts written for the old opt-in keep working; failing rows now fail by default.
StrictOpt = Annotated[bool, typer.Option("--strict", hidden=True)]
BatchTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        min=0,
        metavar="SECONDS",
        help="Seconds to wait before exit code 5 (default: no limit).",
        show_default=False,
    ),
]
PollOpt = Annotated[
    float, typer.Option(min=0.05, metavar="SECONDS", help="Seconds between progress reads.")
]


def _follow_batch(
    sky: SkyserveClient,
    batch: Batch,
    *,
    out: Path | None,
    fmt: ResultsFormat | None,
    wait: bool,
    allow_failures: bool,
    timeout: float | None,
    poll: float,
) -> ExitCode:
    """Show progress until the batch ends (if ``wait``), then download its results."""
    fmt = fmt or _format_of(out)
    if wait:
        try:
            with BatchProgress(err_console, batch.id) as bar:
                for record in sky.iter_batch_progress(batch.id, poll=poll, timeout=timeout):
                    bar.update(record)
                    batch = record
        except SkyserveTimeoutError as exc:
            err_console.print(
                f"[bold yellow]Timed out:[/] {escape(str(exc))} It keeps running; "
                f"fetch the results later with [bold]skyserve batch-results {batch.id}[/bold]."
            )
            raise typer.Exit(ExitCode.TIMED_OUT) from exc
        except KeyboardInterrupt:
            err_console.print(
                f"[yellow]Stopped watching; batch {batch.id} keeps running.[/] "
                f"Resume with [bold]skyserve batch-results {batch.id}[/bold]."
            )
            raise typer.Exit(ExitCode.INTERRUPTED) from None
    path = sky.download_batch_results(batch.id, format=fmt.value, dest=out)
    p = batch.progress
    err_console.print(
        f"Batch {batch.id} [bold]{escape(batch.status.value)}[/]: {p.done} done, "
        f"[red]{p.failed} failed[/], {p.pending} pending of {p.total} → {escape(str(path))}"
    )
    if batch.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return ExitCode.FAILED
    if p.failed and not allow_failures:
        err_console.print(
            f"[red]{p.failed} row(s) failed[/]; their reasons are in the 'error' column. "
            "Exit code 1 (add --allow-failures to accept them)."
        )
        return ExitCode.FAILED
    return ExitCode.OK


def _format_of(out: Path | None) -> ResultsFormat:
    """The results format an ``--out`` file's extension asks for (csv without one).

    Raises
    ------
    typer.BadParameter
        For an extension that names no format (nothing is written in disguise).
    """
    if out is None or not out.suffix:
        return ResultsFormat.csv
    try:
        return ResultsFormat(format_for_path(out))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None


@exit_codes
def batch(
    ctx: typer.Context,
    catalog: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="CATALOG",
            help="A .csv catalog, a .json list of rows, or a .zip of images with catalog.csv.",
            show_default=False,
        ),
    ],
    task: TaskOpt = None,
    version: VersionOpt = None,
    id_column: Annotated[
        str,
        typer.Option(
            "--id-column", metavar="COLUMN", help="Column that identifies rows in the results."
        ),
    ] = "id",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            dir_okay=False,
            metavar="FILE",
            help="Where to write the results; the extension picks the format (.csv, .json, "
            ".ecsv, .fits, .vot/.votable, .parquet). Default: BATCH_ID.csv.",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow progress and download, or just submit.")
    ] = True,
    allow_failures: AllowFailuresOpt = False,
    strict: StrictOpt = False,
    timeout: BatchTimeoutOpt = None,
    poll: PollOpt = 1.0,
) -> None:
    """Run a whole catalog: one row per object, results joined back by --id-column.

    Rows name what to look at by their columns: [bold]pgc[/bold], [bold]name[/bold],
    [bold]ra[/bold] + [bold]dec[/bold] (+ fov_arcmin), image_url, or file (inside a zip).
    Other columns come back unchanged. A row that cannot be used fails alone.

    [bold]Examples[/bold]

      skyserve batch catalog.csv --task inclination --out results.csv
      skyserve batch catalog.csv --out results.fits   # or .ecsv .vot .parquet
      skyserve batch galaxies.zip --format json --out results.json
      skyserve batch catalog.csv --no-wait          # prints the batch id
      skyserve batch catalog.csv --allow-failures   # exit 0 despite failed rows

    A batch in which any row failed exits with code 1 unless --allow-failures.
    """
    if out is not None and fmt is None:
        _format_of(out)  # refuse a bad extension before submitting
    with client(ctx) as sky:
        record = sky.submit_batch(
            catalog, tasks=task, versions=parse_pins(version), id_column=id_column
        )
        if not wait:
            typer.echo(record.id)
            err_console.print(
                f"Submitted {record.progress.total} row(s). Follow it with "
                f"[bold]skyserve batch-results {record.id}[/bold]."
            )
            raise typer.Exit(ExitCode.OK)
        code = _follow_batch(
            sky,
            record,
            out=out,
            fmt=fmt,
            wait=wait,
            allow_failures=allow_failures,
            timeout=timeout,
            poll=poll,
        )
    raise typer.Exit(code)


@exit_codes
def batch_results(
    ctx: typer.Context,
    batch_id: Annotated[
        str, typer.Argument(metavar="BATCH_ID", help="Batch id from 'skyserve batch'.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            dir_okay=False,
            metavar="FILE",
            help="Where to write the results.",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOpt = None,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="Wait until it finishes, or download what is done."),
    ] = True,
    allow_failures: AllowFailuresOpt = False,
    strict: StrictOpt = False,
    timeout: BatchTimeoutOpt = None,
    poll: PollOpt = 1.0,
) -> None:
    """Follow a submitted batch and download its results.

    [bold]Examples[/bold]

      skyserve batch-results 3f2c… --out results.csv
      skyserve batch-results 3f2c… --out results.parquet
      skyserve batch-results 3f2c… --no-wait --format json   # rows done so far

    Exit codes as for 'skyserve batch'.
    """
    if out is not None and fmt is None:
        _format_of(out)
    with client(ctx) as sky:
        record = sky.get_batch(batch_id)
        code = _follow_batch(
            sky,
            record,
            out=out,
            fmt=fmt,
            wait=wait,
            allow_failures=allow_failures,
            timeout=timeout,
            poll=poll,
        )
    raise typer.Exit(code)
