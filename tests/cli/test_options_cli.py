"""The options of `run`, declared once (the fields of RunOptions): every field is a flag with
its default, help and rule; a flag not given is not set; a VIDEOBATCH_ variable applies only
where no flag was given; a bad value names the option and the rule; `--ledger` reaches the run
through the process environment, never through the options. In process, with typer's runner:
the command line's parsing is the point here, not a subprocess."""

from __future__ import annotations

import os
import re
from typing import Any

import annotated_types
import pytest
import typer.main
from typer.testing import CliRunner, Result

from tasks.run.options import RunOptions
from videobatch import cli as cli_module
from videobatch import console

# Every field but the manifest (an argument) is an option of `run`.
FIELDS = {name: info for name, info in RunOptions.model_fields.items() if name != "manifest"}

# A value unlike the default for every VIDEOBATCH_ variable of `run`, as text and as parsed.
# base_url has none: APIMART_BASE_URL is the endpoint's one variable (the client reads it).
ENV_VALUES: dict[str, tuple[str, Any]] = {
    "out": ("env/out", "env/out"),
    "assets": ("env/assets", "env/assets"),
    "concurrency": ("5", 5),
    "submit_rate": ("7.5", 7.5),
    "max_cost": ("3.25", 3.25),
    "dry_run": ("true", True),
    "resubmit_unknown": ("1", True),
    "retry_failed": ("yes", True),
    "poll_initial_delay": ("0.3", 0.3),
    "poll_interval": ("0.4", 0.4),
    "poll_timeout": ("99", 99.0),
    "prices": ('{"720p": 0.5}', {"720p": 0.5}),
    "max_video_mb": ("12", 12.0),
    "download_timeout": ("33", 33.0),
    "report": ("false", False),
    "max_queries_per_s": ("2.5", 2.5),
    "poll_lag_target": ("30", 30.0),
    "poll_duration_low": ("60", 60.0),
    "poll_duration_high": ("900", 900.0),
    "lease_seconds": ("45", 45.0),
    "sandbox": ("on", True),
}

