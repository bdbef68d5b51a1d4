"""The `videobatch` command line: parses, prints, exits. The work lives in flows/ and tasks/.

Exit codes: 0 every row completed; 1 the run finished but some rows did not complete (results
are still written); 2 the run could not start or was stopped; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import annotated_types
import typer
from pydantic import ValidationError
from pydantic.fields import FieldInfo

# RunOptions (pydantic, no Prefect) is imported at start-up: the flags are generated from it.
from tasks.run import environment
from tasks.run.options import RunOptions
from tasks.store.locations import is_url
from videobatch import console, ops

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


# --- the options of a run, generated from the fields of RunOptions ---------------------------

# Every field but the manifest (an argument) is an option of `run`.
RUN_OPTIONS = tuple(name for name in RunOptions.model_fields if name != "manifest")
# Presentation only, not a declaration: the one short alias, and the fields that name a folder
# (given as paths, so `out/demo/` and `./out/demo` are the folder `out/demo`, as before).
_SHORT_FLAGS = {"out": "-o"}
_FOLDERS = frozenset({"out", "assets"})


# `s3://bucket/prefix` is a location, not a path: Path() would fold it into `s3:/bucket/prefix`,
# a local folder, and a later run into the real URL would open another ledger and pay again.
def _location(text: str) -> str:
    """A URL as given; a path normalised (`out/demo/` and `./out/demo` are `out/demo`)."""
    return text if is_url(text) else str(Path(text))


_RULES = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)
_Command = TypeVar("_Command", bound=Callable[..., None])


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field(name: str) -> FieldInfo:
    return RunOptions.model_fields[name]


def _base_type(name: str) -> Any:
    """The field's type without None: what a value of the option is."""
    annotation = _field(name).annotation
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_json(name: str) -> bool:
    """Mappings (the price table) are given as JSON text, on the command line and in env."""
    return get_origin(_base_type(name)) is dict


def _cli_type(name: str) -> Any:
    base = _base_type(name)
    if _is_json(name):
        base = str
    elif base not in (str, int, float, bool):
        raise TypeError(f"RunOptions.{name}: no command-line form for {base!r}")
    return base | None if _field(name).default is None else base


def _help(name: str) -> str:
    """The field's description, its rules as the model checks them, and its variable."""
    info = _field(name)
    parts = [info.description or ""]
    rules = [
        f"{sign} {getattr(rule, attr)}"
        for rule in info.metadata
        for kind, attr, sign in _RULES
        if isinstance(rule, kind)
    ]
    if rules:
        parts.append(f"Must be {' and '.join(rules)}.")
    if _is_json(name):
        parts.append("A JSON object.")
    var = environment.OPTION_VARIABLES.get(name)
    if var:
        parts.append(f"Env: {var}.")
    return " ".join(parts)


def _option(name: str) -> inspect.Parameter:
    """The typer option of one RunOptions field: --field-name, the field's type, default,
    description and rules. Its value is checked by the model itself (see _run_options)."""
    decls = (_flag(name), _SHORT_FLAGS[name]) if name in _SHORT_FLAGS else ()
    option = typer.Option(*decls, help=_help(name), metavar="JSON" if _is_json(name) else None)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=_field(name).default,
        annotation=Annotated[_cli_type(name), option],
    )


def with_run_options(*names: str) -> Callable[[_Command], _Command]:
    """Give a command one option per named RunOptions field, received in its **options.

    typer reads a command's options from its signature, so the signature is extended: the
    generated options come after the command's own positional parameters and before its own
    keyword-only ones.
    """

    def extend(command: _Command) -> _Command:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        positional = [p for p in own if p.kind is not p.KEYWORD_ONLY]
        keyword = [p for p in own if p.kind is p.KEYWORD_ONLY]
        generated = [_option(name) for name in names]
        extended = signature.replace(parameters=[*positional, *generated, *keyword])
        command.__signature__ = extended  # type: ignore[attr-defined]
        return command

    return extend


