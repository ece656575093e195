"""One load: a source's planned micro-batch in, rows committed exactly once, whatever the source.

Runs on the driver, in the daemon's ``foreachBatch`` (and in ``ingest``). The source plans the batch
(:meth:`streaming.sources.Source.plan`): its stage tasks run on executors through a Spark job, or on
the driver when the batch is small; here the template task is filled in, the tasks run, and the
sink merges their staging tables with the ledger row in one transaction.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg2

from connectors import catalog_links, postgres
from streaming.errors import BatchDataError, ShutdownRequested, SinkError, TransientSinkError
from streaming.metrics import Metrics
from streaming.rowstage import StageReport, StageTask
from streaming.sources import Batch, Dataset

log = logging.getLogger(__name__)


class InFlight:
    """The database sessions and Spark job groups of the batches in flight (driver side).

    A shutdown whose grace period ran out cancels them: their transactions roll back, so the
    batches stay uncommitted and replay on the next start.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._backends: set[int] = set()
        self._groups: set[str] = set()

    def add_backend(self, pid: int) -> None:
        with self._lock:
            self._backends.add(pid)

    def remove_backend(self, pid: int) -> None:
        with self._lock:
            self._backends.discard(pid)

    def job_group(self, spark, description: str) -> str:
        """Put the calling thread's next Spark jobs in a new job group that :meth:`cancel` can cancel."""
        group = f"dataops-{uuid.uuid4().hex[:12]}"
        spark.sparkContext.setJobGroup(group, description, interruptOnCancel=True)
        with self._lock:
            self._groups.add(group)
        return group

    def end_job_group(self, group: str) -> None:
        with self._lock:
            self._groups.discard(group)

    def cancel(self, dsn: str, spark) -> tuple[int, int]:
        """Terminate the batches' PostgreSQL sessions and cancel their Spark jobs; return how many."""
        with self._lock:
            backends, groups = sorted(self._backends), sorted(self._groups)
        terminated = 0
        if backends:
            try:
                conn = postgres.connect(dsn, connect_timeout=5)
                try:
                    with conn, conn.cursor() as cur:
                        cur.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM "
                                    "pg_stat_activity WHERE pid = ANY(%s)", (backends,))
                        terminated = cur.fetchone()[0]
                finally:
                    conn.close()
            except psycopg2.Error as exc:  # the server may be gone: then so are the sessions
                log.warning("could not cancel the batches' PostgreSQL sessions: %s", exc)
        if spark is not None:
            for group in groups:
                spark.sparkContext.cancelJobGroup(group)
        return terminated, len(groups)


@dataclasses.dataclass
class LoadContext:
    """What every load needs; one per daemon (or per ``ingest`` run)."""

    settings: Any  # streaming.config.Settings
    dsn: str
    metrics: Metrics
    spark: object | None = None  # SparkSession; None = parse every file on the driver
    stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    datasets_changed: Callable[[], None] = lambda: None  # a source found or lost datasets (any thread)
    in_flight: InFlight = dataclasses.field(default_factory=InFlight)
    # Told of each phase of a load: ("stage", token), ("merge", rows staged), ("catalog", None); for progress.
    progress: Callable[[str, object], None] | None = None
    # Told of each committed dataset to re-evaluate its key and join candidates; None: done right away,
    # on the batch's thread (``ingest``, tests). The daemon hands them to a :class:`LinkRefresher`.
    find_links: Callable[[str], None] | None = None


def load_batch(ctx: LoadContext, dataset: Dataset, batch: Batch, stream: str, batch_id: int,
               one_off: bool = False) -> postgres.MergeResult:
    """Stage and merge micro-batch ``batch_id`` of ``stream`` into ``dataset``'s table, exactly once.

    Runs on the driver; the batch's stage tasks run where :attr:`Batch.stage` sends them.
    ``one_off`` (``dataops ingest``): the catalog keeps an existing dataset's mode, key and source.
    """
    return _commit(ctx, dataset.table, dataset.config, batch, stream, batch_id, one_off)


def _commit(ctx: LoadContext, table: str, cfg, batch: Batch, stream: str, batch_id: int,
            one_off: bool = False) -> postgres.MergeResult:
    """Stage and merge a batch (see _commit_batch); a batch that fails is counted in the metrics."""
    try:
        return _commit_batch(ctx, table, cfg, batch, stream, batch_id, one_off)
    except ShutdownRequested:
        raise
    except BaseException:
        ctx.metrics.batches.labels(table, "failed").inc()
        raise


