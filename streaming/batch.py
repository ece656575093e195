"""One load: files in, rows committed exactly once. Used by the daemon's foreachBatch and by ``ingest``.

Runs on the driver. Files are parsed by file tasks (on executors through a Spark job, or on the driver
when the whole batch is small, which saves the job's fixed cost); the merge is one transaction.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable

import psycopg2
import time
import uuid
from pathlib import Path

from connectors import catalog_links, postgres
from connectors.csvfile import FileReport, FileTask, plan_parts, run_file_task
from connectors.rest.client import mask_url
from connectors.rest.records import run_records_task
from streaming.errors import FileRejected
from streaming.config import CsvOptions, DatasetConfig, EndpointConfig, Settings
from streaming.errors import BatchDataError, ShutdownRequested, SinkError, TransientSinkError
from streaming.metrics import Metrics
from streaming.naming import normalize_dataset_name

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LandedFile:
    """A file to load: where it is now, and the name the user gave it."""

    path: str
    name: str

    @property
    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0


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

    settings: Settings
    dsn: str
    metrics: Metrics
    spark: object | None = None  # SparkSession; None = parse every file on the driver
    stopping: threading.Event = dataclasses.field(default_factory=threading.Event)
    in_flight: InFlight = dataclasses.field(default_factory=InFlight)
    # Told of each phase of a load: ("stage", token), ("merge", rows staged), ("catalog", None); for progress.
    progress: Callable[[str, object], None] | None = None


def load_files(ctx: LoadContext, dataset: str, files: list[LandedFile], stream: str, batch_id: int,
               config: DatasetConfig | None = None, source: str | None = None,
               one_off: bool = False) -> postgres.MergeResult:
    """Load ``files`` into ``dataset`` as batch ``batch_id`` of ``stream``, exactly once (see _commit).

    ``one_off`` (``dataops ingest``): the catalog keeps an existing dataset's mode, key and source.
    """
    cfg = config or ctx.settings.dataset(dataset)
    options = {k: getattr(cfg, k) for k in CsvOptions.model_fields}

    def stage(template: FileTask, token: str) -> list[FileReport]:
        local = ctx.spark is None or sum(f.size for f in files) <= ctx.settings.landing.local_parse_bytes
        return _run_tasks(ctx, _plan_tasks(ctx, template, files, token, split=not local), local)

    table = normalize_dataset_name(dataset)
    folder = Path(ctx.settings.landing.path).resolve() / dataset
    return _commit(ctx, table, cfg, options, stream, batch_id, source or f"landing folder {folder}", stage, len(files),
                   one_off=one_off)


def load_records(ctx: LoadContext, endpoint: EndpointConfig, df, stream: str, batch_id: int) -> postgres.MergeResult:
    """Load one micro-batch of an endpoint (a DataFrame of ``record, seq``) exactly once.

    Each Spark partition is staged by a task on an executor; only its small report comes back.
    """
    options = {"null_tokens": list(endpoint.null_tokens), "true_tokens": endpoint.true_tokens,
               "false_tokens": endpoint.false_tokens, "date_formats": list(endpoint.date_formats),
               "flatten_depth": endpoint.flatten_depth}

    def stage(template: FileTask, token: str) -> list[FileReport]:
        template = dataclasses.replace(template, name=f"endpoint {endpoint.name} batch {batch_id}",
                                       path=mask_url(endpoint.url))

        def run(index: int, rows):
            rows = [(r[0], r[1]) for r in rows]
            if rows:
                stage_table, quarantine = postgres.stage_names(token, index)
                # seq 0 for every part: rows order by their position in the batch (_ord) alone, so
                # the last occurrence of a key wins however Spark partitioned the records.
                yield run_records_task(dataclasses.replace(
                    template, seq=0, stage_table=stage_table, quarantine_table=quarantine), rows)

        group = ctx.in_flight.job_group(ctx.spark, f"dataops: stage batch {batch_id} of endpoint {endpoint.name}")
        try:
            return df.rdd.mapPartitionsWithIndex(run).collect()  # driver-ok: reports, not rows
        finally:
            ctx.in_flight.end_job_group(group)

    return _commit(ctx, endpoint.name, endpoint, options, stream, batch_id, mask_url(endpoint.url), stage, 0)


def _commit(ctx: LoadContext, table: str, cfg, options: dict, stream: str, batch_id: int, source: str,
            stage, files: int, one_off: bool = False) -> postgres.MergeResult:
    """Stage and merge a batch (see _commit_batch); a batch that fails is counted in the metrics."""
    try:
        return _commit_batch(ctx, table, cfg, options, stream, batch_id, source, stage, files, one_off)
    except ShutdownRequested:
        raise
    except BaseException:
        ctx.metrics.batches.labels(table, "failed").inc()
        raise


def _commit_batch(ctx: LoadContext, table: str, cfg, options: dict, stream: str, batch_id: int, source: str,
                  stage, files: int, one_off: bool = False) -> postgres.MergeResult:
    """Stage a batch with ``stage(template, token)`` and merge it, exactly once.

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
    template = FileTask(
        path="", name="", seq=0, dataset=dataset, dsn=ctx.dsn, stage_schema=pg.catalog_schema, stage_table="",
        quarantine_table="", options=options, table_types=table_types, hints=dict(cfg.columns),
        primary_key=tuple(cfg.primary_key), policy=cfg.on_schema_change,
        fixed_columns=(cfg.partition_by,) if cfg.partition_by else ())
    token = stage_token()
    if ctx.progress is not None:
        ctx.progress("stage", token)
    reports = stage(template, token)
    if not reports and not files:
        # An endpoint batch without records (a failed or empty poll): nothing to load, nothing to record.
        return postgres.MergeResult(load_id=0)
    if ctx.progress is not None:
        ctx.progress("merge", sum(r.staged_rows for r in reports))
    plan = postgres.MergePlan(
        dataset=dataset, source=source, table_schema=pg.schema_name, table=table,
        catalog_schema=pg.catalog_schema, mode=cfg.mode, primary_key=tuple(cfg.primary_key), hints=dict(cfg.columns),
        indexes=cfg.indexes, partition_by=cfg.partition_by, policy=cfg.on_schema_change, stream=stream,
        batch_id=batch_id, reports=reports, stage_schema=pg.catalog_schema, true_tokens=tuple(cfg.true_tokens),
        quarantine_rejected=not files, one_off=one_off, json_records=not files,
        on_phase=(lambda phase: ctx.progress(phase, None)) if ctx.progress is not None else None,
        description=cfg.description, column_descriptions=dict(cfg.column_descriptions))
    try:
        failed = [r for r in reports if r.status == "error"]
        if failed:
            kind = TransientSinkError if all(r.reason == "transient" for r in failed) else SinkError
            raise kind(f"dataset {dataset}: batch {batch_id}: " + "; ".join(r.detail for r in failed))
        try:
            result = postgres.merge(ctx.dsn, plan, ctx.in_flight)
        except BatchDataError as exc:
            # Retrying cannot help: record the batch with its files rejected, so the dataset moves on.
            # Files keep their rows in _rejected/; endpoint records move from staging to quarantine.
            plan.quarantine_rejected = not files
            log.error("%s; the batch's %s", exc, "files are rejected" if files else "records go to quarantine")
            if files:
                _drop_reports(ctx, plan.reports)
            for r in plan.reports:
                if r.status == "staged":
                    r.status, r.reason, r.detail = "rejected", "load_failed", f"{r.name}: {exc}"
            result = postgres.merge(ctx.dsn, plan, ctx.in_flight)
    except BaseException:
        _drop_reports(ctx, plan.reports)
        raise
    if not result.replayed:
        _find_links(ctx, dataset)
    seconds = time.monotonic() - started
    # Per file, not per part: a large file parsed in parts is one file here.
    rejected = sum(1 for f in result.files if f["status"] == "rejected")
    ctx.metrics.record_load(dataset, result, seconds, len(result.files) - rejected if files else 0)
    log.info("dataset=%s batch=%s load=%s files=%d rows_in=%d loaded=%d quarantined=%d duplicates=%d "
             "rejected_files=%d duration=%.3fs", dataset, batch_id, result.load_id, files, result.rows_in,
             result.loaded, result.quarantined, result.duplicates, rejected, seconds)
    return result


