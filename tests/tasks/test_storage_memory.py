"""A 50 MB video uploads to S3 (moto on loopback) in flat memory: measured as the peak RSS of a
fresh process doing nothing but the upload, so no earlier test's memory hides the growth."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import s3 as s3kit
from support.s3 import S3Server

pytestmark = pytest.mark.slow  # starts moto_server and a child process
s3_server, s3_out = s3kit.s3_server, s3kit.s3_out

ROOT = Path(__file__).resolve().parents[2]
SIZE = 50 * 2**20
# A whole-file read would grow the peak by the file's 50 MiB at least; streaming stays far
# below it (measured here: 2 MiB; 46 MiB while pyarrow's background writes were on).
MAX_GROWTH_MIB = 25

UPLOAD = """
import json, resource, sys
from pathlib import Path
from tasks.store.storage import open_output

out, big, small, digest = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
output = open_output(out)
output.put_file(small, "videos/warm-up.mp4")  # the S3 client, its threads and first buffers
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
url = output.put_file(big, "videos/big.mp4", sha256=digest)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"url": url, "growth_kib": after - before}))
"""


def _random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for _ in range(size // 2**20):
            chunk = os.urandom(2**20)
            digest.update(chunk)
            handle.write(chunk)
    return digest.hexdigest()


def test_a_50_mb_upload_keeps_memory_flat(s3_out: str, s3_server: S3Server, tmp_path: Path) -> None:
    """Uploading a 50 MiB file grows the uploader's peak RSS by far less than the file."""
    big, small = tmp_path / "big.mp4", tmp_path / "small.mp4"
    digest = _random_file(big, SIZE)
    _random_file(small, 2**20)
    done = subprocess.run(
        [sys.executable, "-c", UPLOAD, s3_out, str(big), str(small), digest],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    growth_mib = report["growth_kib"] / 1024
    print(f"peak RSS growth for a {SIZE >> 20} MiB upload: {growth_mib:.1f} MiB")
    assert growth_mib < MAX_GROWTH_MIB
    assert report["url"] == f"{s3_out}/videos/big.mp4"
    head = s3_server.client().head_object(
        Bucket=s3_server.bucket, Key=f"{s3_out.split('/', 3)[3]}/videos/big.mp4"
    )
    assert head["ContentLength"] == SIZE