def _commit_batch(ctx: LoadContext, table: str, cfg, batch: Batch, stream: str, batch_id: int,
                  one_off: bool = False) -> postgres.MergeResult:
    """Stage a batch with ``batch.stage(template, token)`` and merge it, exactly once.

    A batch already committed (a replay after a crash) writes nothing and returns the recorded result.

    Raises:
        ShutdownRequested: the daemon is stopping and the batch had not started.
        TransientSinkError: PostgreSQL is unavailable; the caller retries the batch.
        SinkError: the batch cannot be committed (named dataset, file and reason).
    """
    if ctx.stopping.is_set():
        raise ShutdownRequested(f"dataset {table}: batch {batch_id} not started, the daemon is stopping")
    started = time.monotonic()
    # The catalog, metrics and logs know a dataset by its table name (the normalized folder name).
    dataset = table
    pg = ctx.settings.postgres
    conn = None
    try:
        conn = postgres.connect(ctx.dsn)
        with conn, conn.cursor() as cur:
            previous = postgres.previous_load(cur, pg.catalog_schema, stream, batch_id)
            if previous is not None:
                log.info("dataset=%s batch=%s already committed as load %s; replay writes nothing",
                         dataset, batch_id, previous.load_id)
                ctx.metrics.batches.labels(dataset, "skipped_replay").inc()
                return previous
            table_types = postgres.table_columns(cur, pg.schema_name, table)
    except psycopg2.Error as exc:
        raise postgres.classify_error(exc, f"dataset {dataset}: batch {batch_id}") from exc
    finally:
        if conn is not None:
            conn.close()
    template = StageTask(
        path="", name="", seq=0, dataset=dataset, dsn=ctx.dsn, stage_schema=pg.catalog_schema, stage_table="",
        quarantine_table="", options=batch.options, table_types=table_types, hints=dict(cfg.columns),
        primary_key=tuple(cfg.primary_key), policy=cfg.on_schema_change,
        fixed_columns=(cfg.partition_by,) if cfg.partition_by else ())
    token = stage_token()
    if ctx.progress is not None:
        ctx.progress("stage", token)
    started = time.monotonic()
    reports = batch.stage(template, token)
    _log_timings(dataset, reports, time.monotonic() - started)
    if not reports and not batch.files:
        # A batch without input (an endpoint's failed or empty poll): nothing to load, nothing to record.
        return postgres.MergeResult(load_id=0)
    if ctx.progress is not None:
        ctx.progress("merge", sum(r.staged_rows for r in reports))
    keeps = batch.keeps_rejected_input
    plan = postgres.MergePlan(
        dataset=dataset, source=batch.source, table_schema=pg.schema_name, table=table,
        catalog_schema=pg.catalog_schema, mode=cfg.mode, primary_key=tuple(cfg.primary_key), hints=dict(cfg.columns),
        indexes=cfg.indexes, partition_by=cfg.partition_by, policy=cfg.on_schema_change, stream=stream,
        batch_id=batch_id, reports=reports, stage_schema=pg.catalog_schema,
        true_tokens=tuple(batch.options.get("true_tokens", ())),
        quarantine_rejected=not keeps, record_rejections=batch.record_rejections, one_off=one_off,
        json_records=batch.json_records,
        on_phase=(lambda phase: ctx.progress(phase, None)) if ctx.progress is not None else None,
        description=getattr(cfg, "description", None), column_descriptions=dict(getattr(cfg, "column_descriptions", {})))
    try:
        failed = [r for r in reports if r.status == "error"]
        if failed:
            kind = TransientSinkError if all(r.reason == "transient" for r in failed) else SinkError
            raise kind(f"dataset {dataset}: batch {batch_id}: " + "; ".join(r.detail for r in failed))
        try:
            result = postgres.merge(ctx.dsn, plan, ctx.in_flight)
        except BatchDataError as exc:
            # Retrying cannot help: record the batch with its input rejected, so the dataset moves on.
            # Files keep their rows in _rejected/; endpoint records move from staging to quarantine.
            log.error("%s; the batch's %s", exc, "input is rejected" if keeps else "records go to quarantine")
            if keeps:
                drop_reports(ctx, plan.reports)
            for r in plan.reports:
                if r.status == "staged":
                    r.status, r.reason, r.detail = "rejected", "load_failed", f"{r.name}: {exc}"
            result = postgres.merge(ctx.dsn, plan, ctx.in_flight)
    except BaseException:
        drop_reports(ctx, plan.reports)
        raise
    if not result.replayed:
        if ctx.find_links is not None:
            ctx.find_links(dataset)
        else:
            find_links(ctx, dataset)
    seconds = time.monotonic() - started
    # Per file, not per part: a large file parsed in parts is one file here.
    rejected = sum(1 for f in result.files if f["status"] == "rejected")
    files = batch.files
    ctx.metrics.record_load(dataset, result, seconds, len(result.files) - rejected if files else 0)
    log.info("dataset=%s batch=%s load=%s files=%d rows_in=%d loaded=%d quarantined=%d duplicates=%d "
             "rejected_files=%d duration=%.3fs", dataset, batch_id, result.load_id, files, result.rows_in,
             result.loaded, result.quarantined, result.duplicates, rejected, seconds)
    return result


