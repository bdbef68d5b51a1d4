"""What the operations commands print: setting up a Prefect server, starting one."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from videobatch.console import EXIT_OK, EXIT_STOPPED, err, out_console


def deploy(project: Path) -> int:
    from tasks.setup import deploy_all, ensure_prefect_objects

    if not os.environ.get("PREFECT_API_URL"):
        err.print("set PREFECT_API_URL to the server to set up (see `videobatch server`)")
        return EXIT_STOPPED
    report = asyncio.run(ensure_prefect_objects(os.environ.get("APIMART_API_KEY")))
    for line in report.done:
        out_console.print(f"✓ {line}")
    result = deploy_all(project)
    if result.returncode != 0:
        err.print(f"[bold red]prefect deploy failed:[/]\n{result.stdout}\n{result.stderr}")
        return EXIT_STOPPED
    out_console.print("✓ deployments created from prefect.yaml")
    return EXIT_OK


def server(host: str, port: int) -> int:
    from tasks.setup import server_command

    command, env = server_command(host, port)
    err.print(f"Prefect server with UI at http://{host}:{port} (Ctrl-C stops it)")
    err.print(f"in another shell: export PREFECT_API_URL=http://{host}:{port}/api")
    os.execvpe(command[0], command, env)
    return EXIT_OK  # pragma: no cover - exec does not return