LEDGER_VAR = "VIDEOBATCH_LEDGER_URL"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _flat(text: str) -> str:
    """Output without rich's box drawing and line wrapping, so a message reads as one line."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _run_params() -> dict[str, Any]:
    group: Any = typer.main.get_command(cli_module.app)
    command = group.commands["run"]
    return {p.name: p for p in command.params if p.param_type_name == "option"}


def _invoke(
    monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str] | None = None
) -> tuple[Result, dict[str, Any]]:
    """`videobatch run m.csv ARGS` in this process, with the console's run (and dry run)
    replaced by one that records the options, the sandbox choice and the ledger variable it
    was started with. The environment holds no API or videobatch setting but `env`."""
    for var in [v for v in os.environ if v.startswith(("VIDEOBATCH_", "APIMART_"))]:
        monkeypatch.delenv(var)
    seen: dict[str, Any] = {}

    def fake_run(options: RunOptions, *, sandbox: bool) -> int:
        seen.update(options=options, sandbox=sandbox, ledger=os.environ.get(LEDGER_VAR))
        return 0

    def fake_dry_run(options: RunOptions) -> int:
        seen.update(options=options, sandbox=None, ledger=os.environ.get(LEDGER_VAR))
        return 0

    monkeypatch.setattr(console, "run", fake_run)
    monkeypatch.setattr(console, "dry_run", fake_dry_run)
    result = CliRunner().invoke(
        cli_module.app, ["run", "m.csv", *args], env={"COLUMNS": "250", **(env or {})}
    )
    return result, seen


def _rule_texts(name: str) -> list[str]:
    """How the help states each constraint of a field, e.g. `>= 1`."""
    texts = []
    for rule in FIELDS[name].metadata:
        for kind, sign in ((annotated_types.Ge, ">="), (annotated_types.Gt, ">")):
            if isinstance(rule, kind):
                texts.append(f"{sign} {getattr(rule, kind.__name__.lower())}")
        for kind, sign in ((annotated_types.Le, "<="), (annotated_types.Lt, "<")):
            if isinstance(rule, kind):
                texts.append(f"{sign} {getattr(rule, kind.__name__.lower())}")
    return texts


# --- every field is a flag -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_field_is_a_run_flag_with_its_default_help_and_rule(name: str) -> None:
    """Each RunOptions field is a `run` option spelled --field-name, whose default is the
    field's default and whose help is the field's description with its rules."""
    params = _run_params()
    assert name in params, f"RunOptions.{name} has no flag on `run`"
    param, info = params[name], FIELDS[name]
    assert _flag(name) in param.opts, param.opts
    assert param.default == info.default, (name, param.default, info.default)
    assert info.description and info.description in param.help, param.help
    for rule in _rule_texts(name):
        assert rule in param.help, (name, rule, param.help)


def test_run_help_shows_every_flag_and_ends_with_an_example() -> None:
    """`videobatch run --help` lists the flag of every field (the new query cap and lag target
    included) and still ends with its example."""
    result = CliRunner().invoke(cli_module.app, ["run", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in FIELDS:
        assert _flag(name) in result.output, name
    assert "--ledger" in result.output
    assert _flat(result.output).endswith(
        "Example: videobatch run data/manifests/demo.csv --out out/demo --max-cost 5"
    ), result.output


def test_the_new_rate_options_have_their_documented_defaults() -> None:
    """max_queries_per_s defaults to 4 per second, poll_lag_target to 10 s and the duration
    prior to 180-300 s, all > 0; no pace is pinned (None: adaptive polling)."""
    options = RunOptions(manifest="m.csv")
    assert (options.max_queries_per_s, options.poll_lag_target) == (4.0, 10.0)
    assert (options.poll_duration_low, options.poll_duration_high) == (180.0, 300.0)
    assert (options.poll_interval, options.poll_initial_delay) == (None, None)
    for name in ("max_queries_per_s", "poll_lag_target", "poll_duration_low", "poll_interval"):
        with pytest.raises(ValueError, match="greater than 0"):
            RunOptions(manifest="m.csv", **{name: 0})


def test_the_duration_prior_must_be_a_range() -> None:
    """poll_duration_high must be above poll_duration_low, and both at most an hour."""
    with pytest.raises(ValueError, match=r"poll_duration_high[\s\S]*above poll_duration_low"):
        RunOptions(manifest="m.csv", poll_duration_low=300, poll_duration_high=300)
    with pytest.raises(ValueError, match="less than or equal to 3600"):
        RunOptions(manifest="m.csv", poll_duration_high=7200)
    assert RunOptions(manifest="m.csv", poll_duration_low=5, poll_duration_high=9)


# --- not set, set, and the environment -------------------------------------------------------


def test_a_flag_not_given_is_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options nobody gave stay out of `model_fields_set`; a flag given is set even when it
    equals the default."""
    result, seen = _invoke(monkeypatch, [])
    assert result.exit_code == 0, result.output
    assert seen["options"].model_fields_set == {"manifest"}
    assert seen["sandbox"] is False and seen["ledger"] is None

    result, seen = _invoke(
        monkeypatch, ["--poll-interval", "8", "--max-queries-per-s", "4", "--no-report"]
    )
    assert result.exit_code == 0, result.output
    options = seen["options"]
    assert options.model_fields_set == {"manifest", "poll_interval", "max_queries_per_s", "report"}
    assert (options.poll_interval, options.max_queries_per_s, options.report) == (8.0, 4.0, False)


def test_the_environment_applies_only_where_no_flag_was_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """VIDEOBATCH_POLL_INTERVAL and the lag target come from the environment (and count as
    set); --poll-initial-delay on the command line beats VIDEOBATCH_POLL_INITIAL_DELAY."""
    env = {
        "VIDEOBATCH_POLL_INTERVAL": "3",
        "VIDEOBATCH_POLL_INITIAL_DELAY": "2",
        "VIDEOBATCH_POLL_LAG_TARGET": "20",
    }
    result, seen = _invoke(monkeypatch, ["--poll-initial-delay", "5"], env)
    assert result.exit_code == 0, result.output
    options = seen["options"]
    assert (options.poll_interval, options.poll_initial_delay, options.poll_lag_target) == (
        3.0,
        5.0,
        20.0,
    )
    assert {"poll_interval", "poll_initial_delay", "poll_lag_target"} <= options.model_fields_set
    assert "max_queries_per_s" not in options.model_fields_set


def test_every_option_but_the_endpoint_has_its_environment_variable() -> None:
    """Each `run` option's help names its VIDEOBATCH_<NAME> variable; base_url has none (its
    variable is APIMART_BASE_URL, which the client reads when the option is not set)."""
    params = _run_params()
    assert set(ENV_VALUES) == {*FIELDS, "sandbox"} - {"base_url"}, "give the field a row"
    for name in ENV_VALUES:
        assert f"VIDEOBATCH_{name.upper()}" in params[name].help, name
    assert "VIDEOBATCH_BASE_URL" not in params["base_url"].help
    assert "APIMART_BASE_URL" in params["base_url"].help