def _find_links(ctx: LoadContext, dataset: str) -> None:
    """Re-evaluate the dataset's key and join candidates; derived data, so a failure only logs."""
    try:
        catalog_links.refresh(ctx.dsn, ctx.settings.postgres.catalog_schema, dataset)
    except SinkError as exc:
        log.warning("%s; they are re-evaluated with the next batch", exc)
    except Exception:  # the batch is committed: nothing derived from it may fail it now
        log.exception("dataset %s: finding key and join candidates failed; re-evaluated with the next batch", dataset)


def stage_token() -> str:
    """A batch's staging-table token: creation time (hex seconds) and randomness, so leftovers of a
    crashed batch can be recognized by age."""
    return f"{int(time.time()):08x}{uuid.uuid4().hex[:6]}"


def _plan_tasks(ctx: LoadContext, template: FileTask, files: list[LandedFile], token: str,
                split: bool) -> list[FileTask | FileReport]:
    """One task per file; with ``split``, a large file becomes one task per part (per Spark core)."""
    parallelism = ctx.spark.sparkContext.defaultParallelism if split else 1
    tasks: list[FileTask | FileReport] = []
    for seq, f in enumerate(files):
        plan = None
        if parallelism > 1 and f.size > ctx.settings.landing.split_bytes:
            try:
                plan = plan_parts(f.path, f.name, template.options, parallelism)
            except FileRejected as exc:
                tasks.append(FileReport(f.name, f.path, seq, "rejected", exc.reason, exc.detail, diff=exc.diff))
                continue
        ranges = plan.ranges if plan else ((0, None, 1),)
        for part, (start, end, first_line) in enumerate(ranges):
            stage, quarantine = postgres.stage_names(token, f"{seq}_{part}")
            tasks.append(dataclasses.replace(
                template, path=f.path, name=f.name, seq=seq, stage_table=stage, quarantine_table=quarantine,
                part=part, start=start, end=end, first_line=first_line,
                header=plan.header if plan else None, encoding=plan.encoding if plan else None,
                delimiter=plan.delimiter if plan else None, last_part=part == len(ranges) - 1))
    return tasks


