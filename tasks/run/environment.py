"""Every environment variable videobatch reads, what each means, and the one place it is read.

The command line (`videobatch/`) and the set-up code ask this module; nothing else above
`apimart/` looks at `os.environ` (tests/cli/test_options_environment.py pins it). Each reader
takes the environment as an argument (default: this process's), so a test passes a dict.

* `APIMART_API_KEY`: the API key; else the Prefect Secret block `apimart-api-key`
  (`resolve_api_key`). Never a flow parameter, never logged.
* `APIMART_BASE_URL`: the API endpoint when the `base_url` option is not set; else
  https://api.apimart.ai. With neither a key nor an endpoint, `videobatch run` uses the
  built-in sandbox.
* `PREFECT_API_URL`: the Prefect server runs report to (Prefect reads it itself); without it a
  run starts a temporary server, and `videobatch deploy` refuses.
* `VIDEOBATCH_<OPTION>`: one per field of `RunOptions` but `base_url` (whose variable is
  `APIMART_BASE_URL`), e.g. `VIDEOBATCH_POLL_INTERVAL`, `VIDEOBATCH_POLL_INITIAL_DELAY`,
  `VIDEOBATCH_MAX_QUERIES_PER_S`: the option's value when its flag is not given, checked by
  the field's rules. An empty value is no value.
* `VIDEOBATCH_SANDBOX`: `videobatch run` uses the offline emulator even with a key (as
  `--sandbox`).
* `VIDEOBATCH_LEDGER_URL`: where the ledger lives (default: `OUT/ledger.sqlite`). Not a flow
  parameter, since it may hold credentials: `videobatch run --ledger URL` hands it to the run
  through this variable of the process. A URL with a password must come from this variable or
  the Prefect Secret block `videobatch-ledger-url` (taken into this variable at the start of
  each flow run that finds the variable unset: `adopt_ledger_secret`), never from `--ledger`
  (shell history and `ps` show a command line), which refuses one.
* `VIDEOBATCH_PROJECT_DIR`: the project folder `videobatch deploy` writes into the deployments
  (prefect.yaml reads it back as `{{ $VIDEOBATCH_PROJECT_DIR }}`).
* `PREFECT_API_DATABASE_CONNECTION_URL`, `PREFECT_SERVER_DATABASE_CONNECTION_URL`: the database
  of `videobatch server` (read only to say whether it is PostgreSQL or SQLite).

Set, never read back here: the Prefect settings `PREFECT_DEFAULTS` (before Prefect is
imported) and the server's `SERVER_ENV` in `videobatch.setup`.

`apimart/client.py` reads `APIMART_API_KEY` and `APIMART_BASE_URL` itself when its caller passes
no key or URL: a library default, as openai's client reads `OPENAI_API_KEY`, so the client is
usable without this package; the variable names are the same ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import TypeAdapter, ValidationError

from tasks.run.options import RunOptions

API_KEY = "APIMART_API_KEY"
BASE_URL = "APIMART_BASE_URL"
PREFECT_API_URL = "PREFECT_API_URL"
SANDBOX = "VIDEOBATCH_SANDBOX"
LEDGER_URL = "VIDEOBATCH_LEDGER_URL"
PROJECT_DIR = "VIDEOBATCH_PROJECT_DIR"
DATABASE_URLS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")
SECRET_BLOCK = "apimart-api-key"
LEDGER_SECRET_BLOCK = "videobatch-ledger-url"

# Options whose variable is not VIDEOBATCH_<NAME>: the endpoint has one variable, the client's.
_NO_OPTION_VARIABLE = frozenset({"base_url"})

# One VIDEOBATCH_ variable per option (the manifest is an argument, not a setting).
OPTION_VARIABLES: dict[str, str] = {
    name: f"VIDEOBATCH_{name.upper()}"
    for name in RunOptions.model_fields
    if name != "manifest" and name not in _NO_OPTION_VARIABLE
}

# Every variable a reader of this module may look up, with what it means.
VARIABLES: dict[str, str] = {
    API_KEY: "the API key (else the Prefect Secret block apimart-api-key)",
    BASE_URL: "the API endpoint when the base_url option is not set",
    PREFECT_API_URL: "the Prefect server runs report to",
    SANDBOX: "run against the offline emulator even with a key",
    LEDGER_URL: "where the ledger lives; may hold credentials, so never a flow parameter",
    PROJECT_DIR: "the project folder written into the deployments",
    **{var: "the database of `videobatch server`" for var in DATABASE_URLS},
    **{
        var: f"--{name.replace('_', '-')} when the flag is not given"
        for name, var in OPTION_VARIABLES.items()
    },
}

# Before Prefect is imported by a command: a quiet console (the UI keeps every log), no
# telemetry, and a start-up timeout the temporary server can meet on a fresh database.
PREFECT_DEFAULTS = {
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}

_BOOLEAN: TypeAdapter[bool] = TypeAdapter(bool)


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _value(name: str, environ: Mapping[str, str] | None) -> str | None:
    """The variable's value; empty counts as unset (what `export NAME=` leaves behind)."""
    env = _env(environ)
    return (env[name] or None) if name in env else None


