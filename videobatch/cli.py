"""The `videobatch` command line: parses, prints, exits. The work lives in flows/ and tasks/.

Exit codes: 0 every row completed; 1 the run finished but some rows did not complete (results
are still written); 2 the run could not start or was stopped; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from videobatch import console, ops

if TYPE_CHECKING:
    from tasks.run.options import RunOptions

app = typer.Typer(
    name="videobatch",
    help="Generate AI videos in bulk from a manifest: paid for once, accounted for row by row.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    epilog="Example: `videobatch run data/manifests/demo.csv --out out/demo`",
)

# A 3-5 minute task takes 7-12 s in the sandbox: the demo runs in about a minute.
SANDBOX_TIME_SCALE = console.SANDBOX_TIME_SCALE


def _example(command: str) -> str:
    """A command's help ends with one runnable example (typer prints the epilog last)."""
    return f"Example: `{command}`"


def _env(option: str) -> str:
    return f"VIDEOBATCH_{option.upper()}"


Manifest = Annotated[
    Path, typer.Argument(help="Manifest file: .csv, .parquet or .jsonl.", show_default=False)
]
Out = Annotated[Path, typer.Option("--out", "-o", envvar=_env("out"), help="Output folder.")]
Assets = Annotated[
    Path | None,
    typer.Option(
        envvar=_env("assets"),
        help="Folder local image paths may come from, besides the manifest's own folder.",
        show_default=False,
    ),
]


