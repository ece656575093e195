"""The Postgres sink's staging writer: a stage task's rows into its UNLOGGED staging tables.

Runs inside a stage task (on an executor, or on the driver for a small batch): it opens its own
connection, COPYs the row stage's text into the task's staging and quarantine tables, and turns
every failure into a small :class:`~streaming.rowstage.StageReport` for the driver.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Iterator

from connectors.postgres import is_transient, stage_names
from streaming.errors import FileRejected
from streaming.rowstage import CHUNK_ROWS, RowStage, StageReport, StageTask, mismatch_report


def run_stage_task(task: StageTask, stage: Callable[[StageTask], StageReport]) -> StageReport:
    """Run ``stage(task)``, which parses the task's input and stages it (see :func:`copy_to_stage`).

    Never raises: bad input is a ``rejected`` report, a failure an ``error`` report. Runs on an
    executor (or the driver); ``task`` arrived pickled, the report goes back pickled.
    """
    report = _run(task, stage)
    # The quarantine table exists only when rows were quarantined (see copy_to_stage).
    report.stage_table = task.stage_table
    report.quarantine_table = task.quarantine_table if report.quarantined_rows else ""
    return report


def _run(task: StageTask, stage) -> StageReport:
    import psycopg2

    try:
        return stage(task)
    except FileRejected as exc:
        return StageReport(task.name, task.path, task.seq, "rejected", exc.reason, exc.detail, diff=exc.diff)
    except psycopg2.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if exc.pgcode and not is_transient(exc):  # e.g. a character PostgreSQL cannot store, a limit
            return StageReport(task.name, task.path, task.seq, "rejected", "load_failed",
                               f"{task.name}: PostgreSQL refused the file's data: {detail}")
        return StageReport(task.name, task.path, task.seq, "error", "transient" if is_transient(exc) else "sink",
                           f"{task.name}: staging failed: {detail}")
    except OSError as exc:
        return StageReport(task.name, task.path, task.seq, "error", "io", f"{task.name}: cannot read: {exc.strerror or exc}")
    except Exception as exc:  # a bug: report it with its place, the batch fails and is retried
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1]
        return StageReport(task.name, task.path, task.seq, "error", "bug",
                           f"{task.name}: {type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})")


def copy_to_stage(task: StageTask, parsed: RowStage) -> None:
    """Let the row stage read its input (:meth:`RowStage.prepare`), create the task's staging table
    with the types the row stage chose, COPY the rows into it, and the quarantined rows into a
    quarantine table when there are any."""
    import psycopg2

    conn = None
    try:
        parsed.prepare()
        conn = psycopg2.connect(task.dsn, application_name="dataops-stage", connect_timeout=10)
        conn.set_client_encoding("UTF8")  # the row stage's COPY text is UTF-8, whatever the server's default
        with conn, conn.cursor() as cur:
            from psycopg2 import sql

            # Staging tables are throwaway (UNLOGGED, and a lost batch is staged again): their commit
            # need not wait for the WAL flush.
            cur.execute("SET LOCAL synchronous_commit = off")
            # Typed staging columns read timestamps as the merge does (timestamptz values without a zone are UTC).
            cur.execute("SET LOCAL TimeZone = 'UTC'")

            stage = sql.Identifier(task.stage_schema, task.stage_table)
            quarantine = sql.Identifier(task.stage_schema, task.quarantine_table)
            names = [sql.Identifier(f"c{i}") for i in range(len(parsed.out_names))]
            # Binary rows come in the row stage's order of fields (RowStage.copy_order).
            order = parsed.copy_order() if parsed.copy_format == "binary" else range(len(names))
            cols = sql.SQL(", ").join([sql.Identifier("_ord"), *(names[i] for i in order)])
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(stage, quarantine))
            types = parsed.staged_types or ["text"] * len(names)
            cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(
                stage, sql.SQL(", ").join([sql.SQL("_ord bigint"), *(sql.SQL("{} {}").format(n, sql.SQL(t))
                                                                    for n, t in zip(names, types))])))
            # FREEZE (the table is this transaction's own): its rows are written frozen, so the merge's
            # scan does not stop to set every tuple's hint bits, and dirty every page again.
            options = sql.SQL({"binary": " WITH (FORMAT binary, FREEZE)", "text": " WITH (FREEZE)"}[parsed.copy_format])
            reader = _IterReader(parsed.copy_chunks())
            timings = parsed.timings
            working = ("clean_type", "encode", "catalog")
            started, working_before = time.perf_counter(), sum(timings[k] for k in working)
            try:
                cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN{}").format(stage, cols, options).as_string(cur),
                                reader, size=1 << 16)
            except psycopg2.Error:
                if reader.failure is not None:  # the input's own error, which psycopg2 reports as its own
                    raise reader.failure from None
                raise
            timings["parse"] += max(0.0, reader.producing - (sum(timings[k] for k in working) - working_before))
            timings["copy"] += max(0.0, time.perf_counter() - started - reader.producing)
            if parsed.quarantined:  # most inputs have nothing to quarantine: no table (and no DDL) for them
                cur.execute(sql.SQL(
                    "CREATE UNLOGGED TABLE {} (line bigint, column_name text, raw_value text, reason text, record jsonb)"
                ).format(quarantine))
                parsed.quarantine.seek(0)
                cur.copy_expert(sql.SQL("COPY {} FROM STDIN").format(quarantine).as_string(cur), parsed.quarantine)
    finally:
        if conn is not None:
            conn.close()
        parsed.close()


class _IterReader(io.RawIOBase):
    """A file-like ``read()`` over an iterator of COPY text (str or UTF-8 bytes), so COPY streams while
    the input parses."""

    def __init__(self, chunks: Iterator[str | bytes]):
        self.chunks = chunks
        self.failure: BaseException | None = None  # what the iterator raised (COPY is then aborted)
        self.producing = 0.0  # seconds spent in the iterator

    def read(self, size: int = -1):  # noqa: ARG002 - COPY accepts chunks of any length
        started = time.perf_counter()
        try:
            for chunk in self.chunks:
                if chunk:
                    return chunk
        except Exception as exc:
            self.failure = exc
            raise
        finally:
            self.producing += time.perf_counter() - started
        return ""

    readline = read


class _RowBlocks(RowStage):
    """Rows of raw text values (one partition of a source's DataFrame) handed to the row stage."""

    def __init__(self, task: StageTask, names: list[str], rows: list[tuple]):
        from streaming.naming import normalize_columns

        super().__init__(task, frozenset(task.options.get("null_tokens") or ("",)))
        self.set_columns(names, normalize_columns(names))
        missing = [k for k in task.primary_key if k not in self.columns]
        if missing:
            raise FileRejected("missing_key", f"{task.name}: primary key column(s) {', '.join(missing)} missing "
                                              f"({', '.join(self.columns)})")
        self.rows = rows

    def copy_chunks(self) -> Iterator[str]:
        for start in range(0, len(self.rows), CHUNK_ROWS):
            chunk = self.rows[start:start + CHUNK_ROWS]
            columns = [[None if v is None else str(v) for v in c] for c in zip(*chunk)] if chunk else []
            yield self.block(columns or [[] for _ in self.columns], list(range(start + 1, start + 1 + len(chunk))))


def _stage_rows(task: StageTask, names: list[str], rows: list[tuple]) -> StageReport:
    parsed = _RowBlocks(task, names, rows)
    copy_to_stage(task, parsed)
    return mismatch_report(task, parsed) or StageReport(
        task.name, task.path, task.seq, "staged", columns=parsed.report_columns(), staged_rows=parsed.staged,
        quarantined_rows=parsed.quarantined, timings=parsed.timings)


def stage_dataframe(df, template: StageTask, token: str) -> list[StageReport]:
    """Stage a micro-batch DataFrame whose columns hold raw values, one stage task per Spark partition.

    For sources whose stream already yields rows (values are cleaned and typed by the row stage, so
    strings are best). Runs on the driver; the tasks run on executors and only their reports come
    back. A row's position is its partition (``seq``) and its index there.
    """
    names = list(df.columns)

    def run(index: int, rows):  # executor
        rows = [tuple(r) for r in rows]
        if rows:
            stage_table, quarantine = stage_names(token, index)
            task = dataclasses.replace(template, seq=index, stage_table=stage_table, quarantine_table=quarantine)
            yield run_stage_task(task, lambda t: _stage_rows(t, names, rows))

    return df.rdd.mapPartitionsWithIndex(run).collect()  # driver-ok: reports, not rows
