"""Typed configuration: a YAML file plus ``DATAOPS_<SECTION>__<KEY>`` environment overrides.

Everything is validated before Spark starts; an unknown key or a bad value stops the daemon with a
message naming the key.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError,
                               YamlConfigSettingsSource)

from streaming.errors import ConfigError
from streaming.naming import normalize_dataset_name, normalize_identifier

DEFAULT_NULL_TOKENS = ["", "NA", "N/A", "null", "NULL", "None"]
DEFAULT_TRUE_TOKENS = ["true", "t", "yes"]
DEFAULT_FALSE_TOKENS = ["false", "f", "no"]
PG_TYPES = {
    "smallint", "integer", "bigint", "numeric", "real", "double precision", "boolean",
    "date", "timestamp", "timestamptz", "text", "jsonb",
}
_TYPE_ALIASES = {
    "int": "integer", "int2": "smallint", "int4": "integer", "int8": "bigint", "float": "double precision",
    "float8": "double precision", "double": "double precision", "float4": "real", "decimal": "numeric",
    "bool": "boolean", "timestamp without time zone": "timestamp", "timestamp with time zone": "timestamptz",
    "varchar": "text", "string": "text",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``"500ms"``, ``"1s"``, ``"2m"``, ``"1h"`` or a bare number of seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 500ms, 1s, 2m or 1h")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def canonical_type(name: str) -> str:
    """The PostgreSQL type name used throughout (``int8`` -> ``bigint``); raises on unknown types."""
    key = " ".join(name.lower().split())
    key = _TYPE_ALIASES.get(key, key)
    if key not in PG_TYPES:
        raise ValueError(f"unsupported column type {name!r}; use one of {', '.join(sorted(PG_TYPES))}")
    return key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


Section = _Section  # public: the base of every source's config model


class PostgresConfig(_Section):
    dsn: SecretStr | None = Field(None, description="libpq DSN; unset = private embedded PostgreSQL")
    schema_name: str = Field("public", alias="schema", description="schema of the dataset tables")
    catalog_schema: str = Field("dataops", description="schema of the catalog, ledger and quarantine")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LandingConfig(_Section):
    path: Path = Path("./landing")
    settle_seconds: float = Field(0.25, ge=0, description="quiet time after the last write before a file counts as complete")
    scan_interval: float = Field(5.0, gt=0, description="seconds between full rescans (events can be missed on network mounts)")
    max_files_per_batch: int = Field(100, ge=1)
    local_parse_bytes: int = Field(4 << 20, ge=0, description="batches smaller than this are parsed on the driver, skipping a Spark job")
    split_bytes: int = Field(32 << 20, ge=1 << 20, description="files larger than this are parsed in parallel byte ranges")

    @field_validator("settle_seconds", "scan_interval", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)


class SparkConfig(_Section):
    master: str = "local[*]"
    app_name: str = "smart-dataops-copilot"
    checkpoint_dir: Path = Path("./checkpoints")
    trigger_interval: str = "0s"
    conf: dict[str, str] = Field(default_factory=dict, description="extra spark.* settings")

    @field_validator("trigger_interval")
    @classmethod
    def _trigger(cls, v: str) -> str:
        parse_duration(v)
        return v

    @property
    def trigger_seconds(self) -> float:
        return parse_duration(self.trigger_interval)


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class UploadConfig(_Section):
    """``PUT /datasets/<dataset>/files/<file>`` on the metrics port; off unless enabled."""

    enabled: bool = False
    token_env: str = Field("DATAOPS_UPLOAD_TOKEN", description="environment variable holding the bearer token")
    max_bytes: int = Field(10 << 30, ge=1, description="largest accepted file")

    def token(self) -> str:
        """The bearer token from ``token_env``.

        Raises:
            ConfigError: uploads are enabled and the variable is unset or empty.
        """
        value = os.environ.get(self.token_env, "")
        if not value:
            raise ConfigError(f"upload.enabled is true but the environment variable {self.token_env} "
                              f"(upload.token_env) holding the upload token is not set")
        return value


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"
    spark_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "ERROR"


class CsvOptions(_Section):
    """How a dataset's files are read; every field may be set per dataset."""

    null_tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_NULL_TOKENS))
    true_tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_TRUE_TOKENS))
    false_tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_FALSE_TOKENS))
    delimiter: str | None = Field(None, description="None = sniffed from , ; tab |")
    encoding: str | None = Field(None, description="None = UTF-8 (BOM or not), else cp1252/latin-1 detected")
    date_formats: list[str] = Field(default_factory=list, description="strptime formats besides ISO 8601")
    max_field_bytes: int = Field(64 << 20, ge=1024)

    @field_validator("date_formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        from streaming.schema import PG_FORMAT

        for fmt in v:
            directives = re.findall(r"%.", fmt)
            unknown = [d for d in directives if d not in PG_FORMAT]
            if not directives or unknown:
                raise ValueError(f"date format {fmt!r}: use the directives {' '.join(sorted(PG_FORMAT))}")
            if "'" in fmt or '"' in fmt:
                raise ValueError(f"date format {fmt!r} may not contain quotes")
        return v

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 1 or v in "\"\r\n"):
            raise ValueError("delimiter must be one character other than a quote or a line break")
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str | None) -> str | None:
        if v is not None:
            import codecs

            try:
                codecs.lookup(v)
            except LookupError:
                raise ValueError(f"unknown encoding {v!r}") from None
        return v