@app.command(epilog=_example("videobatch run data/manifests/demo.csv --out out/demo --max-cost 5"))
def run(
    ctx: typer.Context,
    manifest: Manifest,
    out: Out = Path("out"),
    assets: Assets = None,
    concurrency: Annotated[
        int, typer.Option(envvar=_env("concurrency"), min=1, help="Most jobs in flight.")
    ] = 8,
    submit_rate: Annotated[
        float, typer.Option(envvar=_env("submit_rate"), help="Most submissions per second.")
    ] = 2.0,
    max_cost: Annotated[
        float | None,
        typer.Option(envvar=_env("max_cost"), help="Budget cap for the output folder."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option(envvar=_env("dry_run"), help="Validate and estimate; send nothing.")
    ] = False,
    resubmit_unknown: Annotated[
        bool,
        typer.Option(
            envvar=_env("resubmit_unknown"), help="Resend rows whose POST outcome is unknown."
        ),
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(envvar=_env("retry_failed"), help="Submit failed rows as a new attempt."),
    ] = False,
    poll_initial_delay: Annotated[
        float,
        typer.Option(envvar=_env("poll_initial_delay"), help="Seconds before the first query."),
    ] = 8.0,
    poll_interval: Annotated[
        float, typer.Option(envvar=_env("poll_interval"), help="Seconds between queries.")
    ] = 8.0,
    poll_timeout: Annotated[
        float,
        typer.Option(envvar=_env("poll_timeout"), help="Seconds of polling before `timeout`."),
    ] = 1800.0,
    sandbox: Annotated[
        bool,
        typer.Option(envvar=_env("sandbox"), help="Run against the offline sandbox (no cost)."),
    ] = False,
    report: Annotated[
        bool, typer.Option(envvar=_env("report"), help="Write OUT/report.html.")
    ] = True,
) -> None:
    """Generate one video per manifest row into OUT; run it again to resume.

    Rows already submitted are polled, not paid again; rows whose POST outcome is unknown are
    held until you pass --resubmit-unknown.
    """
    given = {
        "out": str(out),
        "assets": str(assets) if assets is not None else None,
        "concurrency": concurrency,
        "submit_rate": submit_rate,
        "max_cost": max_cost,
        "dry_run": dry_run,
        "resubmit_unknown": resubmit_unknown,
        "retry_failed": retry_failed,
        "poll_initial_delay": poll_initial_delay,
        "poll_interval": poll_interval,
        "poll_timeout": poll_timeout,
        "report": report,
    }
    options = _run_options(ctx, str(manifest), given)
    if dry_run:
        raise typer.Exit(console.dry_run(options))
    raise typer.Exit(console.run(options, sandbox=sandbox))


def _run_options(ctx: typer.Context, manifest: str, values: dict[str, Any]) -> RunOptions:
    """RunOptions holding only what the user gave (a flag or its VIDEOBATCH_ variable).

    The rest take the model's defaults but stay out of `model_fields_set`, so code that
    adapts unset options (the sandbox's polling pace) never overrides a value the user chose,
    even one equal to the default.
    """
    from tasks.run.options import RunOptions

    given = {}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT":
            given[name] = value
    return RunOptions(manifest=manifest, **given)


@app.command(epilog=_example("videobatch validate data/manifests/invalid.csv"))
def validate(manifest: Manifest, assets: Assets = None) -> None:
    """Check every row of a manifest and estimate cost and time; nothing is sent."""
    from tasks.run.options import RunOptions

    folder = str(assets) if assets is not None else None
    raise typer.Exit(console.dry_run(RunOptions(manifest=str(manifest), assets=folder)))


@app.command(epilog=_example("videobatch status out/demo"))
def status(out: Annotated[Path, typer.Argument(help="Output folder of a run.")]) -> None:
    """Counts by state and money spent so far in OUT, also while a run is going."""
    raise typer.Exit(console.status(out))


@app.command(epilog=_example("videobatch results out/demo"))
def results(
    out: Annotated[Path, typer.Argument(help="Output folder of a run.")],
    manifest: Annotated[
        Path | None,
        typer.Option(help="Manifest to rebuild against (default: the one the run used)."),
    ] = None,
) -> None:
    """Rebuild OUT/results.parquet and OUT/results.csv from the ledger."""
    raise typer.Exit(console.rebuild_results(out, manifest))


@app.command(
    "report", epilog=_example("videobatch report out/demo && xdg-open out/demo/report.html")
)
def report_cmd(out: Annotated[Path, typer.Argument(help="Output folder of a run.")]) -> None:
    """Write OUT/report.html: totals, costs, timings, failures and a contact sheet."""
    raise typer.Exit(console.report(out))


@app.command(
    epilog=_example(
        "videobatch sandbox --port 8765 --time-scale 0.01 --faults '{\"task_fail\": 0.1}'"
    )
)
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8765,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    api_key: Annotated[str, typer.Option(help="The Bearer key the sandbox accepts.")] = (
        "sk-sandbox"
    ),
    time_scale: Annotated[
        float, typer.Option(help="Multiplies task latency (3-5 min); 0.01 makes it seconds.")
    ] = SANDBOX_TIME_SCALE,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    faults: Annotated[
        str | None,
        typer.Option(
            help='Faults to inject: JSON text or a JSON file, e.g. \'{"task_fail": 0.1, '
            '"submit_429": {"rate": 0.2, "times": 1}, "payment_after": 50}\'.'
        ),
    ] = None,
    submit_shape: Annotated[
        str, typer.Option(help="Submit answer shape: list, object or mixed.")
    ] = "list",
    url_shape: Annotated[str, typer.Option(help="Video url shape: string, list or mixed.")] = (
        "list"
    ),
) -> None:
    """Serve the offline emulator of the APIMart API and its CDN (real H.264 MP4s).

    Point a run at it with APIMART_BASE_URL=http://127.0.0.1:PORT APIMART_API_KEY=sk-sandbox.
    """
    raise typer.Exit(
        console.serve_sandbox(
            host=host,
            port=port,
            api_key=api_key,
            time_scale=time_scale,
            seed=seed,
            faults=faults,
            submit_shape=submit_shape,
            url_shape=url_shape,
        )
    )


@app.command(epilog=_example("PREFECT_API_URL=http://127.0.0.1:4200/api videobatch deploy"))
def deploy(
    project: Annotated[
        Path,
        typer.Option(
            envvar="VIDEOBATCH_PROJECT_DIR",
            help="Project folder holding prefect.yaml (same path on workers).",
        ),
    ] = Path("."),
) -> None:
    """Set up the Prefect server at PREFECT_API_URL: pool, limits, secret, deployments.

    Safe to run twice. The API key comes from APIMART_API_KEY into the Secret block
    `apimart-api-key`; it is never a parameter of any deployment.
    """
    raise typer.Exit(ops.deploy(project))


@app.command(epilog=_example("videobatch server --port 4200"))
def server(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API and the UI.")] = 4200,
) -> None:
    """Start a local Prefect server (API and UI) tuned for thousands of task runs.

    Then `export PREFECT_API_URL=http://127.0.0.1:4200/api` so runs report to it.
    """
    raise typer.Exit(ops.server(host, port))


def main() -> None:
    # Before Prefect is imported: quiet console (the UI keeps every log), no telemetry, and a
    # start-up timeout the temporary server can meet on a fresh database.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    app(prog_name="videobatch")


if __name__ == "__main__":  # pragma: no cover
    main()
