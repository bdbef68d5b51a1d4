"""The four floors import only from the floors below them (see README, "The house")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What each package may not import, by top-level module name.
FORBIDDEN: dict[str, set[str]] = {
    "apimart": {"prefect", "pandas", "pyarrow", "tasks", "flows", "videobatch"},
    "tasks": {"flows", "videobatch"},
    "flows": {"videobatch", "httpx", "pandas", "pyarrow", "av", "apimart.client"},
    "videobatch": set(),
}
# The sandbox emulates the server; if it imported the client the two could not disagree.
SANDBOX_FORBIDDEN = {
    "apimart.client",
    "apimart.models",
    "apimart.errors",
    "apimart.retry",
    "apimart.download",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(package: str, forbidden: set[str]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(path):
            for banned in forbidden:
                if name == banned or name.startswith(banned + "."):
                    found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_from_floors_below(package: str) -> None:
    """No floor imports a floor above it (nor Prefect, pandas or pyarrow in apimart)."""
    assert (ROOT / package / "__init__.py").exists()
    assert violations(package, FORBIDDEN[package]) == []


def test_sandbox_never_imports_the_client() -> None:
    """The sandbox never imports our API client, so the two can disagree."""
    assert violations("apimart/sandbox", SANDBOX_FORBIDDEN) == []


def test_the_client_never_imports_the_sandbox() -> None:
    """No client module imports the sandbox, so the client runs without the emulator loaded."""
    found = []
    for path in sorted((ROOT / "apimart").glob("*.py")):
        found += [
            f"{path.name} imports {name}"
            for name in imported_modules(path)
            if name == "apimart.sandbox" or name.startswith("apimart.sandbox.")
        ]
    assert found == []


def test_steps_hold_all_the_task_code() -> None:
    """Only the step modules define Prefect tasks, so the rest of tasks/ is plain Python."""
    outside = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "tasks").rglob("*.py"))
        if "steps" not in path.parts and "@task" in path.read_text(encoding="utf-8")
    ]
    assert outside == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The import checker finds plain and from-imports, so a violation cannot pass unseen."""
    bad = tmp_path / "bad.py"
    bad.write_text("import pandas\nfrom prefect import flow\n", encoding="utf-8")
    assert {"pandas", "prefect", "prefect.flow"} <= imported_modules(bad)
