"""Real servers for the tests of a library shared by several machines: PostgreSQL and an S3-compatible store.

PostgreSQL is Debian's ``postgresql`` package (its ``initdb`` and ``pg_ctl``), started on a temporary
data directory and a free loopback port; it refuses to run as root, so as root it runs as the
``postgres`` user. The S3 store is moto's standalone server. Both are started once per test session
and stopped at its end. Where they cannot be started the tests that need them are skipped, unless
``VOICEDB_REQUIRE_SERVICES=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_ENV = "VOICEDB_REQUIRE_SERVICES"
START_TIMEOUT_S = 30


def unavailable(reason: str) -> None:
    """Skip, or fail where CI promised the services are there."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    """The directory of PostgreSQL's server programs (Debian keeps them out of ``PATH``)."""
    if found := shutil.which("pg_ctl"):
        return Path(found).resolve().parent  # Debian links them from /usr/local/bin; initdb needs its own dir
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    """Wait for a ``voicedb serve`` process to answer ``/ready`` with 200 (its models loaded)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, "voicedb serve exited before it was ready"
        assert time.monotonic() < deadline, "voicedb serve did not come up"
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)


@dataclass
class Postgres:
    """A running PostgreSQL server; ``database()`` makes a fresh, empty database and returns its URL."""

    host: str
    port: int

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{name}"

    def database(self) -> str:
        import psycopg

        name = f"voicedb_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host={self.host} port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A server on a data directory of its own under the system's temp dir (pytest's are private to
    root, where the ``postgres`` user could not reach them), removed afterwards."""
    bindir = postgres_bin()
    if bindir is None:
        unavailable("PostgreSQL's server programs are not installed (apt-get install postgresql)")
    directory = Path(tempfile.mkdtemp(prefix="voicedb-postgres-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(directory, "postgres")
    data, port = directory / "data", free_port()
    subprocess.run(
        [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    start = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(directory / "log")]
    subprocess.run([*start, "-w", "-t", str(START_TIMEOUT_S), "start"], check=True, capture_output=True)
    try:
        yield Postgres("127.0.0.1", port)
    finally:
        stop = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class S3:
    """A running S3-compatible server; ``bucket()`` makes a fresh bucket and returns a storage URL in it."""

    endpoint: str

    def environment(self) -> dict[str, str]:
        """What any S3 client (s3fs, boto3, the aws CLI) needs to reach it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def bucket(self) -> str:
        import boto3

        name = f"voicedb-{uuid.uuid4().hex[:12]}"
        env = self.environment()
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        client.create_bucket(Bucket=name)
        return f"s3://{name}/library"


@contextmanager
def s3_server() -> Iterator[S3]:
    moto = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(moto).exists():
        unavailable("moto's standalone server is not installed (pip install 'moto[server]')")
    port = free_port()
    process = subprocess.Popen(
        [moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    unavailable("moto's S3 server did not start")
                time.sleep(0.1)
        yield S3(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(timeout=10)
