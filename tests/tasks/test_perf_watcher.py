"""The command line's progress bar beside a run reads a real SQLite ledger seldom: its
`counts()` groups every row of the ledger."""

from __future__ import annotations

import io
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.store.ledger import Ledger
from tasks.store.states import State
from videobatch.console import _Watcher


class _Terminal(io.StringIO):
    """stderr as a terminal, so the watcher draws the rich bar (the branch under test)."""

    def isatty(self) -> bool:
        return True


class _CountingWatcher(_Watcher):
    """The watcher, counting its ledger reads (each still reads the real ledger)."""

    def __init__(self, out: Path, total: int) -> None:
        super().__init__(out, total)
        self.reads = 0
        self.read_once = threading.Event()
        self.seen: list[dict[str, int]] = []

    def _counts(self) -> dict[str, int]:
        counts = super()._counts()
        self.reads += 1
        self.seen.append(counts)
        self.read_once.set()
        return counts


def test_the_bar_reads_the_ledger_every_two_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 3 s after its first read the bar reads the ledger at most twice more (it read it
    every 0.5 s, 6 more times), and what it reads is the ledger's counts."""
    with Ledger(tmp_path) as ledger:
        for i in range(5):
            ledger.ensure(f"r{i}", i)
        ledger.update("r0", "downloaded", state=State.DOWNLOADED)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    watcher = _CountingWatcher(tmp_path, 5)
    with watcher:
        assert watcher.read_once.wait(60), "the bar never read the ledger"
        first = watcher.reads
        # The window is the measurement: a slow machine can only make fewer reads.
        time.sleep(3.0)
        later = watcher.reads - first
    assert later <= 2, later
    assert watcher.seen[0].get(str(State.DOWNLOADED)) == 1, watcher.seen[0]
