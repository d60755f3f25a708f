"""Single-job commands: ``predict`` (images), ``target`` (catalog objects), ``job``, ``cancel``."""

from __future__ import annotations

import re
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
from services.client.outputs import out_format, write_outcomes
from services.client.render import (
    ImageOutcome,
    cutout_hint,
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
    hints = {cutout_hint(o.job.error) for o in outcomes if o.job is not None} - {None}
    for hint in sorted(hints):  # type: ignore[type-var]
        err_console.print(f"[yellow]Hint:[/] {escape(str(hint))}")
    if any(o.error is not None for o in outcomes):
        return ExitCode.REFUSED
    if late:
        return ExitCode.TIMED_OUT
    bad = {JobStatus.FAILED, JobStatus.CANCELLED}
    if any(o.job is not None and o.job.status in bad for o in outcomes):
        return ExitCode.FAILED
    return ExitCode.OK


def _write_outcomes(path: Path, outcomes: list[ImageOutcome]) -> None:
    fmt = write_outcomes(path, outcomes)
    err_console.print(f"Wrote {escape(str(path))} ({fmt})")


def _check_out(out: Path | None) -> None:
    """Refuse an ``--out`` whose extension names no format, before submitting anything."""
    if out is None:
        return
    try:
        out_format(out)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None


OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        dir_okay=False,
        metavar="FILE",
        help="Also write the results to FILE; its extension picks the format: .csv, .json, "
        ".ecsv, .fits (binary table), .vot/.votable (VOTable) or .parquet.",
        show_default=False,
    ),
]


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
    out: OutOpt = None,
) -> None:
    """Ask about one or more images, one job each; print value ± stdev per task.

    [bold]Examples[/bold]

      skyserve predict galaxy.png
      skyserve predict *.png --task inclination --out answers.csv
      skyserve predict galaxy.fits --out answers.fits   # a FITS binary table
      skyserve predict galaxy.fits --json | jq '.[0].job.result.tasks'
      skyserve predict big.png --no-wait   # prints the job id ('skyserve job')

    An image the API refuses is reported and the others still run (exit code 3).
    """
    _check_out(out)
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


_PGC = re.compile(r"\s*(?:PGC|LEDA)\s*0*([0-9]{1,9})\s*|\s*([0-9]{1,9})\s*", re.IGNORECASE)
# Two numbers, or sexagesimal fields (h/m/s, d/m/s, colons) with a signed or third-field Dec.
_POSITION = re.compile(
    r"^\s*[0-9.]+[hd:\s][0-9hdms:.\s]*\s[+-]?[0-9][0-9dms:.'\"\s]*$|"
    r"^\s*[0-9.]+(?:d|deg)?\s*[,\s]\s*[+-]?[0-9.]+(?:d|deg)?\s*$"
)


def _what(text: str) -> dict[str, object]:
    """Read a positional target: a PGC number, a sky position, or else a name."""
    if match := _PGC.fullmatch(text):
        return {"pgc": int(match.group(1) or match.group(2))}
    if _POSITION.match(text):
        return {"coordinates": text.strip()}
    return {"name": text.strip()}


@exit_codes
def target(
    ctx: typer.Context,
    what: Annotated[
        str | None,
        typer.Argument(
            metavar="[TARGET]",
            help="A name (M33, NGC 598, 'Triangulum Galaxy'), a PGC number (2557, 'PGC 2557') "
            "or a position ('00h42m44.3s +41d16m09s', '10.6848 41.2690').",
            show_default=False,
        ),
    ] = None,
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
    out: OutOpt = None,
) -> None:
    """Ask about a catalogued object or a sky position; the server fetches the image.

    [bold]Examples[/bold]

      skyserve target M33
      skyserve target "PGC 2557" --task inclination
      skyserve target "00h42m44.3s +41d16m09s" --fov 5
      skyserve target --ra 10.6847 --dec 41.2690 --fov 5 --out m31.fits
      skyserve target --name "NGC 4565" --json

    An unknown name exits with code 3 and lists the closest catalog names. When the
    server cannot fetch a cutout, the message names the setting to change; uploading an
    image with 'skyserve predict' works without one.
    """
    _check_out(out)
    given = [p for p, v in (("TARGET", what), ("--pgc", pgc), ("--name", name)) if v is not None]
    if ra is not None or dec is not None:
        if ra is None or dec is None:
            raise typer.BadParameter("--ra and --dec go together.", param_hint="--ra/--dec")
        given.append("--ra/--dec")
    if len(given) != 1:
        raise typer.BadParameter(
            "Give exactly one target: skyserve target M33 (a name, PGC number or position), "
            "or one of --pgc N, --name NAME, --ra RA --dec DEC"
            + (f"; got {', '.join(given)}." if given else "."),
            param_hint="TARGET",
        )
    query: dict[str, object] = _what(what) if what is not None else {}
    if pgc is not None:
        query = {"pgc": pgc}
    elif name is not None:
        query = {"name": name}
    elif ra is not None:
        query = {"ra": _coordinate(ra), "dec": _coordinate(dec)}
    label = (
        str(query.get("name") or query.get("coordinates") or "")
        or (f"PGC {query['pgc']}" if "pgc" in query else f"{ra}, {dec}")
    )
    with client(ctx) as sky:
        job = sky.submit_target(
            **query,  # type: ignore[arg-type]
            fov_arcmin=fov,
            tasks=task,
            versions=parse_pins(version),
        )
        outcome = ImageOutcome(label, job=job)
        late = _wait_for(sky, [outcome], timeout) if wait else False
    if outcome.job is not None and (resolved := _input_label(outcome.job)) not in (None, label):
        outcome.label = f"{label} ({resolved})"
    code = _report([outcome], wait=wait, late=late, json_output=json_output, first_column="target")
    if out is not None:
        _write_outcomes(out, [outcome])
    raise typer.Exit(code)


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