def _given(ctx: typer.Context, name: str) -> bool:
    """The user gave this option on the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def _json_object(text: str, where: str) -> Any:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise typer.BadParameter(
            'must be a JSON object, e.g. {"720p": 0.15}', param_hint=where
        ) from None
    return value


def _run_options(ctx: typer.Context, manifest: str, values: dict[str, Any]) -> RunOptions:
    """RunOptions holding only what the user gave: a flag, else its VIDEOBATCH_ variable.

    The rest take the model's defaults but stay out of `model_fields_set`, so code that
    adapts unset options (the sandbox's polling pace) never overrides a value the user chose,
    even one equal to the default. Every value is checked by the model's own rules; a bad one
    stops the command (exit 2) naming the flag or the variable, and the rule.
    """
    given: dict[str, Any] = {}
    where: dict[str, str] = {}
    for name, value in values.items():
        if _given(ctx, name):
            given[name], where[name] = value, f"'{_flag(name)}'"
    absent = [name for name in values if name not in given]
    for name, (var, text) in environment.option_texts(absent).items():
        # The text as it is: the model parses it by the field's type (numbers, yes/no).
        given[name], where[name] = text, f"{var} (the value of '{_flag(name)}')"
    for name in given:
        if _is_json(name) and isinstance(given[name], str):
            given[name] = _json_object(given[name], where[name])
        elif name in _FOLDERS:
            given[name] = _location(str(given[name]))
    try:
        return RunOptions(manifest=manifest, **given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name, *inner = (str(part) for part in error["loc"])
        detail = f"{'.'.join(inner)}: " if inner else ""
        raise typer.BadParameter(
            f"{detail}{error['msg']}", param_hint=where.get(name, f"'{_flag(name)}'")
        ) from None


def _sandbox_forced(ctx: typer.Context, flag: bool) -> bool:
    if _given(ctx, "sandbox"):
        return flag
    try:
        return bool(environment.sandbox_forced())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=environment.SANDBOX) from None


def _ledger_export(url: str | None) -> dict[str, str]:
    """What `--ledger` puts into the run's environment (nothing when not given)."""
    if url is None:
        return {}
    try:
        return {environment.LEDGER_URL: environment.ledger_url_from_flag(url)}
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--ledger'") from None


Manifest = Annotated[
    str,
    typer.Argument(
        help="Manifest: .csv, .parquet or .jsonl; a path or a URL (s3://...).",
        show_default=False,
        metavar="MANIFEST",
    ),
]


@app.command(epilog=_example("videobatch run data/manifests/demo.csv --out out/demo --max-cost 5"))
@with_run_options(*RUN_OPTIONS)
def run(
    ctx: typer.Context,
    manifest: Manifest,
    *,
    sandbox: Annotated[
        bool,
        typer.Option(
            help="Run against the offline sandbox (no cost), even with a key. "
            f"Env: {environment.SANDBOX}."
        ),
    ] = False,
    ledger: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Where the ledger lives (default: OUT/ledger.sqlite). Given to the run as "
            f"{environment.LEDGER_URL} in its environment, never as a flow parameter (Prefect "
            f"stores those). A URL with a password must come from {environment.LEDGER_URL} "
            "or a Prefect Secret block: here it is refused.",
            show_default=False,
        ),
    ] = None,
    **options: Any,
) -> None:
    """Generate one video per manifest row into OUT; run it again to resume.

    Rows already submitted are polled, not paid again; rows whose POST outcome is unknown are
    held until you pass --resubmit-unknown.
    """
    chosen = _run_options(ctx, _location(manifest), options)
    forced = _sandbox_forced(ctx, sandbox)
    with environment.exported(_ledger_export(ledger)):
        code = console.dry_run(chosen) if chosen.dry_run else console.run(chosen, sandbox=forced)
    raise typer.Exit(code)


@app.command(epilog=_example("videobatch validate data/manifests/invalid.csv"))
@with_run_options("assets")
def validate(ctx: typer.Context, manifest: Manifest, **options: Any) -> None:
    """Check every row of a manifest and estimate cost and time; nothing is sent."""
    raise typer.Exit(console.dry_run(_run_options(ctx, _location(manifest), options)))


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
        Path | None,
        typer.Option(
            help="Project folder holding prefect.yaml (same path on workers). Default: "
            f"{environment.PROJECT_DIR}, else the current folder.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Set up the Prefect server at PREFECT_API_URL: pool, limits, secret, deployments.

    Safe to run twice. The API key comes from APIMART_API_KEY into the Secret block
    `apimart-api-key`; it is never a parameter of any deployment.
    """
    folder = project or Path(environment.project_dir() or ".")
    raise typer.Exit(ops.deploy(folder))


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
    environment.apply_prefect_defaults()  # before any command imports Prefect
    app(prog_name="videobatch")


if __name__ == "__main__":  # pragma: no cover
    main()
