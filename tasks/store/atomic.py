"""Durable, atomic file replacement: the one way files under OUT are written.

Readers (a person, `videobatch status`, the next run after a crash) see the old file or the
new one, never half of one: the bytes go to a hidden temporary file beside the target, are
flushed and fsynced, renamed over the target, and the folder is fsynced so the rename itself
survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

# Files under OUT are shared like the videos they describe (mkstemp would make them private).
FILE_MODE = 0o644


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort where the platform cannot)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def replace_durably(source: Path, target: Path) -> Path:
    """Rename a finished (already fsynced) file over `target`, durably."""
    os.replace(source, target)
    fsync_dir(target.parent)
    return target


def write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write `path` through `write(handle)`; readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        return replace_durably(Path(temp), path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> Path:
    return write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))