def api_key(environ: Mapping[str, str] | None = None) -> str | None:
    return _value(API_KEY, environ)


def resolve_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The key from APIMART_API_KEY, else the Prefect Secret block `apimart-api-key` of the
    configured server; None when neither has one (the caller says so clearly)."""
    return api_key(environ) or _secret_block(SECRET_BLOCK)


def _secret_block(name: str) -> str | None:
    """The value of the Prefect Secret block `name` on the configured server; None with no
    server, no block or no access (callers say clearly what is missing)."""
    try:
        from prefect.blocks.system import Secret

        secret: Any = Secret.load(name, _sync=True)  # type: ignore[call-arg]
        return str(secret.get())
    except Exception:
        return None


def base_url(environ: Mapping[str, str] | None = None) -> str | None:
    return _value(BASE_URL, environ)


def prefect_api_url(environ: Mapping[str, str] | None = None) -> str | None:
    return _value(PREFECT_API_URL, environ)


def ledger_url(environ: Mapping[str, str] | None = None) -> str | None:
    """Where the ledger lives, from VIDEOBATCH_LEDGER_URL; None means `OUT/ledger.sqlite`."""
    return _value(LEDGER_URL, environ)


def adopt_ledger_secret(environ: MutableMapping[str, str] | None = None) -> bool:
    """With VIDEOBATCH_LEDGER_URL unset, take the ledger URL from the Prefect Secret block
    `videobatch-ledger-url` of the configured server into the variable, so a worker needs no
    password in its environment and every reader of `ledger_url` in this process sees one
    answer all run long. Called once where a flow run starts; True when the block was taken.
    No server, no block or no access leaves the variable unset (the folder's SQLite ledger)."""
    env = os.environ if environ is None else environ
    if _value(LEDGER_URL, env):
        return False
    value = (_secret_block(LEDGER_SECRET_BLOCK) or "").strip()
    if not value:
        return False
    env[LEDGER_URL] = value
    return True


def ledger_url_from_flag(url: str) -> str:
    """A `--ledger` URL, unless it holds a password: raises ValueError (which never quotes
    the URL) for one that does, since the command line shows in shell history and `ps`."""
    try:
        parts = urlsplit(url)
        password = bool(parts.password) or "password" in {
            key.lower() for key, _ in parse_qsl(parts.query, keep_blank_values=True)
        }
    except ValueError:
        # Unparseable: it may still hold a password, and nothing here can tell.
        password = True
    if password:
        raise ValueError(
            "a ledger URL with a password must come from the VIDEOBATCH_LEDGER_URL variable "
            "or a Prefect Secret block, not the command line (shell history and `ps` show it)"
        )
    return url


def project_dir(environ: Mapping[str, str] | None = None) -> str | None:
    return _value(PROJECT_DIR, environ)


def database_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The database a Prefect server started with this environment uses (None: SQLite)."""
    for name in DATABASE_URLS:
        value = _value(name, environ)
        if value:
            return value
    return None


def sandbox_forced(environ: Mapping[str, str] | None = None) -> bool | None:
    """VIDEOBATCH_SANDBOX as a yes/no (None when unset); ValueError names the variable."""
    text = _value(SANDBOX, environ)
    if text is None:
        return None
    try:
        return _BOOLEAN.validate_python(text)
    except ValidationError as exc:
        raise ValueError(f"{SANDBOX}: {exc.errors()[0]['msg']}") from None


def option_texts(
    names: Iterable[str], environ: Mapping[str, str] | None = None
) -> dict[str, tuple[str, str]]:
    """For each option named that has a variable set: (variable, text). The text is parsed
    and checked by whoever applies it, by the option's own rules."""
    found = {}
    for name in names:
        var = OPTION_VARIABLES.get(name)
        if var is None:
            continue
        text = _value(var, environ)
        if text is not None:
            found[name] = (var, text)
    return found


def apply_prefect_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    """Set PREFECT_DEFAULTS where the user set nothing (call before Prefect is imported)."""
    env = os.environ if environ is None else environ
    for name, value in PREFECT_DEFAULTS.items():
        env.setdefault(name, value)


def for_subprocess(
    *, drop: Iterable[str] = (), defaults: Mapping[str, str] | None = None
) -> dict[str, str]:
    """This process's environment for a child process, without `drop` (a key the child does
    not need), with `defaults` where the user set nothing."""
    env = {k: v for k, v in os.environ.items() if k not in set(drop)}
    for name, value in (defaults or {}).items():
        env.setdefault(name, value)
    return env


@contextmanager
def exported(values: Mapping[str, str]) -> Iterator[None]:
    """Set variables of this process for a block (a run started in it reads them), then put
    each back as it was, also when the block raises."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
