"""The ``skyserve`` command line: submit images, targets and catalogs, read the answers.

The commands live in ``services.client.commands``; this module builds the typer ``app``
(the console script ``skyserve``), its global options and its help.
"""

from __future__ import annotations

from typing import Annotated

import typer

from services.client.commands import batches, catalogue, jobs
from services.client.commands.common import ExitCode, ServerOptions

__all__ = ["app", "ExitCode"]


HELP = """\
Ask skyserve about sky images: a spiral galaxy's inclination, whether a
person would reject the image, morphology, object type — with ensembles
and honest uncertainties.

[bold]Examples[/bold]

  skyserve predict galaxy.png --task inclination
  skyserve predict galaxy.fits --out answers.fits
  skyserve target M33
  skyserve target "00h42m44.3s +41d16m09s" --fov 5
  skyserve batch catalog.csv --out results.votable
  skyserve tasks

[bold]Output files[/bold] (--out): the extension picks the format — .csv,
.json, .ecsv, .fits (binary table), .vot/.votable (VOTable) or .parquet.

Set the server with [bold]--url[/bold] or SKYSERVE_URL (default
http://127.0.0.1:8000), the key with [bold]--api-key[/bold] or SKYSERVE_API_KEY.
Progress and errors go to stderr; tables and --json output to stdout.

[bold]Exit codes[/bold]

    0  success
    1  a job or batch failed, or some batch rows failed
       (unless --allow-failures)
    2  usage error (bad options or arguments)
    3  the API refused the request (4xx: unknown task, not an image,
       unknown target, …)
    4  the server is unavailable (5xx, not ready, or cannot be reached)
    5  timed out waiting (the job or batch keeps running on the server)
  130  interrupted with Ctrl-C (likewise)
"""

app = typer.Typer(
    name="skyserve",
    help=HELP,
    rich_markup_mode="rich",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            metavar="URL",
            envvar="SKYSERVE_URL",
            help="Base URL of the API (default: http://127.0.0.1:8000).",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            metavar="KEY",
            envvar="SKYSERVE_API_KEY",
            help="Sent as 'Authorization: Bearer KEY'.",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = ServerOptions(url, api_key)


app.command()(jobs.predict)
app.command()(jobs.target)
app.command()(batches.batch)
app.command("batch-results")(batches.batch_results)
app.command()(jobs.job)
app.command()(jobs.cancel)
app.command()(catalogue.tasks)
app.command()(catalogue.models)
app.command()(catalogue.ready)
