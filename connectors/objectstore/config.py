"""An object store's settings: one entry of the ``object_stores:`` section."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from streaming.config import DatasetConfig, Section, parse_duration
from streaming.naming import normalize_dataset_name


class ObjectStoreAuth(Section):
    """Names of the environment variables holding the credentials (never the secrets themselves)."""

    access_key_env: str
    secret_key_env: str


class ObjectStoreConfig(DatasetConfig):
    """A bucket prefix loaded as a dataset; every dataset option (mode, primary_key, columns, CSV
    options, ...) applies. Objects are never modified or deleted: read-only credentials suffice."""

    name: str = Field(description="dataset and table name")
    url: str = Field(description="s3://bucket/prefix/")
    endpoint_url: str | None = Field(None, description="an S3-compatible store (MinIO, SeaweedFS, Ceph, R2); "
                                                       "None = AWS")
    region: str | None = None
    auth: ObjectStoreAuth | None = Field(None, description="None = the SDK's default credential chain")
    pattern: str | None = Field(None, description="glob on the key below the prefix; None = the landing suffixes")
    poll_interval: float = Field(10.0, gt=0)
    reload_changed: bool = Field(False, description="load an object again when its ETag changes")
    max_objects_per_batch: int = Field(100, ge=1)

    @field_validator("name")
    @classmethod
    def _table_name(cls, v: str) -> str:
        return normalize_dataset_name(v)

    @field_validator("url")
    @classmethod
    def _s3_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"url {v!r} must be s3://bucket/prefix/")
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"endpoint_url {v!r} must be an http:// or https:// URL")
        return v

    @field_validator("poll_interval", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        """The key prefix, ending in ``/`` unless empty."""
        path = urlsplit(self.url).path.lstrip("/")
        return path if not path or path.endswith("/") else path + "/"
