"""Sources: the interface every kind of input implements, and the registry that finds them.

A source is one package with one entry point in the group ``dataops.sources`` (see
``pyproject.toml``); the landing folder, REST endpoints and object stores register exactly like a
source shipped in another distribution. The core never names a concrete source: the daemon asks
each registered source for its datasets, starts one streaming query per dataset over the stream the
source builds, and hands every micro-batch back to the source to plan; the row stage
(:mod:`streaming.rowstage`) and the sink do the rest, the same for every source.

Where each method runs is said in its docstring, as in ``pyspark.sql.datasource``:

* **driver** — the daemon's process (supervision thread, or the query's ``foreachBatch`` thread);
* **executor** — a Spark task; its arguments crossed a pickle boundary;
* **reader process** — the Python process Spark starts for a Python ``DataSourceStreamReader``,
  which shares nothing with the daemon but what is pickled into the reader's options.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, ClassVar

from streaming.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "Batch", "Dataset", "Source", "fingerprint", "registry", "stream_id"]

ENTRY_POINT_GROUP = "dataops.sources"
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset a source feeds: one table, one streaming query, one checkpoint.

    Attributes:
        name: the name the source knows it by (a folder's name, an endpoint's name); logs and
            messages use it.
        table: the table it loads; its name in the catalog, the metrics and ``/readyz``.
        config: its options (a :class:`streaming.config.LoadOptions`, with the source's own fields).
        fingerprint: a changed fingerprint (config edit) restarts the dataset's query.
    """

    name: str
    table: str
    config: Any
    fingerprint: str = ""


@dataclasses.dataclass
class Batch:
    """A micro-batch's input as its source planned it on the driver.

    Attributes:
        source: what the catalog and load history record as the data's origin (a folder, a masked
            URL, an ``s3://`` URL).
        stage: ``stage(template, token) -> [StageReport]`` runs the batch's stage tasks (on
            executors through a Spark job, or on the driver) from a template task the core fills
            in; it returns one small report per task.
        options: the cleaning options every task gets (null tokens, true/false tokens, formats).
        inputs: what :meth:`Source.finish` needs after the commit (e.g. the files to archive).
        keeps_rejected_input: True when rejected input is kept whole by the source (files moved to
            ``_rejected/``); False when its rows go to quarantine (records, objects).
        record_rejections: a rejected input stays where it is (an object in a bucket): the load
            records a quarantine row naming it and the reason, besides its load-history entry.
        json_records: the rows are JSON records: a field that is null wherever it is not an object
            (``owner`` beside ``owner__login``) adds no column.
        files: how many input files the batch holds (0 for records), for metrics and logs.
    """

    source: str
    stage: Callable[[Any, str], list]  # (StageTask, token) -> [StageReport]
    options: dict
    inputs: Any = None
    keeps_rejected_input: bool = False
    record_rejections: bool = False
    json_records: bool = False
    files: int = 0