@pytest.mark.parametrize("name", list(ENV_VALUES))
def test_each_environment_variable_reaches_the_run(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """VIDEOBATCH_<NAME> alone sets that option, parsed as its flag would be, and nothing
    else."""
    text, expected = ENV_VALUES[name]
    result, seen = _invoke(monkeypatch, [], {f"VIDEOBATCH_{name.upper()}": text})
    assert result.exit_code == 0, result.output
    got = seen["sandbox"] if name == "sandbox" else getattr(seen["options"], name)
    assert got == expected, name
    unset = {"manifest"} if name == "sandbox" else {"manifest", name}
    assert seen["options"].model_fields_set == unset


def test_an_empty_variable_is_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """VIDEOBATCH_CONCURRENCY= (empty, as `export X=` leaves it) is the same as no variable."""
    result, seen = _invoke(monkeypatch, [], {"VIDEOBATCH_CONCURRENCY": ""})
    assert result.exit_code == 0, result.output
    assert seen["options"].model_fields_set == {"manifest"}


def test_the_endpoint_comes_from_its_flag_not_a_videobatch_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--base-url sets the endpoint; VIDEOBATCH_BASE_URL is not read (one variable per idea:
    APIMART_BASE_URL)."""
    result, seen = _invoke(monkeypatch, [], {"VIDEOBATCH_BASE_URL": "https://elsewhere.test"})
    assert result.exit_code == 0, result.output
    assert seen["options"].base_url is None
    result, seen = _invoke(monkeypatch, ["--base-url", "https://api.example.test"])
    assert seen["options"].base_url == "https://api.example.test"


def test_a_flag_beats_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """--concurrency 2 and --report win over VIDEOBATCH_CONCURRENCY=5 and VIDEOBATCH_REPORT."""
    env = {"VIDEOBATCH_CONCURRENCY": "5", "VIDEOBATCH_REPORT": "false"}
    result, seen = _invoke(monkeypatch, ["--concurrency", "2", "--report"], env)
    assert result.exit_code == 0, result.output
    assert seen["options"].concurrency == 2 and seen["options"].report is True


def test_folders_are_taken_as_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out out/demo/` and `VIDEOBATCH_ASSETS=./pics/` name the folders `out/demo` and
    `pics`, so one folder has one spelling in the ledger and the artifacts."""
    result, seen = _invoke(monkeypatch, ["--out", "out/demo/"], {"VIDEOBATCH_ASSETS": "./pics/"})
    assert result.exit_code == 0, result.output
    assert (seen["options"].out, seen["options"].assets) == ("out/demo", "pics")


def test_a_url_location_is_kept_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out s3://bucket/prefix` (flag or VIDEOBATCH_OUT) stays a URL, never the local folder
    `s3:/bucket/prefix`, which a later run into the real URL would not find (and pay again)."""
    result, seen = _invoke(monkeypatch, ["--out", "s3://bucket/prefix"])
    assert result.exit_code == 0, result.output
    assert seen["options"].out == "s3://bucket/prefix"
    result, seen = _invoke(monkeypatch, [], {"VIDEOBATCH_OUT": "s3://bucket/other/"})
    assert result.exit_code == 0, result.output
    assert seen["options"].out == "s3://bucket/other/"
    result = CliRunner().invoke(cli_module.app, ["run", "s3://b/m.csv", "--dry-run"])
    assert "s3:/b/m.csv" not in result.output


def test_prices_are_given_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """--prices takes a JSON object of prices by resolution."""
    result, seen = _invoke(monkeypatch, ["--prices", '{"720p": 0.2, "4k": 1.5}'])
    assert result.exit_code == 0, result.output
    assert seen["options"].prices == {"720p": 0.2, "4k": 1.5}


@pytest.mark.parametrize(
    ("args", "env", "names", "rule"),
    [
        (["--concurrency", "0"], {}, "'--concurrency'", "greater than or equal to 1"),
        (["--concurrency", "5000"], {}, "'--concurrency'", "less than or equal to 1000"),
        (["--poll-lag-target", "0"], {}, "'--poll-lag-target'", "greater than 0"),
        (["--max-queries-per-s", "-1"], {}, "'--max-queries-per-s'", "greater than 0"),
        (
            ["--poll-duration-high", "100"],
            {},
            "'--poll-duration-high'",
            "must be above poll_duration_low (180 s)",
        ),
        ([], {"VIDEOBATCH_POLL_INTERVAL": "0"}, "VIDEOBATCH_POLL_INTERVAL", "greater than 0"),
        ([], {"VIDEOBATCH_SUBMIT_RATE": "0"}, "VIDEOBATCH_SUBMIT_RATE", "greater than 0"),
        ([], {"VIDEOBATCH_CONCURRENCY": "zero"}, "VIDEOBATCH_CONCURRENCY", "valid integer"),
        ([], {"VIDEOBATCH_REPORT": "maybe"}, "VIDEOBATCH_REPORT", "valid boolean"),
        (["--prices", '{"720p": "cheap"}'], {}, "'--prices'", "valid number"),
        (["--prices", '["720p"]'], {}, "'--prices'", "a JSON object"),
        (["--prices", '{"720p": 0}'], {}, "'--prices'", "the price of 720p must be above 0"),
        (["--prices", '{"720p": -1}'], {}, "'--prices'", "the price of 720p must be above 0"),
        (["--prices", '{"8k": 1}'], {}, "'--prices'", "'8k' is not a resolution"),
        ([], {"VIDEOBATCH_PRICES": "{720p"}, "VIDEOBATCH_PRICES", "a JSON object"),
    ],
    ids=[
        "below-min",
        "above-max",
        "lag-zero",
        "rate-negative",
        "prior-high-below-low",
        "env-interval-zero",
        "env-rate-zero",
        "env-not-a-number",
        "env-not-a-boolean",
        "price-not-a-number",
        "prices-not-an-object",
        "price-zero",
        "price-negative",
        "price-of-no-resolution",
        "env-prices-not-json",
    ],
)
def test_a_bad_value_names_the_option_and_the_rule(
    monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str], names: str, rule: str
) -> None:
    """A value that breaks a field's rule (on the command line or in its variable) stops the
    command with exit 2, naming the flag or the variable and the rule; nothing runs."""
    result, seen = _invoke(monkeypatch, args, env)
    assert result.exit_code == 2, result.output
    said = _flat(result.output)
    assert names in said and rule in said, said
    assert "Traceback" not in result.output
    assert not seen, "the run must not start"


# --- the ledger's location: the process environment, never the options ----------------------


def test_ledger_flag_reaches_the_run_through_the_environment_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--ledger URL is in VIDEOBATCH_LEDGER_URL while the run goes, not in its options (flow
    parameters are stored by Prefect), and the variable is put back afterwards."""
    url = "postgresql://ledger-host:5432/videobatch"
    result, seen = _invoke(monkeypatch, ["--ledger", url])
    assert result.exit_code == 0, result.output
    assert seen["ledger"] == url
    assert "ledger-host" not in seen["options"].model_dump_json()
    assert LEDGER_VAR not in os.environ


def test_ledger_variable_is_passed_on_untouched_without_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --ledger, a VIDEOBATCH_LEDGER_URL holding a password reaches the run as it
    is: the environment is where such a URL belongs."""
    url = "postgresql://videobatch:s3cret-pw@ledger-host/videobatch"
    result, seen = _invoke(monkeypatch, [], {LEDGER_VAR: url})
    assert result.exit_code == 0, result.output
    assert seen["ledger"] == url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://videobatch:s3cret-pw@ledger-host/videobatch",
        "postgresql://videobatch@ledger-host/videobatch?password=s3cret-pw",
        "postgresql://ledger-host/videobatch?user=vb&PASSWORD=s3cret-pw",
        "postgresql://vb:s3cret-pw@[ledger-host/videobatch",
    ],
    ids=["authority", "query", "query-any-case", "unparseable"],
)
def test_ledger_flag_with_a_password_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """--ledger with a password anywhere in the URL (shell history and `ps` would show it), or
    a URL too broken to tell, stops with exit 2, names the flag and where the URL must come
    from, and never prints the password."""
    result, seen = _invoke(monkeypatch, ["--ledger", url])
    assert result.exit_code == 2, result.output
    said = _flat(result.output)
    assert "'--ledger'" in said and LEDGER_VAR in said and "Secret block" in said, said
    assert "s3cret-pw" not in result.output
    assert not seen


# --- a command sharing the options -------------------------------------------------------------


def test_validate_takes_assets_as_run_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """`validate --assets` is the same option as run's (help, variable): VIDEOBATCH_ASSETS
    applies when the flag is absent."""
    for var in [v for v in os.environ if v.startswith("VIDEOBATCH_")]:
        monkeypatch.delenv(var)
    seen: list[RunOptions] = []
    monkeypatch.setattr(console, "dry_run", lambda options: seen.append(options) or 0)
    runner = CliRunner()
    assert runner.invoke(cli_module.app, ["validate", "m.csv", "--assets", "pics"]).exit_code == 0
    result = runner.invoke(cli_module.app, ["validate", "m.csv"], env={"VIDEOBATCH_ASSETS": "img"})
    assert result.exit_code == 0, result.output
    assert [o.assets for o in seen] == ["pics", "img"]

    group: Any = typer.main.get_command(cli_module.app)
    (assets,) = [p for p in group.commands["validate"].params if p.name == "assets"]
    assert assets.help == _run_params()["assets"].help
