"""Single-job commands: ``predict`` (images), ``target`` (catalog objects), ``job``, ``cancel``."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from services.client.commands.common import (
    ExitCode,
    JsonOpt,
    TaskOpt,
    TimeoutOpt,
    VersionOpt,
    WaitOpt,
    client,
    console,
    err_console,
    exit_codes,
    parse_pins,
    print_json,
)
from services.client.errors import SkyserveAPIError, SkyserveTimeoutError
from services.client.http import SkyserveClient
from services.client.render import (
    ImageOutcome,
    outcome_rows,
    print_problem,
    results_table,
    submitted_table,
)
from shared.schemas import TERMINAL_STATUSES, Job, JobStatus

__all__ = ["predict", "target", "job", "cancel"]


def _wait_for(sky: SkyserveClient, outcomes: list[ImageOutcome], timeout: float) -> bool:
    """Wait for every job under one deadline; True if some did not finish in time."""
    deadline = time.monotonic() + timeout
    late = False
    with err_console.status(f"Waiting for {len(outcomes)} job(s)…"):
        for outcome in outcomes:
            if outcome.job is None:  # refused at submission
                continue
            try:
                remaining = max(deadline - time.monotonic(), 0.0)
                outcome.job = sky.wait_job(outcome.job.id, timeout=remaining)
            except SkyserveTimeoutError as exc:
                outcome.job = exc.last if isinstance(exc.last, Job) else outcome.job
                late = True
    return late


def _report(
    outcomes: list[ImageOutcome],
    *,
    wait: bool,
    late: bool,
    json_output: bool,
    first_column: str,
) -> ExitCode:
    if json_output:
        print_json([o.as_json() for o in outcomes])
    elif wait:
        console.print(results_table(outcomes, first_column=first_column))
    else:
        console.print(submitted_table(outcomes, first_column=first_column))
    if late:
        unfinished = [o.job.id for o in outcomes if o.job and o.job.status not in TERMINAL_STATUSES]
        err_console.print(
            "[yellow]Still running:[/] "
            + ", ".join(unfinished)
            + " — read them later with [bold]skyserve job ID --wait 60[/bold]."
        )
    if any(o.error is not None for o in outcomes):
        return ExitCode.REFUSED
    if late:
        return ExitCode.TIMED_OUT
    bad = {JobStatus.FAILED, JobStatus.CANCELLED}
    if any(o.job is not None and o.job.status in bad for o in outcomes):
        return ExitCode.FAILED
    return ExitCode.OK


def _write_outcomes(path: Path, outcomes: list[ImageOutcome]) -> None:
    if path.suffix.lower() == ".csv":
        rows = list(outcome_rows(outcomes))
        fields = ["input", "job", "status", "task", "value", "stdev", "model_version", "error"]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text(json.dumps([o.as_json() for o in outcomes], indent=2, default=str))
    err_console.print(f"Wrote {escape(str(path))}")


@exit_codes
def predict(
    ctx: typer.Context,
    images: Annotated[
        list[Path],
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            metavar="IMAGE",
            help="Image files: PNG, JPEG, GIF, TIFF, WebP, BMP or FITS.",
            show_default=False,
        ),
    ],
    task: TaskOpt = None,
    version: VersionOpt = None,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 300.0,
    json_output: JsonOpt = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            dir_okay=False,
            metavar="FILE",
            help="Also write the results to this file: a table for .csv, JSON otherwise.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Ask about one or more images, one job each; print value ± stdev per task.

    [bold]Examples[/bold]

      skyserve predict galaxy.png
      skyserve predict *.png --task inclination --out answers.csv
      skyserve predict galaxy.fits --json | jq '.[0].job.result.tasks'
      skyserve predict big.png --no-wait        # prints the job id; see 'skyserve job'

    An image the API refuses is reported and the others still run (exit code 3).
    """
    pins = parse_pins(version)
    outcomes: list[ImageOutcome] = []
    with client(ctx) as sky:
        for image in images:
            try:
                job = sky.submit_image(image, tasks=task, versions=pins)
                outcomes.append(ImageOutcome(str(image), job=job))
            except SkyserveAPIError as exc:
                if exc.status >= 500:
                    raise
                err_console.print(f"[bold]{escape(str(image))}[/]:")
                print_problem(err_console, exc)
                outcomes.append(ImageOutcome(str(image), error=exc))
        late = _wait_for(sky, outcomes, timeout) if wait else False
    code = _report(outcomes, wait=wait, late=late, json_output=json_output, first_column="image")
    if out is not None:
        _write_outcomes(out, outcomes)
    raise typer.Exit(code)


def _input_label(job: Job) -> str | None:
    """An image's file name, or a target's resolved catalog name."""
    if filename := getattr(job.input, "filename", None):
        return str(filename)
    resolved = getattr(job.input, "resolved", None) or {}
    return str(resolved["name"]) if resolved.get("name") else None


