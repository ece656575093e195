"""Talking to an S3-compatible store through ``pyarrow.fs.S3FileSystem``.

pyarrow is already a dependency; its S3 filesystem lists prefixes, opens objects as seekable
streams whose reads are ranged GETs (a large object is never held whole in memory, and a part of it
is read without the bytes before it), and speaks to any S3-compatible endpoint. Credentials come
only from the environment variables the config names, read in the process that connects (the
reader process lists, executors read); with no ``auth`` the SDK's default chain applies.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from urllib.parse import urlsplit

from streaming.errors import SourceError

DEFAULT_SUFFIXES = (".csv", ".tsv", ".txt", ".psv")  # as in a landing folder
_AWS_CODE = re.compile(r"AWS Error ([A-Z_]+)")


@dataclasses.dataclass(frozen=True)
class StoreLocation:
    """Where a dataset's objects are, and how to reach them; small and picklable (no secrets)."""

    dataset: str
    bucket: str
    prefix: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_env: str | None = None
    secret_key_env: str | None = None
    connect_timeout: float = 3.0
    request_timeout: float = 30.0

    @classmethod
    def of(cls, config) -> "StoreLocation":
        auth = config.auth
        return cls(config.name, config.bucket, config.prefix, config.endpoint_url, config.region,
                   auth.access_key_env if auth else None, auth.secret_key_env if auth else None)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def object_url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def filesystem(self):
        """A new ``S3FileSystem`` (wherever this runs); retries are the daemon's, not the SDK's."""
        from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem

        kwargs: dict = {"connect_timeout": self.connect_timeout, "request_timeout": self.request_timeout,
                        "retry_strategy": AwsStandardS3RetryStrategy(max_attempts=2)}
        if self.region:
            kwargs["region"] = self.region
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            kwargs["scheme"], kwargs["endpoint_override"] = parts.scheme, parts.netloc + parts.path.rstrip("/")
        if self.access_key_env:
            access, secret = os.environ.get(self.access_key_env), os.environ.get(self.secret_key_env or "")
            if not access or not secret:
                raise SourceError(f"object store {self.dataset}: environment variable "
                                  f"{self.access_key_env if not access else self.secret_key_env} is not set")
            kwargs["access_key"], kwargs["secret_key"] = access, secret
        return S3FileSystem(**kwargs)

    def describe(self, exc: BaseException) -> tuple[str, str]:
        """``(kind, one-line message naming the dataset and URL)`` for a failure reaching the store."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        code = _AWS_CODE.search(text)
        kind = {"SIGNATURE_DOES_NOT_MATCH": "auth", "INVALID_ACCESS_KEY_ID": "auth", "ACCESS_DENIED": "auth",
                "NO_SUCH_BUCKET": "no_bucket", "NETWORK_CONNECTION": "unreachable"}.get(
            code.group(1) if code else "", "error")
        if isinstance(exc, SourceError):
            kind = "config"
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return kind, f"object store {self.dataset} ({self.url}{where}): {text}"


def matches(relative_key: str, pattern: str | None) -> bool:
    """Whether a key (below the prefix) is one of the dataset's objects."""
    if pattern:
        return fnmatch.fnmatchcase(relative_key, pattern) or fnmatch.fnmatchcase(relative_key.rsplit("/", 1)[-1],
                                                                                 pattern)
    return relative_key.lower().endswith(DEFAULT_SUFFIXES)


def list_objects(location: StoreLocation, pattern: str | None) -> list[tuple[str, int, int]]:
    """Every object under the prefix that matches: ``(key, size, mtime in ns)``.

    Raises:
        OSError: the store cannot be reached, refuses the credentials, or the bucket is missing.
    """
    from pyarrow.fs import FileSelector, FileType

    fs = location.filesystem()
    base = f"{location.bucket}/{location.prefix}"
    infos = fs.get_file_info(FileSelector(base, recursive=True, allow_not_found=True))
    if not infos and fs.get_file_info(location.bucket).type == FileType.NotFound:
        raise OSError(f"AWS Error NO_SUCH_BUCKET: bucket {location.bucket} does not exist")
    found = []
    for info in infos:
        if info.type != FileType.File:
            continue
        key = info.path[len(location.bucket) + 1:]
        name = key[len(location.prefix):]
        if name.rsplit("/", 1)[-1].startswith(("_", ".")) or not matches(name, pattern):
            continue
        found.append((key, int(info.size or 0), int(info.mtime_ns or 0)))
    return found


def etag(location: StoreLocation, key: str) -> str:
    """The object's ETag (the listing does not carry it; opening the object does)."""
    with location.filesystem().open_input_file(f"{location.bucket}/{key}") as f:
        value = f.metadata().get("ETag", b"")
    return value.decode().strip('"') if isinstance(value, bytes) else str(value).strip('"')


@dataclasses.dataclass(frozen=True)
class S3Object:
    """One object as a :class:`streaming.rowstage.ByteSource`: pickled into stage tasks; each
    :meth:`open` on an executor connects anew and reads with ranged requests."""

    location: StoreLocation
    key: str
    length: int

    @property
    def size(self) -> int:
        return self.length

    def open(self):
        return self.location.filesystem().open_input_file(f"{self.location.bucket}/{self.key}")