class Source(abc.ABC):
    """A kind of input. One instance per daemon, created on the driver with the daemon's
    :class:`streaming.batch.LoadContext` (settings, DSN, metrics, Spark once started, the stop event,
    and ``datasets_changed()`` to call from any thread when the source's datasets changed).

    Class attributes name the source's persistent contracts; never change them for a released
    source, or running deployments reload or skip data:

    * ``kind`` — the ledger's stream ids are ``<kind>:<table>:<query id>``;
    * ``checkpoint_folder`` — queries checkpoint in ``<spark.checkpoint_dir>/<checkpoint_folder>/<table>``;
    * ``section`` / ``section_model`` — the YAML section the source owns and its pydantic type
      (``None`` for a source configured by the core sections alone);
    * ``status_section`` — the key of ``/readyz`` under which :meth:`status` is reported.
    """

    kind: ClassVar[str]
    checkpoint_folder: ClassVar[str]
    section: ClassVar[str | None] = None
    section_model: ClassVar[Any] = None
    status_section: ClassVar[str | None] = None

    def __init__(self, context: Any):
        """Driver. Keep the context; start nothing yet (see :meth:`start`)."""
        self.context = context

    # --- configuration (driver, while the settings validate) -------------------------------
    @classmethod
    def section_default(cls) -> Any:
        """The section's value when the config file has none (driver)."""
        return [] if cls.section_model is not None else None

    @classmethod
    def declared_tables(cls, settings: Any) -> list[str]:
        """Tables the configuration assigns to this source, for the one-dataset-per-table check (driver)."""
        return []

    @classmethod
    def describe_table(cls, table: str) -> str:
        """How a message names the dataset of ``table`` of this source, e.g. ``endpoints: 'orders'`` (driver)."""
        return f"{cls.section or cls.kind}: {table!r}"

    # --- lifecycle (driver) ---------------------------------------------------------------
    def start(self, spark) -> None:
        """Driver, once, after PostgreSQL answered and Spark started: start watchers, register Spark
        data sources, and recover (e.g. finish input whose load committed before a crash)."""

    def stop(self) -> None:
        """Driver, once, at shutdown, before the queries stop."""

    def reconfigure(self, settings: Any) -> None:
        """Driver: an edited config file was validated as ``settings``; ``self.context.settings``
        still holds the running one. Right after this the daemon puts the new sources' sections in
        place and restarts datasets whose :attr:`Dataset.fingerprint` changed, stops removed ones and
        starts new ones (other sections take effect at the next restart)."""

    @abc.abstractmethod
    def datasets(self) -> list[Dataset]:
        """Driver, every supervision tick (keep it cheap): the datasets this source feeds now."""

    # --- the stream (driver) ----------------------------------------------------------------
    @abc.abstractmethod
    def stream(self, spark, dataset: Dataset):
        """Driver: the streaming DataFrame the dataset's query reads.

        A file stream, or ``spark.readStream.format(<a Python DataSource>)``: its reader's methods
        then run in the reader process, with only the options crossing into it.
        """

    def trigger_seconds(self, dataset: Dataset) -> float:
        """Driver: the query's trigger interval."""
        return self.context.settings.spark.trigger_seconds

    @abc.abstractmethod
    def plan(self, dataset: Dataset, df, batch_id: int) -> Batch | None:
        """Driver, in ``foreachBatch``: what micro-batch ``batch_id`` of ``df`` holds, as picklable
        stage tasks to run (see :class:`Batch`); None when it holds nothing.

        Never collect a batch's rows here: only small things (file paths, object keys) may come to
        the driver; rows are read by the stage tasks on executors.
        """

    def finish(self, dataset: Dataset, batch: Batch, result) -> None:
        """Driver, after the batch committed (and again when a replayed batch finds its ledger row):
        finish the input, e.g. archive files and reject unreadable ones. Must be idempotent."""

    # --- what the daemon reports (driver) ---------------------------------------------------
    def status(self, dataset: Dataset) -> str:
        """Driver, at each ``/readyz``: ``"ok"`` or the last error reaching the dataset's input. A
        failing input is reported, but does not make the daemon unready: restarting cannot help."""
        return "ok"

    def pending(self, dataset: Dataset) -> int | None:
        """Driver, every supervision tick: inputs waiting to load (``dataops_files_pending``); None
        when the source cannot tell."""
        return None

    def origin(self, dataset: Dataset) -> str:
        """Where the dataset's data comes from, for ``/status`` (driver); never holds a secret."""
        return f"{self.kind} {dataset.name}"

    def uploads(self) -> Any | None:
        """Driver, once at start, before the HTTP server starts: the object serving ``PUT`` / ``GET
        /datasets/<dataset>/files/<file>`` into this source's datasets (see :mod:`streaming.upload`),
        or None. Asked whether or not ``upload.enabled`` is set, so a source can clear what an
        interrupted upload left; the daemon serves the first one only when uploads are enabled."""
        return None

    def query_key(self, dataset: Dataset) -> str:
        """The dataset's key in ``/readyz``'s ``queries`` (driver)."""
        return f"{self.kind}:{dataset.table}"


def fingerprint(config: Any) -> str:
    """A stable digest of a dataset's config model: a changed digest restarts its query."""
    dumped = config.model_dump(mode="json", by_alias=True) if hasattr(config, "model_dump") else config
    return hashlib.sha256(json.dumps(dumped, sort_keys=True, default=str).encode()).hexdigest()


def stream_id(source: type[Source] | Source, table: str, query_id: str) -> str:
    """The exactly-once ledger's stream id of a dataset's query (a persistent contract)."""
    return f"{source.kind}:{table}:{query_id}"


@functools.cache
def registry() -> dict[str, type[Source]]:
    """Every installed source by entry-point name, found through ``importlib.metadata``.

    A distribution adds one with ``[project.entry-points."dataops.sources"] name = "pkg.mod:Class"``.
    A broken plugin is logged and skipped, so one bad distribution cannot stop the daemon; two
    sources claiming the same YAML section or ledger kind are refused.
    """
    found: dict[str, type[Source]] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in found:
            continue  # the same distribution seen twice on sys.path
        try:
            cls = ep.load()
        except Exception as exc:
            log.error("source %s (%s) cannot be loaded and is skipped: %s", ep.name, ep.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Source)):
            log.error("source %s (%s) is not a streaming.sources.Source; skipped", ep.name, ep.value)
            continue
        for other in found.values():
            if (cls.section and cls.section == other.section) or cls.kind == other.kind or \
                    cls.checkpoint_folder == other.checkpoint_folder:
                raise ConfigError(f"sources {ep.name} and {other.__name__} claim the same section, kind or "
                                   f"checkpoint folder")
        found[ep.name] = cls
    return found