def find_links(ctx: LoadContext, dataset: str) -> None:
    """Re-evaluate the dataset's key and join candidates; derived data, so a failure only logs."""
    try:
        catalog_links.refresh(ctx.dsn, ctx.settings.postgres.catalog_schema, dataset)
    except SinkError as exc:
        log.warning("%s; they are re-evaluated with the next batch", exc)
    except Exception:  # the batch is committed: nothing derived from it may fail it now
        log.exception("dataset %s: finding key and join candidates failed; re-evaluated with the next batch", dataset)


class LinkRefresher:
    """Re-evaluates datasets' key and join candidates on a thread of its own (driver, daemon).

    Candidates are derived from the committed catalog, so no batch needs to wait for them: done on
    the batch's path, they delayed the next micro-batch of every dataset by the evaluation's queries.
    Requests that arrive while an evaluation runs are coalesced into the next one, so the candidates
    converge on every dataset's last committed batch; :meth:`stop` evaluates what is still asked for.
    """

    COALESCE_SECONDS = 0.2  # batches committing close together share one evaluation per dataset

    def __init__(self, ctx: LoadContext):
        self._ctx = ctx
        self._lock = threading.Lock()
        self._wanted: list[str] = []  # in request order, each dataset once
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "LinkRefresher":
        self._thread = threading.Thread(target=self._run, name="dataops-links", daemon=True)
        self._thread.start()
        return self

    def request(self, dataset: str) -> None:
        """Any thread: ask for ``dataset``'s candidates to be evaluated again (returns at once)."""
        with self._lock:
            if dataset not in self._wanted:
                self._wanted.append(dataset)
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Evaluate the datasets still asked for, then end the thread (waits up to ``timeout``)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._stop.is_set():
                self._stop.wait(self.COALESCE_SECONDS)
            self._wake.clear()
            self._drain()
            if self._stop.is_set():
                return

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._wanted:
                    return
                dataset = self._wanted.pop(0)
            find_links(self._ctx, dataset)


def _log_timings(dataset: str, reports: list[StageReport], seconds: float) -> None:
    """Where a batch's staging time went, summed over its tasks (which run side by side)."""
    staged = [r for r in reports if r.timings]
    if not staged:
        return
    kinds = ("parse", "clean_type", "encode", "catalog", "copy")
    total = {k: sum(r.timings.get(k, 0.0) for r in staged) for k in kinds}
    log.log(logging.INFO if seconds >= 1.0 else logging.DEBUG,
            "dataset=%s staged rows=%d tasks=%d wall=%.2fs task seconds: %s", dataset,
            sum(r.staged_rows + r.quarantined_rows for r in staged), len(staged), seconds,
            " ".join(f"{k}={total[k]:.2f}s" for k in kinds))


def stage_token() -> str:
    """A batch's staging-table token: creation time (hex seconds) and randomness, so leftovers of a
    crashed batch can be recognized by age."""
    return f"{int(time.time()):08x}{uuid.uuid4().hex[:6]}"


def drop_reports(ctx: LoadContext, reports: list[StageReport]) -> None:
    """Drop the staging tables of ``reports`` (driver); a failure is left to the stale-stage sweep."""
    try:
        conn = postgres.connect(ctx.dsn)
        try:
            with conn, conn.cursor() as cur:
                postgres.drop_stage_tables(cur, ctx.settings.postgres.catalog_schema, reports)
        finally:
            conn.close()
    except Exception as exc:  # the database may be the reason we are here; stale stages are dropped later
        log.debug("could not drop staging tables: %s", exc)