def _run_tasks(ctx: LoadContext, planned: list[FileTask | FileReport], local: bool) -> list[FileReport]:
    """Run the file tasks: on the driver for a small batch, else as one Spark job."""
    tasks = [t for t in planned if isinstance(t, FileTask)]
    done = [t for t in planned if isinstance(t, FileReport)]
    if not tasks:
        return done
    if local:
        return done + [run_file_task(t) for t in tasks]
    reports = _spark_job(ctx, tasks)
    reports = _reject_whole_files(ctx, reports)
    bad = {r.seq for r in reports if r.bad_cut}
    if bad:
        # A cut was not a record boundary: parse those files again in one piece.
        _drop_reports(ctx, [r for r in reports if r.seq in bad])
        redo = [dataclasses.replace(t, stage_table=t.stage_table + "w", quarantine_table=t.quarantine_table + "w",
                                    part=0, start=0, end=None, first_line=1, header=None, last_part=True)
                for t in tasks if t.seq in bad and t.part == 0]
        log.info("dataset=%s: re-parsing %s in one piece (a part boundary fell inside a quoted field)",
                 tasks[0].dataset, ", ".join(t.name for t in redo))
        reports = [r for r in reports if r.seq not in bad] + _spark_job(ctx, redo)
    return done + reports


def _reject_whole_files(ctx: LoadContext, reports: list[FileReport]) -> list[FileReport]:
    """A file is rejected whole: when one of its parts is rejected, its other parts are dropped too."""
    rejected = {r.seq: r for r in reports if r.status == "rejected"}
    if not rejected:
        return reports
    _drop_reports(ctx, [r for r in reports if r.seq in rejected])
    for r in reports:
        first = rejected[r.seq] if r.seq in rejected else None
        if first is not None and r is not first and r.status == "rejected" and r.diff:
            first.diff = first.diff or {}
            for key, value in r.diff.items():  # e.g. changed types found in different parts
                if isinstance(value, dict):
                    first.diff.setdefault(key, {}).update(value)
    return [r for r in reports if r.seq not in rejected] + list(rejected.values())


def _spark_job(ctx: LoadContext, tasks: list[FileTask]) -> list[FileReport]:
    sc = ctx.spark.sparkContext
    group = ctx.in_flight.job_group(ctx.spark, f"dataops: stage {len(tasks)} part(s) of {tasks[0].dataset}")
    try:
        # One Spark task per file part; the job returns one small report per part.
        return sc.parallelize(tasks, len(tasks)).map(run_file_task).collect()  # driver-ok: reports, not rows
    finally:
        ctx.in_flight.end_job_group(group)


def _drop_reports(ctx: LoadContext, reports: list[FileReport]) -> None:
    try:
        conn = postgres.connect(ctx.dsn)
        try:
            with conn, conn.cursor() as cur:
                postgres.drop_stage_tables(cur, ctx.settings.postgres.catalog_schema, reports)
        finally:
            conn.close()
    except Exception as exc:  # the database may be the reason we are here; stale stages are dropped later
        log.debug("could not drop staging tables: %s", exc)