def _coordinate(value: str | None) -> float | str | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value  # sexagesimal, parsed by the API


@exit_codes
def target(
    ctx: typer.Context,
    pgc: Annotated[
        int | None, typer.Option(metavar="N", help="PGC (LEDA) number.", show_default=False)
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Catalog name: NGC/IC/Messier/UGC/PGC or common.",
            show_default=False,
        ),
    ] = None,
    ra: Annotated[
        str | None,
        typer.Option(
            metavar="RA", help="Right ascension: degrees or 00h42m44.3s.", show_default=False
        ),
    ] = None,
    dec: Annotated[
        str | None,
        typer.Option(metavar="DEC", help="Declination: degrees or +41d16m09s.", show_default=False),
    ] = None,
    fov: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="ARCMIN",
            help="Field of view in arcmin (default: from the object's size).",
        ),
    ] = None,
    task: TaskOpt = None,
    version: VersionOpt = None,
    wait: WaitOpt = True,
    timeout: TimeoutOpt = 300.0,
    json_output: JsonOpt = False,
) -> None:
    """Ask about a catalogued object or a sky position; the server fetches the image.

    [bold]Examples[/bold]

      skyserve target --name M33
      skyserve target --pgc 2557 --task inclination
      skyserve target --ra 10.6847 --dec 41.2690 --fov 5
      skyserve target --ra 00h42m44.3s --dec +41d16m09s --json

    An unknown name exits with code 3 and lists the closest catalog names.
    """
    given = [p for p, v in (("--pgc", pgc), ("--name", name)) if v is not None]
    if ra is not None or dec is not None:
        if ra is None or dec is None:
            raise typer.BadParameter("--ra and --dec go together.", param_hint="--ra/--dec")
        given.append("--ra/--dec")
    if len(given) != 1:
        raise typer.BadParameter(
            "Give exactly one target: --pgc N, --name NAME, or --ra RA --dec DEC.",
            param_hint="target",
        )
    label = name or (f"PGC {pgc}" if pgc is not None else f"{ra}, {dec}")
    with client(ctx) as sky:
        job = sky.submit_target(
            pgc=pgc,
            name=name,
            ra=_coordinate(ra),
            dec=_coordinate(dec),
            fov_arcmin=fov,
            tasks=task,
            versions=parse_pins(version),
        )
        outcome = ImageOutcome(label, job=job)
        late = _wait_for(sky, [outcome], timeout) if wait else False
    if outcome.job is not None and (resolved := _input_label(outcome.job)) not in (None, label):
        outcome.label = f"{label} ({resolved})"
    raise typer.Exit(
        _report([outcome], wait=wait, late=late, json_output=json_output, first_column="target")
    )


@exit_codes
def job(
    ctx: typer.Context,
    job_id: Annotated[
        str, typer.Argument(metavar="JOB_ID", help="Job id from 'skyserve predict' or 'target'.")
    ],
    wait: Annotated[
        float,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="Seconds to wait for it to finish (exit 5 if it does not).",
        ),
    ] = 0.0,
    json_output: JsonOpt = False,
) -> None:
    """Show a job: status, and once finished the answers.

    [bold]Examples[/bold]

      skyserve job 5b7e0c…
      skyserve job 5b7e0c… --wait 60 --json

    Exits 1 if the job failed or was cancelled, 5 if --wait ran out first.
    """
    with client(ctx) as sky:
        record = sky.wait_job(job_id, timeout=wait) if wait else sky.get_job(job_id)
    if json_output:
        print_json(record.model_dump(mode="json"))
    else:
        console.print(
            f"Job [bold]{record.id}[/] · {escape(record.status.value)} · "
            f"tasks {escape(', '.join(record.tasks))} · "
            f"created {record.created_at:%Y-%m-%d %H:%M:%S}"
        )
        outcome = ImageOutcome(_input_label(record) or record.id, job=record)
        console.print(results_table([outcome], first_column="input"))
    bad = record.status in (JobStatus.FAILED, JobStatus.CANCELLED)
    raise typer.Exit(ExitCode.FAILED if bad else ExitCode.OK)


@exit_codes
def cancel(
    ctx: typer.Context,
    item_id: Annotated[
        str, typer.Argument(metavar="ID", help="Job id (or batch id with --batch).")
    ],
    is_batch: Annotated[bool, typer.Option("--batch", help="ID is a batch.")] = False,
) -> None:
    """Cancel a queued or running job, or with --batch a batch (rows not yet run are skipped).

    [bold]Examples[/bold]

      skyserve cancel 5b7e0c…
      skyserve cancel 3f2c… --batch

    Cancelling something already finished exits with code 3 (the API answers 409).
    """
    with client(ctx) as sky:
        record = sky.cancel_batch(item_id) if is_batch else sky.cancel_job(item_id)
    kind = "Batch" if is_batch else "Job"
    console.print(f"{kind} {record.id} {escape(record.status.value)}.")
