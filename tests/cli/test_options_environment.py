"""The environment is read in one place, tasks/run/environment.py, which names every variable
it reads and what it means; the code above apimart reads no variable of its own."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tasks.run import environment
from tasks.run.options import RunOptions

ROOT = Path(__file__).resolve().parents[2]


class Recording(Mapping[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values, self.asked = values, set[str]()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self.values[name]

    def __contains__(self, name: object) -> bool:
        self.asked.add(str(name))
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_every_variable_read_is_named_and_explained() -> None:
    """Each reader of environment.py looks up only variables of its catalogue, and each one
    of them is explained in the module's docstring."""
    env = Recording({})
    environment.api_key(env)
    environment.base_url(env)
    environment.prefect_api_url(env)
    environment.ledger_url(env)
    environment.project_dir(env)
    environment.sandbox_forced(env)
    environment.database_url(env)
    environment.option_texts(RunOptions.model_fields, env)
    assert env.asked, "the readers read nothing"
    assert env.asked <= set(environment.VARIABLES), env.asked - set(environment.VARIABLES)
    doc = environment.__doc__ or ""
    for name, meaning in environment.VARIABLES.items():
        assert meaning.strip(), name
        # The options' variables are one family there: VIDEOBATCH_<OPTION>.
        family = "VIDEOBATCH_<OPTION>" if name in environment.OPTION_VARIABLES.values() else name
        assert family in doc, f"{name} is not explained in the docstring of environment.py"


def test_the_variables_of_the_brief_are_in_the_catalogue() -> None:
    """The key, the endpoint, the Prefect server, both polling paces, the new rate options
    and the ledger's location are all variables the catalogue names."""
    for name in (
        "APIMART_API_KEY",
        "APIMART_BASE_URL",
        "PREFECT_API_URL",
        "VIDEOBATCH_POLL_INTERVAL",
        "VIDEOBATCH_POLL_INITIAL_DELAY",
        "VIDEOBATCH_MAX_QUERIES_PER_S",
        "VIDEOBATCH_POLL_LAG_TARGET",
        "VIDEOBATCH_LEDGER_URL",
    ):
        assert name in environment.VARIABLES, name


def test_ledger_url_is_read_from_its_variable() -> None:
    """ledger_url() is VIDEOBATCH_LEDGER_URL (password and all: that is where one belongs);
    empty or absent is None."""
    url = "postgresql://videobatch:pw@ledger-host/videobatch"
    assert environment.ledger_url({"VIDEOBATCH_LEDGER_URL": url}) == url
    assert environment.ledger_url({"VIDEOBATCH_LEDGER_URL": ""}) is None
    assert environment.ledger_url({}) is None


def test_a_ledger_url_with_a_password_is_not_for_the_command_line() -> None:
    """A --ledger URL is refused when it holds a password, and the refusal never quotes it;
    one without a password (or a plain path) is taken as it is."""
    with pytest.raises(ValueError) as refused:
        environment.ledger_url_from_flag("postgresql://user:hunter2@db/videobatch")
    assert "hunter2" not in str(refused.value)
    assert "VIDEOBATCH_LEDGER_URL" in str(refused.value)
    assert environment.ledger_url_from_flag("postgresql://db/vb") == "postgresql://db/vb"
    assert environment.ledger_url_from_flag("/srv/ledgers") == "/srv/ledgers"


def test_the_key_in_the_environment_comes_first_and_empty_is_none() -> None:
    """resolve_api_key() takes APIMART_API_KEY without looking further; an empty one is no
    key (api_key() is None)."""
    assert environment.resolve_api_key({"APIMART_API_KEY": "sk-env"}) == "sk-env"
    assert environment.api_key({"APIMART_API_KEY": ""}) is None


def test_exported_puts_variables_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """exported() sets variables for a block and restores each one as it was (absent, or its
    earlier value), also when the block raises."""
    monkeypatch.setenv("VIDEOBATCH_LEDGER_URL", "before")
    monkeypatch.delenv("APIMART_API_KEY", raising=False)
    exported = environment.exported({"VIDEOBATCH_LEDGER_URL": "during", "APIMART_API_KEY": "k"})
    with pytest.raises(RuntimeError), exported:
        assert os.environ["VIDEOBATCH_LEDGER_URL"] == "during"
        assert os.environ["APIMART_API_KEY"] == "k"
        raise RuntimeError("the block failed")
    assert os.environ["VIDEOBATCH_LEDGER_URL"] == "before"
    assert "APIMART_API_KEY" not in os.environ


# Modules that may still read the environment themselves: the client's own defaults (a
# library default, as openai's), the sandbox (a separate program), the object stores' cloud
# credentials (the SDKs' own chain: AWS_*, AZURE_*), and runtime.resolve_api_key until it
# delegates to environment.resolve_api_key.
ALLOWED = {
    "tasks/run/environment.py",
    "apimart/client.py",
    "tasks/store/storage.py",
}


def test_no_other_module_reads_the_environment() -> None:
    """No module of videobatch/, flows/ or tasks/ but environment.py mentions os.environ or
    getenv, so a new variable cannot be read behind the catalogue's back."""
    readers = []
    for folder in ("videobatch", "flows", "tasks", "apimart"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED or rel.startswith("apimart/sandbox/"):
                continue
            text = path.read_text(encoding="utf-8")
            if re.search(r"\bos\.environ\b|\bgetenv\b|\benviron\[", text):
                readers.append(rel)
    assert readers == []