class LoadOptions(_Section):
    """How a dataset's rows land in its table; shared by landing-folder datasets and endpoints."""

    mode: Literal["append", "overwrite", "upsert"] = "append"
    primary_key: list[str] = Field(default_factory=list)
    indexes: list[list[str]] = Field(default_factory=list, description="each entry is a list of columns")
    partition_by: str | None = Field(None, description="date/timestamp column; monthly range partitions")
    columns: dict[str, str] = Field(default_factory=dict, description="column -> PostgreSQL type, overrides inference")
    on_schema_change: Literal["evolve", "rescue", "fail"] = "evolve"
    description: str | None = Field(None, description="what the dataset holds, for the catalog")
    column_descriptions: dict[str, str] = Field(default_factory=dict, description="column -> what it holds")

    @field_validator("column_descriptions")
    @classmethod
    def _described_columns(cls, v: dict[str, str]) -> dict[str, str]:
        # Keys may be written as in the source (``Amount (USD)``): the catalog knows the normalized name.
        return {normalize_identifier(k): text for k, text in v.items()}

    @field_validator("indexes", mode="before")
    @classmethod
    def _index_lists(cls, v: Any) -> Any:
        return [[i] if isinstance(i, str) else i for i in v] if isinstance(v, list) else v

    @field_validator("columns")
    @classmethod
    def _column_types(cls, v: dict[str, str]) -> dict[str, str]:
        return {_normalized_name(k, "columns"): canonical_type(t) for k, t in v.items()}

    @field_validator("primary_key", "partition_by")
    @classmethod
    def _normalized(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [_normalized_name(c, "primary_key") for c in v]
        return None if v is None else _normalized_name(v, "partition_by")

    @model_validator(mode="after")
    def _mode_needs_key(self) -> "LoadOptions":
        if self.mode == "upsert" and not self.primary_key:
            raise ValueError("mode upsert needs primary_key: [column, ...]")
        if self.partition_by and self.primary_key and self.partition_by not in self.primary_key:
            raise ValueError("partition_by must be part of primary_key (PostgreSQL requires it on partitioned tables)")
        return self


class DatasetConfig(CsvOptions, LoadOptions):
    """A landing-folder dataset: how its files are read and how they land."""


def _normalized_name(name: str, key: str) -> str:
    normalized = normalize_identifier(name)
    if normalized != name:
        raise ValueError(f"{key}: {name!r} is not a normalized column name; write {normalized!r}")
    return name


class CoreSettings(BaseSettings):
    """The core sections of the configuration; :data:`Settings` adds every source's own section.

    Load it with :func:`load_settings`.
    """

    model_config = SettingsConfigDict(
        env_prefix="DATAOPS_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    postgres: PostgresConfig = Field(default_factory=PostgresConfig)
    landing: LandingConfig = Field(default_factory=LandingConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    upload: UploadConfig = Field(default_factory=UploadConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    csv: CsvOptions = Field(default_factory=CsvOptions, description="defaults for every dataset")
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)

    yaml_file_path: ClassVar[str | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.yaml_file_path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls.yaml_file_path))
        return tuple(sources)

    @field_validator("datasets", mode="before")
    @classmethod
    def _dataset_names(cls, v: Any) -> Any:
        """Key datasets by table name; entries naming the same dataset merge (env after YAML wins)."""
        if not isinstance(v, dict):
            return v
        merged: dict[str, Any] = {}
        for name, entry in v.items():
            table = normalize_dataset_name(str(name))
            if isinstance(entry, dict) and isinstance(merged.get(table), dict):
                merged[table] = {**merged[table], **entry}
            else:
                merged[table] = entry
        return merged

    @model_validator(mode="after")
    def _one_dataset_per_table(self) -> "CoreSettings":
        """No two datasets, of whatever sources, load the same table."""
        from streaming.sources import registry

        owners: dict[str, str] = {}
        for source in registry().values():
            for table in source.declared_tables(self):
                where = source.describe_table(table)
                if table in owners:
                    raise ValueError(f"{where}: table {table!r} is also loaded by {owners[table]}; "
                                     f"give each dataset its own name")
                owners[table] = where
        return self

    def configured_source(self, table: str) -> str | None:
        """The source section that loads ``table`` (e.g. ``endpoint items``), None if none does."""
        from streaming.sources import registry

        for source in registry().values():
            if source.section and table in source.declared_tables(self):
                return f"{source.kind.replace('_', ' ')} {table}"
        return None

    def section(self, name: str) -> Any:
        """A source's config section (its default when this settings model has no such field)."""
        if name in type(self).model_fields:
            return getattr(self, name)
        from streaming.sources import registry

        for source in registry().values():
            if source.section == name:
                return source.section_default()
        raise KeyError(name)

    def dataset(self, name: str) -> DatasetConfig:
        """The configuration of a dataset: its own entry, else the CSV defaults with append mode."""
        table = normalize_dataset_name(name)
        if table in self.datasets:
            return self.datasets[table]
        return DatasetConfig(**self.csv.model_dump())

    @property
    def dsn(self) -> str | None:
        return self.postgres.dsn.get_secret_value() if self.postgres.dsn else None


def load_settings(path: str | os.PathLike | None = None, **overrides: Any) -> CoreSettings:
    """Read the YAML file (``path`` or ``$DATAOPS_CONFIG``), apply env overrides, validate.

    Raises:
        ConfigError: naming every offending key, e.g. ``datasets.orders.mode: Input should be ...``.
    """
    path = path or os.environ.get("DATAOPS_CONFIG")
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    _check_yaml(path)
    environment = _settings_environment(os.environ)

    class _Loaded(settings_model()):
        yaml_file_path = str(path) if path else None

    try:
        loaded = _Loaded(**overrides)
    except SettingsError:
        raise _environment_error(environment) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}{_from_env(err['loc'], environment)}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration{f' in {path}' if path else ''}: {problems}") from None
    # Dataset entries (and sources' entries that read CSV, like object stores) inherit the top-level
    # csv defaults for fields they do not set themselves.
    entries = list(loaded.datasets.values())
    for name in type(loaded).model_fields.keys() - CoreSettings.model_fields.keys():
        value = getattr(loaded, name)
        entries += [e for e in (value if isinstance(value, list) else [value]) if isinstance(e, CsvOptions)]
    for ds in entries:
        for field in CsvOptions.model_fields:
            if field not in ds.model_fields_set:
                setattr(ds, field, getattr(loaded.csv, field))
    return loaded


def _settings_environment(environ: Any) -> dict[tuple[str, ...], tuple[str, str]]:
    """The ``DATAOPS_`` variables that override settings, by key path: ``{("datasets", "orders", "mode"):
    (variable, value)}``.

    A variable is an override when it names a section (``DATAOPS_ENDPOINTS``) or holds the nested
    delimiter (``DATAOPS_POSTGRES__DSN``); others (``DATAOPS_CONFIG``, secrets named in ``auth``)
    are not settings.

    Raises:
        ConfigError: an override names no section, e.g. ``DATAOPS_FOO__BAR``.
    """
    prefix = settings_model().model_config["env_prefix"]
    sections = set(settings_model().model_fields)
    found = {}
    for variable, value in environ.items():
        if not variable.upper().startswith(prefix):
            continue
        path = tuple(variable[len(prefix):].lower().split("__"))
        if path[0] not in sections:
            if len(path) > 1:
                raise ConfigError(f"environment variable {variable}: unknown section {path[0]!r}; the sections are "
                                  f"{', '.join(sorted(sections))}")
            continue
        found[path] = (variable, value)
    return found


def _environment_error(environment: dict[tuple[str, ...], tuple[str, str]]) -> ConfigError:
    """The error for an override that is not the JSON its setting needs (a list, an object)."""
    import json

    bad = []
    for path, (variable, value) in sorted(environment.items()):
        structure = _is_structured(path)
        if not structure:
            continue
        try:
            json.loads(value)
        except ValueError as exc:
            shape = "a JSON list" if structure == "list" else "a JSON object"
            example = ' such as ["id"]' if shape == "a JSON list" and len(path) > 1 else ""
            bad.append(f"environment variable {variable}: not valid JSON ({exc.msg}); "
                       f"{'.'.join(path)} takes {shape}{example}")
    return ConfigError("; ".join(bad) or "invalid configuration in DATAOPS_ environment variables")


def _is_structured(path: tuple[str, ...]) -> str | None:
    """``"list"`` or ``"object"`` when the setting at ``path`` is one (its override must be JSON), else None."""
    import types
    import typing

    annotation: Any = settings_model()
    for part in path:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = next((f for n, f in annotation.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return None
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return None
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(annotation) if a is not type(None)] if union else [annotation]
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is list:
            return "list"
        if origin is dict or (isinstance(origin, type) and issubclass(origin, BaseModel)):
            return "object"
    return None


def _from_env(loc: tuple, environment: dict[tuple[str, ...], tuple[str, str]]) -> str:
    """`` (from DATAOPS_...)`` when an environment variable set the offending key."""
    path = tuple(str(p).lower() for p in loc)
    for n in range(len(path), 0, -1):
        if path[:n] in environment:
            return f" (from environment variable {environment[path[:n]][0]})"
    return ""


def _check_yaml(path: str | os.PathLike | None) -> None:
    if path is None:
        return
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if content is not None and not isinstance(content, dict):
        raise ConfigError(f"config file {path} must be a mapping of sections (postgres, landing, ...)")


@functools.cache
def settings_model() -> type[CoreSettings]:
    """The settings model: the core sections plus the section each registered source contributes
    (``endpoints:``, ``object_stores:``, ...), so env overrides and unknown-key checks cover them."""
    from pydantic import create_model

    from streaming.sources import registry

    fields = {source.section: (source.section_model, Field(default_factory=source.section_default))
              for source in registry().values() if source.section}
    return create_model("Settings", __base__=CoreSettings, __module__=__name__, **fields)


def __getattr__(name: str) -> Any:
    # ``Settings`` is built on first use: the sources' sections are known only once the entry points
    # are read, and those import this module.
    if name == "Settings":
        return settings_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
