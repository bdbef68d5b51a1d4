"""What the operations commands print: setting up a Prefect server, starting one."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.run import environment
from videobatch.console import EXIT_OK, EXIT_STOPPED, err, out_console


def deploy(project: Path) -> int:
    import asyncio

    from videobatch.setup import DEPLOYMENTS, deploy_all, ensure_prefect_objects

    server = environment.prefect_api_url()
    if not server:
        err.print("set PREFECT_API_URL to the server to set up (see `videobatch server`)")
        return EXIT_STOPPED
    project = project.expanduser().resolve()
    if not (project / "prefect.yaml").is_file():
        err.print(f"no prefect.yaml in {project}: pass --project with the videobatch folder")
        return EXIT_STOPPED
    try:
        report = asyncio.run(ensure_prefect_objects(environment.api_key()))
    except Exception as exc:
        err.print(f"[bold red]cannot set up {server}:[/] {exc}")
        return EXIT_STOPPED
    for line in report.done:
        out_console.print(f"✓ {line}")
    result = deploy_all(project)
    if result.returncode != 0:
        err.print(f"[bold red]prefect deploy failed:[/]\n{result.stdout}\n{result.stderr}")
        return EXIT_STOPPED
    out_console.print(f"✓ deployments created from {project / 'prefect.yaml'}:")
    for name in DEPLOYMENTS:
        out_console.print(f"    {name}")
    out_console.print(
        "next: start a worker in this folder with "
        "`uv run prefect worker start --pool videobatch --limit 4`"
    )
    return EXIT_OK


def server(host: str, port: int) -> int:
    from videobatch.setup import WILDCARD_HOSTS, public_api_url, server_command

    command, env = server_command(host, port)
    local = "127.0.0.1" if host in WILDCARD_HOSTS else host
    database = environment.database_url(env)
    where = "PostgreSQL" if database and database.startswith("postgresql") else "SQLite"
    err.print(f"Prefect server with UI at http://{local}:{port} ({where}; Ctrl-C stops it)")
    err.print(f"in another shell: export PREFECT_API_URL=http://{local}:{port}/api")
    if host in WILDCARD_HOSTS:
        err.print(f"workers on other machines: export PREFECT_API_URL={public_api_url(host, port)}")
    os.execvpe(command[0], command, env)
    return EXIT_OK  # pragma: no cover - exec does not return
