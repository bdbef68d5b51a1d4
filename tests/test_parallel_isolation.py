"""Two xdist workers of one run: what they must not share (a Prefect home, a server's port),
how tests are dealt to them, and `-p no:xdist` still running everything in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from support.net import CLAIMS, EPHEMERAL_RANGE, claim, free_port

TESTS = Path(__file__).resolve().parent
PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider")
OWN_PREFIXES = ("PREFECT_", "PYTEST_", "VB_TESTS_")

# Four tests, so both workers run some; each says which worker it ran on and in what home.
PROBE = """
import json, os
import pytest

@pytest.mark.parametrize("n", range(4))
def test_home(n, tmp_path_factory):
    seen = {"worker": os.environ["PYTEST_XDIST_WORKER"], "home": os.environ["PREFECT_HOME"]}
    out = tmp_path_factory.getbasetemp().parent.parent / "seen"
    out.mkdir(exist_ok=True)
    (out / f"{n}.json").write_text(json.dumps(seen))
"""

# Each process asks for many ports at once; a port handed out is kept by its process.
TAKER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from support.net import free_port
print(json.dumps([free_port(Path(sys.argv[2])) for _ in range(300)]))
"""


def test_each_xdist_worker_has_a_prefect_home_of_its_own(tmp_path: Path) -> None:
    """Under `-n 2` the two workers get two different Prefect homes, neither the controller's."""
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "suite" / "test_probe.py").write_text(PROBE)
    # A run started from scratch: none of this session's Prefect, pytest or xdist settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    base = tmp_path / "base" / "t"
    base.parent.mkdir()
    done = subprocess.run(
        [*PYTEST, "-n", "2", "--basetemp", str(base), str(tmp_path / "suite")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    seen = [json.loads(p.read_text()) for p in sorted((tmp_path / "base" / "seen").iterdir())]
    homes = {s["worker"]: s["home"] for s in seen}
    assert sorted(homes) == ["gw0", "gw1"], seen
    assert homes["gw0"] != homes["gw1"], f"both workers ran in {homes['gw0']}"
    assert all(s["home"] == homes[s["worker"]] for s in seen), seen
    assert all(Path(home).is_dir() for home in homes.values())


def test_two_processes_asking_for_ports_at_once_never_get_the_same_one(tmp_path: Path) -> None:
    """Ports handed to concurrent test processes (and to one process) are all different."""
    claims = tmp_path / "claims"
    takers = [
        subprocess.Popen(
            [sys.executable, "-c", TAKER, str(TESTS), str(claims)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    ports = [port for taker in takers for port in json.loads(taker.communicate(timeout=60)[0])]
    assert len(ports) == 600
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    assert {p.name for p in claims.iterdir()} == {str(p) for p in ports}


def test_ports_handed_out_lie_outside_the_kernels_ephemeral_range(tmp_path: Path) -> None:
    """No port handed out is one the kernel may give meanwhile to a `bind` to port 0 (a sandbox
    in the other worker) or to an outgoing connection."""
    low, high = (int(n) for n in EPHEMERAL_RANGE.read_text().split())
    ports = [free_port(tmp_path) for _ in range(50)]
    assert all(port < low or port > high for port in ports), ports


def test_a_fresh_claim_keeps_its_port_and_a_stale_one_is_taken_over(tmp_path: Path) -> None:
    """A port claimed by another process is refused; once its claim is stale it is taken."""
    port = free_port(tmp_path)
    assert (tmp_path / str(port)).read_text() == str(os.getpid())
    assert not claim(port, tmp_path)
    os.utime(tmp_path / str(port), (0, 0))  # claimed long ago
    assert claim(port, tmp_path)
    assert not claim(port, tmp_path)


def test_the_session_prefect_api_port_is_claimed(prefect_api: str) -> None:
    """The session's Prefect API listens on a port claimed for it, out of the other worker's
    reach."""
    port = urlsplit(prefect_api).port
    assert port is not None and (CLAIMS / str(port)).is_file()


# Each test of the scheduling probe notes where and when it ran.
RECORD = """
import json, os, time
from pathlib import Path

def record(request):
    out = Path(os.environ["PROBE_OUT"])
    seen = {"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "at": time.time()}
    seen["test"] = request.node.nodeid
    (out / f"{time.monotonic_ns()}.json").write_text(json.dumps(seen))
"""
PROBE_TEST = """
import pytest
from probe_record import record

@pytest.mark.parametrize("n", range({count}))
def test_it(n, request):
    record(request)
"""
HEAVY = ("tests/ops/", "tests/browser/", "tests/cli/test_random_kill.py")
# Files as the real suite names them: heavy ones among light ones, in collection order.
PROBE_FILES = {
    "apimart/test_light_a.py": 3,
    "browser/test_ui.py": 1,
    "cli/test_light_b.py": 2,
    "cli/test_random_kill.py": 2,
    "flows/test_light_c.py": 3,
    "ops/test_workers.py": 1,
    "tasks/test_light_d.py": 4,
}


def _probe_suite(root: Path) -> Path:
    """A small suite under `root/tests` with this conftest, files named as PROBE_FILES says."""
    tests = root / "tests"
    for name, count in PROBE_FILES.items():
        (tests / name).parent.mkdir(parents=True, exist_ok=True)
        (tests / name).write_text(PROBE_TEST.replace("{count}", str(count)))
    (tests / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tests / "probe_record.py").write_text(RECORD)
    return tests


def _run_probe(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    out = root / "seen"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    done = subprocess.run(
        [*PYTEST, "--rootdir", str(root), *args, "tests"],
        cwd=root,
        env={**env, "PROBE_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    seen = sorted((json.loads(p.read_text()) for p in out.iterdir()), key=lambda s: s["at"])
    return done, seen


def test_the_heavy_files_run_on_one_worker_first_and_the_rest_on_both(tmp_path: Path) -> None:
    """Under `-n 2 --dist loadfile` the heavy files (ops, browser, random kill) are one unit,
    the first one handed out; every other file is a unit and both workers take some."""
    _probe_suite(tmp_path)
    done, seen = _run_probe(tmp_path, "-n", "2", "--dist", "loadfile")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(seen) == sum(PROBE_FILES.values())
    heavy = [s for s in seen if s["test"].startswith(HEAVY)]
    assert len(heavy) == 4
    workers = {s["worker"] for s in heavy}
    assert len(workers) == 1, f"heavy tests ran on {workers}"
    (worker,) = workers
    on_heavy_worker = [s["test"] for s in seen if s["worker"] == worker]
    assert on_heavy_worker[:4] == [s["test"] for s in heavy], on_heavy_worker
    assert {s["worker"] for s in seen} == {"gw0", "gw1"}
    for name in PROBE_FILES:
        if not f"tests/{name}".startswith(HEAVY):
            assert len({s["worker"] for s in seen if name in s["test"]}) == 1, name


def test_p_no_xdist_runs_every_test_in_one_process_despite_the_addopts(tmp_path: Path) -> None:
    """`-p no:xdist` with the suite's addopts (`-n 2 --dist loadfile`) runs every test here."""
    _probe_suite(tmp_path)
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -n 2 --dist loadfile\n")
    done, seen = _run_probe(tmp_path, "-p", "no:xdist")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(seen) == sum(PROBE_FILES.values())
    assert {s["worker"] for s in seen} == {"main"}
