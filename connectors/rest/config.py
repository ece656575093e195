"""A REST endpoint's settings: one entry of the ``endpoints:`` section."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from streaming.config import (DEFAULT_FALSE_TOKENS, DEFAULT_TRUE_TOKENS, CsvOptions, LoadOptions, Section,
                              parse_duration)
from streaming.naming import normalize_dataset_name


class BearerAuth(Section):
    type: Literal["bearer"]
    token_env: str = Field(description="environment variable holding the token")


class BasicAuth(Section):
    type: Literal["basic"]
    username_env: str
    password_env: str


class ApiKeyAuth(Section):
    type: Literal["api_key"]
    name: str = Field(description="header or query parameter name")
    in_: Literal["header", "query"] = Field("header", alias="in")
    value_env: str
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NoPagination(Section):
    type: Literal["none"] = "none"


class LinkHeaderPagination(Section):
    type: Literal["link_header"]


class PageNumberPagination(Section):
    type: Literal["page_number"]
    param: str = "page"
    start: int = 1
    size_param: str | None = None
    size: int | None = Field(None, ge=1)


class OffsetPagination(Section):
    type: Literal["offset"]
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = Field(100, ge=1)


class CursorPagination(Section):
    type: Literal["cursor"]
    cursor_path: str = Field(description="dotted path to the next cursor in the response body")
    param: str = "cursor"


class NextUrlPagination(Section):
    type: Literal["next_url"]
    next_url_path: str = Field(description="dotted path to the next page's URL in the response body")


Pagination = Annotated[
    NoPagination | LinkHeaderPagination | PageNumberPagination | OffsetPagination | CursorPagination
    | NextUrlPagination,
    Field(discriminator="type"),
]
Auth = Annotated[BearerAuth | BasicAuth | ApiKeyAuth, Field(discriminator="type")]


class IncrementalConfig(Section):
    cursor_field: str = Field(description="dotted path in each record to the field that grows with every change")
    param: str = Field(description="query parameter that asks the API for records since a cursor value")
    initial_value: str | None = Field(None, description="cursor sent by a new query; None = everything")


class EndpointConfig(LoadOptions):
    """A REST endpoint polled as a streaming source; its records land in the table ``name``."""

    name: str
    url: str
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    auth: Auth | None = None
    records_path: str | None = Field(None, description="dotted path to the list of records; None = the body")
    pagination: Pagination = Field(default_factory=NoPagination)
    incremental: IncrementalConfig | None = None
    poll_interval: float = Field(30.0, gt=0)
    timeout: float = Field(10.0, gt=0)
    max_pages_per_batch: int = Field(100, ge=1)
    max_retries: int = Field(5, ge=0, description="retries of one request after timeouts, 5xx and 429")
    backoff: float = Field(0.5, ge=0, description="first retry delay; doubles each retry, with jitter")
    max_backoff: float = Field(30.0, ge=0)
    null_tokens: list[str] = Field(default_factory=list, description="strings that mean null besides JSON null and \"\"")
    flatten_depth: int = Field(1, ge=0, description="levels of nested objects opened into owner__login columns")
    date_formats: list[str] = Field(default_factory=list, description="strptime formats besides ISO 8601")

    _check_formats = field_validator("date_formats")(CsvOptions._formats.__func__)

    @field_validator("name")
    @classmethod
    def _table_name(cls, v: str) -> str:
        return normalize_dataset_name(v)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url {v!r} must be an http:// or https:// URL")
        return v

    @field_validator("pagination", mode="before")
    @classmethod
    def _pagination_shorthand(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("poll_interval", "timeout", "backoff", "max_backoff", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @property
    def true_tokens(self) -> list[str]:
        return list(DEFAULT_TRUE_TOKENS)

    @property
    def false_tokens(self) -> list[str]:
        return list(DEFAULT_FALSE_TOKENS)

    def fingerprint(self) -> str:
        """A stable digest of the whole entry: a changed digest restarts the endpoint's query."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True).encode()).hexdigest()
