"""A real S3 server on loopback for the object-storage tests: moto in server mode.

`moto_server` runs as its own process (its memory is not ours, which the memory test needs),
with signature checking ON: an IAM user and its access key are made while moto still lets
anonymous calls through, then `/moto-api/reset-auth` switches authentication on, so a wrong
secret is refused as real S3 refuses it. Tests reach it as a user would: the standard AWS_*
variables, with `AWS_ENDPOINT_URL` pointing at it.

A test module takes the fixtures with `s3_server, s3_out = s3kit.s3_server, s3kit.s3_out`
(after `from support import s3 as s3kit`).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.net import free_port
from support.processes import clean_env, console_script, stop_group
from support.waiting import wait_for

REGION = "us-east-1"
BUCKET = "videobatch-test"
# AWS settings of the machine running the tests must not leak in (a real profile, a real key).
AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    pid: int
    log: Path

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client of this server: an independent reader of what our code wrote."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
        )

    def objects(self, prefix: str) -> dict[str, int]:
        """Every object under `prefix` (keys relative to it) and its size, as boto3 lists it."""
        listing = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix.rstrip("/") + "/")
        start = len(prefix.rstrip("/")) + 1
        return {o["Key"][start:]: o["Size"] for o in listing.get("Contents", [])}

    def get(self, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def unfinished_uploads(self, prefix: str) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        found = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [u["Key"] for u in found.get("Uploads", [])]


def _post(url: str, body: bytes) -> bytes:
    # Not form-encoded: moto reads the raw body, which a form content type would swallow.
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data: bytes = response.read()
        return data


def _up(endpoint: str) -> bool:
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2) as response:
        return bool(response.status == 200)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, one bucket, signatures checked; stopped by
    its own process id at the end of the session."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="videobatch-moto-")) / "moto.log"
    env = clean_env()
    for name in AWS_ENV:
        env.pop(name, None)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [console_script("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for(lambda: _up(endpoint), timeout=60, what="moto_server", logs=[log])
        # Anonymous calls are still allowed: make a user, its key and the bucket.
        setup = {
            "endpoint_url": endpoint,
            "region_name": REGION,
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        iam = boto3.client("iam", **setup)
        iam.create_user(UserName="videobatch")
        iam.put_user_policy(
            UserName="videobatch",
            PolicyName="s3",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="videobatch")["AccessKey"]
        boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
        _post(f"{endpoint}/moto-api/reset-auth", b"0")
        server = S3Server(
            endpoint=endpoint,
            bucket=BUCKET,
            access_key=key["AccessKeyId"],
            secret_key=key["SecretAccessKey"],
            pid=process.pid,
            log=log,
        )
        yield server
    finally:
        stop_group(process)


@pytest.fixture
def s3_out(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<bucket>/<fresh prefix>`, with the standard AWS variables pointing at the server
    (and nothing of the machine's own AWS set-up in reach)."""
    for name in AWS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    return f"s3://{s3_server.bucket}/run-{uuid.uuid4().hex[:12]}"
