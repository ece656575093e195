"""PostgreSQL: connections, error classification, the catalog tables and the set-based merge.

All SQL built from names that come from data (dataset, table, column names) goes through
``psycopg2.sql.Identifier``; types come from a fixed whitelist; values are parameters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence

import psycopg2
from psycopg2 import sql

from connectors import profile, stats
from streaming.rowstage import EXACT_CASTS, RESCUED, StageReport
from streaming.config import PG_TYPES
from streaming.errors import BatchDataError, SchemaError, SinkError, TransientSinkError
from streaming.naming import normalize_identifier
from streaming.schema import SAFE_WIDENING, join, pg_format

log = logging.getLogger(__name__)

# SQLSTATE classes and codes of failures that heal by themselves: a lost connection (08), a server
# starting, shutting down or restarted (57P), resources running out (53: disk, memory, connections),
# conflicts with concurrent work (40001, 40P01, 55P03) and a cancelled statement (57014: a
# statement_timeout, or the daemon's own cancel at shutdown). Everything else with a SQLSTATE --
# program limits (54), data (22), integrity (23), syntax and undefined objects (42) -- is
# PostgreSQL refusing this batch, and retrying it cannot help.
_TRANSIENT_CLASSES = ("08", "53", "57P")
_TRANSIENT_CODES = frozenset({"40001", "40P01", "55P03", "57014"})
_PG_TYPE_NAMES = {
    "timestamp without time zone": "timestamp",
    "timestamp with time zone": "timestamptz",
    "character varying": "text",
    "character": "text",
    "json": "jsonb",
}


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same work later can succeed, judged by the error's SQLSTATE.

    Errors without a SQLSTATE are connection-level (the server closed the connection, cannot
    connect, the connection is already closed): transient too.
    """
    if not isinstance(exc, psycopg2.Error):
        return False
    code = exc.pgcode
    if not code:
        return isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
    return code in _TRANSIENT_CODES or code.startswith(_TRANSIENT_CLASSES)


def classify_error(exc: BaseException, what: str) -> Exception:
    """Map a psycopg2 error into the product's hierarchy, once, with a message naming ``what``.

    Transient errors become :class:`TransientSinkError` (retried); every other PostgreSQL error is a
    refusal of the batch, :class:`BatchDataError`, whose files are rejected with the reason.
    """
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_transient(exc):
        return TransientSinkError(f"{what}: PostgreSQL unavailable ({detail}); will retry")
    if isinstance(exc, psycopg2.Error) and exc.pgcode:
        return BatchDataError(f"{what}: refused by PostgreSQL ({exc.pgcode}): {detail}")
    return SinkError(f"{what}: {detail}")


def connect(dsn: str, application_name: str = "dataops", connect_timeout: int = 10):
    return psycopg2.connect(dsn, application_name=application_name, connect_timeout=connect_timeout)


def canonical_pg_type(formatted: str) -> str:
    base = formatted.split("(")[0].strip()
    base = _PG_TYPE_NAMES.get(base, base)
    return base if base in PG_TYPES else "text"


def table_columns(cur, schema: str, table: str) -> dict[str, str]:
    """The table's columns and canonical types, in order; empty if the table does not exist."""
    cur.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum""",
        (schema, table),
    )
    return {name: canonical_pg_type(t) for name, t in cur.fetchall()}


CATALOG_DDL = """
CREATE SCHEMA IF NOT EXISTS {cat};
CREATE TABLE IF NOT EXISTS {cat}.datasets (
    name text PRIMARY KEY,
    source text,
    table_schema text NOT NULL,
    table_name text NOT NULL,
    mode text NOT NULL,
    primary_key text[] NOT NULL DEFAULT '{{}}',
    created_at timestamptz NOT NULL DEFAULT now(),
    last_loaded_at timestamptz,
    schema_version integer NOT NULL DEFAULT 0,
    row_count bigint NOT NULL DEFAULT 0,
    quarantined_rows bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS {cat}.columns (
    dataset text NOT NULL,
    name text NOT NULL,
    source_name text,
    type text NOT NULL,
    nullable boolean NOT NULL DEFAULT true,
    ordinal integer NOT NULL,
    PRIMARY KEY (dataset, name)
);
CREATE TABLE IF NOT EXISTS {cat}.schema_versions (
    dataset text NOT NULL,
    version integer NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    changes jsonb NOT NULL,
    cause text,
    load_id bigint,
    PRIMARY KEY (dataset, version)
);
CREATE TABLE IF NOT EXISTS {cat}.loads (
    load_id bigserial PRIMARY KEY,
    dataset text NOT NULL,
    stream text,
    batch_id bigint,
    files jsonb NOT NULL DEFAULT '[]',
    rows_in bigint NOT NULL DEFAULT 0,
    rows_loaded bigint NOT NULL DEFAULT 0,
    rows_quarantined bigint NOT NULL DEFAULT 0,
    duplicates_removed bigint NOT NULL DEFAULT 0,
    files_rejected integer NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    status text NOT NULL,
    error text,
    UNIQUE (stream, batch_id)
);
CREATE TABLE IF NOT EXISTS {cat}.quarantine (
    id bigserial PRIMARY KEY,
    load_id bigint NOT NULL,
    dataset text NOT NULL,
    file text,
    line bigint,
    column_name text,
    raw_value text,
    reason text NOT NULL,
    record jsonb,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS quarantine_dataset_load_idx ON {cat}.quarantine (dataset, load_id);
CREATE INDEX IF NOT EXISTS loads_dataset_idx ON {cat}.loads (dataset, load_id);
-- Datasets loaded before column statistics existed get them recomputed from the table once.
ALTER TABLE {cat}.datasets ADD COLUMN IF NOT EXISTS stats_stale boolean NOT NULL DEFAULT true;
ALTER TABLE {cat}.datasets ALTER COLUMN stats_stale SET DEFAULT false;
ALTER TABLE {cat}.columns
    ADD COLUMN IF NOT EXISTS null_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS non_null_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS distinct_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS distinct_estimated boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS min_value text,
    ADD COLUMN IF NOT EXISTS max_value text,
    ADD COLUMN IF NOT EXISTS value_sum numeric,
    ADD COLUMN IF NOT EXISTS top_values jsonb DEFAULT '{{}}',
    ADD COLUMN IF NOT EXISTS sketch_drift bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS stats_updated_at timestamptz;
COMMENT ON COLUMN {cat}.columns.distinct_count IS
    'Exact when distinct_estimated is false (low-cardinality columns keep exact value counts); otherwise a '
    'HyperLogLog estimate (2^14 registers, about 0.8% standard error)';
COMMENT ON COLUMN {cat}.columns.min_value IS 'Smallest value; for text columns the shortest length';
COMMENT ON COLUMN {cat}.columns.max_value IS 'Largest value; for text columns the longest length';
COMMENT ON COLUMN {cat}.columns.top_values IS 'value -> rows, while the column has at most 50 distinct values';
CREATE TABLE IF NOT EXISTS {cat}.column_hll (
    dataset text NOT NULL,
    column_name text NOT NULL,
    registers bytea NOT NULL,
    PRIMARY KEY (dataset, column_name)
);
COMMENT ON TABLE {cat}.column_hll IS
    'HyperLogLog sketch per column: 2^14 one-byte registers, each the highest rank (leading zeros + 1 of '
    'the 50 hash bits left after the 14 that pick the register) of the values hashed into it';
ALTER TABLE {cat}.datasets
    ADD COLUMN IF NOT EXISTS description text,
    ADD COLUMN IF NOT EXISTS description_config text,
    ADD COLUMN IF NOT EXISTS key_candidates jsonb NOT NULL DEFAULT '[]';
ALTER TABLE {cat}.columns
    ADD COLUMN IF NOT EXISTS semantic_counts jsonb,
    ADD COLUMN IF NOT EXISTS semantic_type text,
    ADD COLUMN IF NOT EXISTS semantic_confidence double precision,
    ADD COLUMN IF NOT EXISTS pii text,
    ADD COLUMN IF NOT EXISTS is_unique boolean,
    ADD COLUMN IF NOT EXISTS sample_found jsonb,
    ADD COLUMN IF NOT EXISTS sample_values jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN IF NOT EXISTS description text,
    ADD COLUMN IF NOT EXISTS description_config text;
COMMENT ON COLUMN {cat}.columns.semantic_counts IS 'semantic type -> non-null values that pass its test';
COMMENT ON COLUMN {cat}.columns.sample_found IS 'bottom-5 sample as [hash, value] pairs, unmasked; shown only masked';
COMMENT ON COLUMN {cat}.columns.description_config IS 'the configured description last applied';
CREATE TABLE IF NOT EXISTS {cat}.column_links (
    dataset text NOT NULL,
    column_name text NOT NULL,
    ref_dataset text NOT NULL,
    ref_column text NOT NULL,
    containment double precision NOT NULL,
    method text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, column_name, ref_dataset, ref_column)
);
CREATE INDEX IF NOT EXISTS column_links_ref_idx ON {cat}.column_links (ref_dataset);
COMMENT ON TABLE {cat}.column_links IS
    'Join candidates: dataset.column_name holds values of the key ref_dataset.ref_column; containment is the '
    'share of its distinct values found there, exact or from HyperLogLog sketches (method)';
CREATE OR REPLACE VIEW {cat}.dataset_catalog AS
    SELECT name AS dataset, source, table_schema || '.' || table_name AS table_name, mode, primary_key,
           created_at, last_loaded_at, schema_version, row_count, quarantined_rows
      FROM {cat}.datasets;
CREATE OR REPLACE VIEW {cat}.column_catalog AS
    SELECT dataset, name AS column_name, source_name, type, nullable, ordinal, null_count, non_null_count,
           distinct_count, distinct_estimated,
           CASE type WHEN 'text' THEN 'length' WHEN 'jsonb' THEN NULL ELSE 'value' END AS min_max_of,
           min_value, max_value,
           CASE WHEN non_null_count > 0 AND value_sum IS NOT NULL
                THEN (value_sum / non_null_count)::double precision END AS mean,
           CASE WHEN pii IS NULL THEN top_values END AS top_values, stats_updated_at,
           semantic_type, semantic_confidence, pii, COALESCE(is_unique, false) AS "unique", description, sample_values
      FROM {cat}.columns;
CREATE OR REPLACE VIEW {cat}.key_candidates AS
    SELECT d.name AS dataset, k.rank, ARRAY(SELECT jsonb_array_elements_text(k.cols)) AS columns
      FROM {cat}.datasets d, jsonb_array_elements(d.key_candidates) WITH ORDINALITY k(cols, rank);
CREATE OR REPLACE VIEW {cat}.join_candidates AS
    SELECT dataset, column_name, ref_dataset AS references_dataset, ref_column AS references_column, containment,
           method, updated_at
      FROM {cat}.column_links;
CREATE OR REPLACE VIEW {cat}.load_history AS
    SELECT load_id, dataset, stream, batch_id, files, rows_in, rows_loaded, rows_quarantined, duplicates_removed,
           files_rejected, started_at, finished_at, finished_at - started_at AS duration, status, error
      FROM {cat}.loads;
CREATE OR REPLACE VIEW {cat}.schema_history AS
    SELECT dataset, version, changed_at, changes, cause, load_id FROM {cat}.schema_versions;
-- Up to catalog 4, floating-point columns were sketched hashed as numeric: their sketches go, and
-- their datasets' statistics are recomputed from the table with the next load.
WITH old_sketches AS (
    DELETE FROM {cat}.column_hll h USING {cat}.columns c
     WHERE obj_description({datasets}::regclass, 'pg_class') IN
           ('dataops catalog 2', 'dataops catalog 3', 'dataops catalog 4')
       AND c.dataset = h.dataset AND c.name = h.column_name AND c.type IN ('real', 'double precision')
    RETURNING h.dataset)
UPDATE {cat}.datasets SET stats_stale = true WHERE name IN (SELECT dataset FROM old_sketches);
-- Up to catalog 5, numerics were sketched by PostgreSQL's numeric hash alone, which leaves out the
-- sign (x and -x were one value to a sketch): their sketches are rebuilt the same way.
WITH old_sketches AS (
    DELETE FROM {cat}.column_hll h USING {cat}.columns c
     WHERE obj_description({datasets}::regclass, 'pg_class') IN
           ('dataops catalog 2', 'dataops catalog 3', 'dataops catalog 4', 'dataops catalog 5')
       AND c.dataset = h.dataset AND c.name = h.column_name AND c.type = 'numeric'
    RETURNING h.dataset)
UPDATE {cat}.datasets SET stats_stale = true WHERE name IN (SELECT dataset FROM old_sketches);
COMMENT ON TABLE {cat}.datasets IS {version};
"""
CATALOG_VERSION = "dataops catalog 6"


def ensure_catalog(dsn: str, catalog_schema: str, table_schema: str) -> None:
    """Create the catalog schema and tables, and the dataset schema, if missing (idempotent)."""
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            # The DDL takes exclusive locks on the catalog tables: skip it when the catalog is current,
            # so that `dataops ingest` or a second start never queues behind running loads.
            cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')",
                        (sql.Identifier(catalog_schema, "datasets").as_string(cur),))
            if cur.fetchone()[0] != CATALOG_VERSION:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('dataops.catalog'))")
                datasets = sql.Literal(sql.Identifier(catalog_schema, "datasets").as_string(cur))
                cur.execute(sql.SQL(CATALOG_DDL).format(cat=sql.Identifier(catalog_schema), datasets=datasets,
                                                        version=sql.Literal(CATALOG_VERSION)))
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table_schema)))
    finally:
        conn.close()


@dataclasses.dataclass
class MergePlan:
    """What the driver merges in one transaction."""

    dataset: str
    source: str
    table_schema: str
    table: str
    catalog_schema: str
    mode: str
    primary_key: tuple
    hints: dict
    indexes: list
    partition_by: str | None
    policy: str  # on_schema_change: evolve | rescue | fail
    stream: str
    batch_id: int
    reports: list  # StageReport, staged and rejected
    stage_schema: str
    true_tokens: tuple = ()
    # Rejected reports whose rows exist only in their staging tables (endpoint records, which have no
    # file to keep in _rejected/): their rows go to quarantine with the rejection's reason.
    quarantine_rejected: bool = False
    # Rejected inputs that stay where they are (objects in a bucket): each gets a quarantine row
    # naming the input and the reason, besides its entry in the load history.
    record_rejections: bool = False
    # A one-off load (`dataops ingest`, maybe with another mode): an existing dataset's catalog row
    # keeps the mode, key and source the daemon loads it with.
    one_off: bool = False
    # Endpoint records: a field that is null wherever it is not an object (``owner`` beside
    # ``owner__login``) adds no column.
    json_records: bool = False
    on_phase: object = None  # called with "catalog" when the rows are in and the statistics begin (progress)
    description: str | None = None  # configured descriptions (datasets.<name>.description, column_descriptions)
    column_descriptions: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MergeResult:
    load_id: int
    replayed: bool = False
    rows_in: int = 0
    loaded: int = 0
    inserted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    files: list = dataclasses.field(default_factory=list)  # [{"name", "path", "status", ...}]
    schema_changes: list = dataclasses.field(default_factory=list)


def previous_load(cur, catalog_schema: str, stream: str, batch_id: int) -> MergeResult | None:
    """The committed load of (stream, batch) if there is one: a replayed batch must write nothing."""
    cur.execute(sql.SQL("SELECT load_id, files, rows_in, rows_loaded, rows_quarantined, duplicates_removed "
                        "FROM {}.loads WHERE stream = %s AND batch_id = %s AND status = 'committed'")
                .format(sql.Identifier(catalog_schema)), (stream, batch_id))
    row = cur.fetchone()
    if row is None:
        return None
    return MergeResult(load_id=row[0], replayed=True, files=row[1], rows_in=row[2], loaded=row[3],
                       quarantined=row[4], duplicates=row[5])


def merge(dsn: str, plan: MergePlan, sessions=None) -> MergeResult:
    """Commit a staged batch: DDL, rows, quarantine, load history and ledger in one transaction.

    ``sessions`` (``add_backend(pid)`` / ``remove_backend(pid)``) learns the transaction's backend
    while it runs, so that a shutdown can terminate it.
    """
    try:
        conn = connect(dsn)
    except psycopg2.Error as exc:
        raise classify_error(exc, f"dataset {plan.dataset}: loading batch {plan.batch_id}") from exc
    pid = conn.get_backend_pid()
    if sessions is not None:
        sessions.add_backend(pid)
    try:
        with conn, conn.cursor() as cur:
            return _merge(cur, plan, dsn)
    except psycopg2.Error as exc:
        raise classify_error(exc, f"dataset {plan.dataset}: loading batch {plan.batch_id}") from exc
    except SchemaError as exc:  # the batch's columns cannot make the table (e.g. a text partition key)
        raise BatchDataError(f"dataset {plan.dataset}: loading batch {plan.batch_id}: {exc}") from exc
    finally:
        if sessions is not None:
            sessions.remove_backend(pid)
        conn.close()


def _merge(cur, plan: MergePlan, dsn: str) -> MergeResult:
    cat = sql.Identifier(plan.catalog_schema)
    # A batch merge is one large statement: hash aggregation in memory, no JIT compile per batch.
    cur.execute("SET LOCAL work_mem = '256MB'; SET LOCAL TimeZone = 'UTC'; SET LOCAL jit = off")
    cur.execute(sql.SQL("INSERT INTO {}.loads (dataset, stream, batch_id, status) VALUES (%s, %s, %s, 'running') "
                        "ON CONFLICT (stream, batch_id) DO NOTHING RETURNING load_id").format(cat),
                (plan.dataset, plan.stream, plan.batch_id))
    row = cur.fetchone()
    if row is None:
        previous = previous_load(cur, plan.catalog_schema, plan.stream, plan.batch_id)
        if previous is None:
            raise SinkError(f"dataset {plan.dataset}: batch {plan.batch_id} of {plan.stream} is recorded "
                            f"but not committed")
        return previous
    load_id = row[0]
    # Locks the dataset's catalog row: loads of one dataset (daemon, `dataops ingest`) serialize here.
    update = ("name = EXCLUDED.name" if plan.one_off else
              "mode = EXCLUDED.mode, primary_key = EXCLUDED.primary_key, source = EXCLUDED.source")
    cur.execute(sql.SQL(
        "INSERT INTO {}.datasets (name, source, table_schema, table_name, mode, primary_key) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET " + update + " "
        "RETURNING schema_version, row_count, stats_stale").format(cat),
        (plan.dataset, plan.source, plan.table_schema, plan.table, plan.mode, list(plan.primary_key)))
    schema_version, prior_rows, stats_stale = cur.fetchone()
    staged = [r for r in plan.reports if r.status == "staged"]
    result = MergeResult(load_id=load_id)
    existing = table_columns(cur, plan.table_schema, plan.table)
    columns, sources, changes = _plan_columns(plan, existing, staged)
    target = sql.Identifier(plan.table_schema, plan.table)
    staged_rows = sum(r.staged_rows for r in staged)
    # A table this transaction creates gets its primary key after the rows are in: one sorted index
    # build instead of a million index insertions (no one else sees the table before the commit).
    defer_key = bool(plan.primary_key and staged_rows and not plan.partition_by
                     and any(c["change"] == "create" for c in changes))
    if changes:
        _apply_ddl(cur, plan, target, existing, columns, changes, defer_key)
        schema_version += 1
        result.schema_changes = changes
        cur.execute(sql.SQL("INSERT INTO {}.schema_versions (dataset, version, changes, cause, load_id) "
                            "VALUES (%s, %s, %s, %s, %s)").format(cat),
                    (plan.dataset, schema_version, json.dumps(changes),
                     ", ".join(r.name for r in staged), load_id))
        _record_columns(cur, plan, columns, sources)
    loaded = inserted = 0
    widened = [c["column"] for c in changes if c["change"] == "widen"]
    if staged_rows:
        source = _source_query(plan, staged, columns)
        # What the stage tasks computed for the catalog; the side sessions scan only the other columns.
        summary = batch_summary(staged, columns)
        side = _SideSketches(dsn, source, {n: k for n, k in columns.items() if not summary.covers(n)}, staged_rows)
        try:
            loaded, inserted, delta = _write(cur, plan, target, source, columns, prior_rows, load_id, defer_key,
                                             staged_rows, side)
            if delta.staged_values:
                delta.batch_sketches = summary.registers()
                if side.sketches is not None:
                    delta.batch_sketches.update(side.sketches.result())
            if delta.staged_rows:
                delta.batch_aggregates = summary.aggregates()
                delta.batch_value_counts = summary.value_counts()
                if side.sketches is not None:
                    delta.batch_aggregates.update(side.sketches.aggregates() or {})
                    delta.batch_value_counts = stats.join_value_counts(delta.batch_value_counts,
                                                                       side.sketches.value_counts())
        finally:
            side.cancel()
        delta.widened, delta.recompute = widened, stats_stale
        if plan.on_phase is not None:
            plan.on_phase("catalog")
        stats.apply(cur, cat, plan.dataset, target, columns, delta)
        profile.apply(cur, cat, plan.dataset, target, columns, delta, plan.primary_key)
        stats_stale = False
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(*batch_tables(plan, load_id)))
    elif changes:
        # New columns are null in every existing row; widened columns are recomputed.
        delta = stats.Delta(added=sql.SQL("(SELECT {} LIMIT 0)").format(_null_row(columns)), rows_after=prior_rows,
                            widened=widened, recompute=stats_stale)
        stats.apply(cur, cat, plan.dataset, target, columns, delta)
        profile.apply(cur, cat, plan.dataset, target, columns, delta, plan.primary_key)
        stats_stale = False
    for r in staged:
        if r.quarantined_rows:
            cur.execute(sql.SQL(
                "INSERT INTO {}.quarantine (load_id, dataset, file, line, column_name, raw_value, reason, record) "
                "SELECT %s, %s, %s, line, column_name, raw_value, reason, record FROM {} ORDER BY line").format(
                cat, sql.Identifier(plan.stage_schema, r.quarantine_table)), (load_id, plan.dataset, r.name))
    if plan.record_rejections:
        for r in plan.reports:
            if r.status == "rejected":
                cur.execute(sql.SQL("INSERT INTO {}.quarantine (load_id, dataset, file, reason) VALUES (%s, %s, %s, %s)")
                            .format(cat), (load_id, plan.dataset, r.name, f"input rejected ({r.reason}): {r.detail}"))
    result.rows_in = sum(r.rows_in for r in staged)
    result.quarantined = sum(r.quarantined_rows for r in staged)
    if plan.quarantine_rejected:
        moved = _quarantine_rejected(cur, plan, load_id)
        result.rows_in += moved
        result.quarantined += moved
    result.loaded, result.inserted = loaded, inserted
    result.duplicates = staged_rows - loaded
    result.files = _file_entries(plan.reports)
    row_count_sql = {"append": "row_count + %s", "upsert": "row_count + %s", "overwrite": "%s"}[plan.mode]
    replaced = plan.mode == "overwrite" and not staged_rows
    cur.execute(sql.SQL(
        "UPDATE {}.datasets SET row_count = " + ("row_count" if replaced else row_count_sql) + ", "
        "quarantined_rows = quarantined_rows + %s, last_loaded_at = now(), schema_version = %s, stats_stale = %s "
        "WHERE name = %s").format(cat),
        (*(() if replaced else (inserted,)), result.quarantined, schema_version, stats_stale, plan.dataset))
    cur.execute(sql.SQL(
        "UPDATE {}.loads SET files = %s, rows_in = %s, rows_loaded = %s, rows_quarantined = %s, "
        "duplicates_removed = %s, files_rejected = %s, finished_at = clock_timestamp(), status = 'committed' "
        "WHERE load_id = %s").format(cat),
        (json.dumps(result.files), result.rows_in, loaded, result.quarantined, result.duplicates,
         sum(1 for f in result.files if f["status"] == "rejected"), load_id))
    profile.apply_descriptions(cur, cat, plan.dataset, plan.description, plan.column_descriptions)
    drop_stage_tables(cur, plan.stage_schema, plan.reports)
    return result


def _quarantine_rejected(cur, plan: MergePlan, load_id: int) -> int:
    """Move every row of the rejected reports' staging tables into quarantine; return how many."""
    cat = sql.Identifier(plan.catalog_schema)
    moved = 0
    for r in plan.reports:
        if r.status != "rejected":
            continue
        if not r.stage_table or not r.columns:
            # Nothing staged to move: failing the batch keeps the records at the source for a retry.
            raise SinkError(f"dataset {plan.dataset}: {r.detail or r.name}; the records could not be staged, "
                            f"so the batch is retried rather than losing them")
        # jsonb_object takes two arrays: no limit on the number of columns (function arguments have one).
        record = sql.SQL("jsonb_object(ARRAY[{}]::text[], ARRAY[{}]::text[])").format(
            sql.SQL(", ").join(sql.Literal(c[0]) for c in r.columns),
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(f"c{i}")) for i in range(len(r.columns))))
        cur.execute(sql.SQL(
            "INSERT INTO {cat}.quarantine (load_id, dataset, file, line, reason, record) "
            "SELECT %s, %s, %s, _ord, %s, {rec} FROM {stage} ORDER BY _ord").format(
            cat=cat, rec=record, stage=sql.Identifier(plan.stage_schema, r.stage_table)),
            (load_id, plan.dataset, r.name, r.detail))
        moved += cur.rowcount
        if r.quarantine_table:
            cur.execute(sql.SQL(
                "INSERT INTO {}.quarantine (load_id, dataset, file, line, column_name, raw_value, reason, record) "
                "SELECT %s, %s, %s, line, column_name, raw_value, reason, record FROM {} ORDER BY line").format(
                cat, sql.Identifier(plan.stage_schema, r.quarantine_table)), (load_id, plan.dataset, r.name))
            moved += cur.rowcount
    return moved


def _file_entries(reports: Sequence[StageReport]) -> list[dict]:
    """One entry per file (a large file's parts add up), in batch order."""
    entries: dict[int, dict] = {}
    for report in sorted(reports, key=lambda r: r.seq):
        entry = entries.setdefault(report.seq, {"name": report.name, "path": report.path, "status": report.status})
        if report.status == "rejected":
            entry.update(status="rejected", reason=report.reason, detail=report.detail)
            if report.diff:
                entry["diff"] = report.diff
            continue
        entry["rows_in"] = entry.get("rows_in", 0) + report.rows_in
        entry["staged"] = entry.get("staged", 0) + report.staged_rows
        entry["quarantined"] = entry.get("quarantined", 0) + report.quarantined_rows
        entry["parts"] = entry.get("parts", 0) + 1
        entry.update(encoding=report.encoding, delimiter=report.delimiter)
    return list(entries.values())


def stage_names(token: str, seq: int | str) -> tuple[str, str]:
    return f"stg_{token}_{seq}", f"stgq_{token}_{seq}"


def drop_stale_stages(dsn: str, stage_schema: str, older_than: float) -> int:
    """Drop staging tables left by batches that crashed (their token starts with the creation time)."""
    import time

    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename ~ '^stgq?_[0-9a-f]{8}'",
                        (stage_schema,))
            cutoff = time.time() - older_than
            stale = [name for (name,) in cur.fetchall() if int(name.split("_")[1][:8], 16) < cutoff]
            if stale:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                    sql.SQL(", ").join(sql.Identifier(stage_schema, n) for n in stale)))
            return len(stale)
    finally:
        conn.close()


def drop_stage_tables(cur, stage_schema: str, reports: Sequence[StageReport]) -> None:
    names = [sql.Identifier(stage_schema, n) for r in reports for n in (r.stage_table, r.quarantine_table) if n]
    if names:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.SQL(", ").join(names)))


def _plan_columns(plan: MergePlan, existing: dict[str, str], staged: list[StageReport]):
    """Final column types for the batch, and the DDL changes (create / add / widen) they need."""
    batch_types: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    for report in staged:
        for name, source_name, kind, _ in report.columns:
            batch_types[name] = join(batch_types[name], kind) if batch_types.get(name) else kind
            sources.setdefault(name, source_name)
    if plan.json_records:
        _drop_null_objects(batch_types, existing)
    columns = dict(existing)
    changes: list[dict] = []
    if not existing:
        if not batch_types:
            return columns, sources, changes
        for name, kind in batch_types.items():
            columns[name] = plan.hints.get(name) or kind or "text"
        if plan.policy == "rescue":
            columns[RESCUED] = "jsonb"
        changes.append({"change": "create", "columns": dict(columns)})
        return columns, sources, changes
    if plan.policy == "rescue" and RESCUED not in existing:
        columns[RESCUED] = "jsonb"
        changes.append({"change": "add_column", "column": RESCUED, "type": "jsonb"})
    if plan.policy != "evolve":
        return columns, sources, changes  # the table's schema does not change
    for name, kind in batch_types.items():
        if name not in existing:
            columns[name] = plan.hints.get(name) or kind or "text"
            changes.append({"change": "add_column", "column": name, "type": columns[name]})
        elif (kind and kind != existing[name] and kind in SAFE_WIDENING.get(existing[name], ())
              and name != plan.partition_by):  # PostgreSQL cannot alter a partition key's type
            columns[name] = kind
            changes.append({"change": "widen", "column": name, "from": existing[name], "to": kind})
    return columns, sources, changes


def _drop_null_objects(batch_types: dict[str, str | None], existing: dict[str, str]) -> None:
    """Forget new columns that hold only NULLs where the batch or the table has their nested fields:
    ``{"owner": null}`` beside ``{"owner": {"login": ...}}`` is an absent owner, not a column."""
    names = [*batch_types, *existing]
    for name, kind in list(batch_types.items()):
        if kind is None and name not in existing and any(n.startswith(name + "__") for n in names):
            del batch_types[name]


def _type_sql(kind: str) -> sql.Composable:
    if kind not in PG_TYPES:
        raise SchemaError(f"unsupported type {kind!r}")
    return sql.SQL(kind)


def _apply_ddl(cur, plan: MergePlan, target, existing, columns, changes, defer_key: bool = False) -> None:
    for change in changes:
        if change["change"] == "create":
            defs = [sql.SQL("{} {}").format(sql.Identifier(c), _type_sql(t)) for c, t in columns.items()]
            missing_key = [k for k in plan.primary_key if k not in columns]
            if missing_key:
                raise SchemaError(f"dataset {plan.dataset}: primary key column(s) {missing_key} not in the data")
            if plan.primary_key and not defer_key:
                defs.append(sql.SQL("PRIMARY KEY ({})").format(
                    sql.SQL(", ").join(map(sql.Identifier, plan.primary_key))))
            suffix = sql.SQL("")
            if plan.partition_by:
                if columns.get(plan.partition_by) not in ("date", "timestamp", "timestamptz"):
                    raise SchemaError(f"dataset {plan.dataset}: partition_by column {plan.partition_by} is "
                                      f"{columns.get(plan.partition_by, 'missing')}, not a date or timestamp")
                suffix = sql.SQL(" PARTITION BY RANGE ({})").format(sql.Identifier(plan.partition_by))
            cur.execute(sql.SQL("CREATE TABLE {} ({}){}").format(target, sql.SQL(", ").join(defs), suffix))
            if plan.partition_by:
                cur.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(
                    sql.Identifier(plan.table_schema, normalize_identifier(plan.table + "_default")), target))
        elif change["change"] == "add_column":
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                target, sql.Identifier(change["column"]), _type_sql(change["type"])))
        elif change["change"] == "widen":
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
                target, sql.Identifier(change["column"]), _type_sql(change["to"])))
    for index_columns in plan.indexes:
        if all(c in columns for c in index_columns):
            name = normalize_identifier("_".join([plan.table, *index_columns, "idx"]))
            cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                sql.Identifier(name), target, sql.SQL(", ").join(map(sql.Identifier, index_columns))))


def _record_columns(cur, plan: MergePlan, columns: dict[str, str], sources: dict[str, str]) -> None:
    cat = sql.Identifier(plan.catalog_schema)
    for ordinal, (name, kind) in enumerate(columns.items(), start=1):
        cur.execute(sql.SQL(
            "INSERT INTO {}.columns (dataset, name, source_name, type, nullable, ordinal) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (dataset, name) DO UPDATE SET type = EXCLUDED.type, "
            "ordinal = EXCLUDED.ordinal, source_name = COALESCE({}.columns.source_name, EXCLUDED.source_name)"
        ).format(cat, cat), (plan.dataset, name, sources.get(name, name), kind, name not in plan.primary_key, ordinal))


def _cast(ident: sql.Composable, kind: str, true_tokens: Sequence[str]) -> sql.Composable:
    """A text staging value as ``kind``."""
    if kind == "text":
        return ident
    if kind == "boolean":
        return sql.SQL("CASE WHEN {c} IS NULL THEN NULL WHEN lower({c}) = ANY({t}) THEN true ELSE false END").format(
            c=ident, t=sql.Literal([t.lower() for t in true_tokens]))
    return sql.SQL("{}::{}").format(ident, _type_sql(kind))


def _source_query(plan: MergePlan, staged: list[StageReport], columns: dict[str, str]) -> sql.Composable:
    """The batch's rows, typed: a UNION ALL over the files' staging tables, columns aligned by name."""
    parts = []
    for report in staged:
        if not report.staged_rows:
            continue
        positions = {c[0]: i for i, c in enumerate(report.columns)}
        select = [sql.SQL("{} AS _seq, _ord").format(sql.Literal(report.seq))]
        for name, kind in columns.items():
            if name not in positions:
                select.append(sql.SQL("NULL::{} AS {}").format(_type_sql(kind), sql.Identifier(name)))
                continue
            value = sql.Identifier(f"c{positions[name]}")
            staged_as = report.staged_types[positions[name]] if report.staged_types else "text"
            if staged_as != "text":
                # A typed staging column: as it is, or widened along its chain (integer -> numeric, ...).
                if staged_as != kind and (staged_as, kind) not in EXACT_CASTS:
                    raise SinkError(f"dataset {plan.dataset}: {report.name} staged {name} as {staged_as}, "
                                    f"which does not widen to {kind}")
                select.append(sql.SQL("{} AS {}").format(
                    value if staged_as == kind else sql.SQL("{}::{}").format(value, _type_sql(kind)),
                    sql.Identifier(name)))
                continue
            date_format = report.columns[positions[name]][3]
            if date_format and kind in ("date", "timestamp", "timestamptz"):
                # Values in the file's configured format become ISO text; ISO values pass through.
                value = sql.SQL("CASE WHEN {v} ~ '^\\d{{4}}-\\d{{2}}-\\d{{2}}' THEN {v} "
                                "ELSE to_char(to_timestamp({v}, {f}), 'YYYY-MM-DD HH24:MI:SS.US') END").format(
                    v=value, f=sql.Literal(pg_format(date_format)))
            select.append(sql.SQL("{} AS {}").format(_cast(value, kind, plan.true_tokens), sql.Identifier(name)))
        parts.append(sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(select), sql.Identifier(plan.stage_schema, report.stage_table)))
    return sql.SQL("SELECT _seq, _ord, {} FROM ({}) raw").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(" UNION ALL ").join(parts))


def _null_row(columns: dict[str, str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("NULL::{} AS {}").format(_type_sql(t), sql.Identifier(c))
                              for c, t in columns.items())


def _ensure_partitions(cur, plan: MergePlan, target, rows, columns) -> None:
    key = sql.Identifier(plan.partition_by)
    cur.execute(sql.SQL("SELECT DISTINCT date_trunc('month', {k})::date FROM {s} src WHERE {k} IS NOT NULL").format(
        k=key, s=rows))
    for (month,) in cur.fetchall():
        name = normalize_identifier(f"{plan.table}_p{month:%Y%m}")
        cur.execute("SELECT to_regclass(%s)", (sql.Identifier(plan.table_schema, name).as_string(cur),))
        if cur.fetchone()[0] is None:
            cur.execute(sql.SQL(
                "CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (%s) TO (%s::date + interval '1 month')").format(
                sql.Identifier(plan.table_schema, name), target), (month, month))


def batch_tables(plan: MergePlan, load_id: int) -> tuple[sql.Identifier, sql.Identifier]:
    """The merge's work tables: the batch's rows, and the old versions of the rows it replaces."""
    return (sql.Identifier(plan.stage_schema, f"load_{load_id}_rows"),
            sql.Identifier(plan.stage_schema, f"load_{load_id}_replaced"))


class BatchSummary:
    """The stage tasks' column summaries (:mod:`streaming.summaries`) of a batch's staged rows, as
    the catalog statistics take them: for each column, the pieces every task computed exactly for
    the type the column has in the table."""

    def __init__(self, columns: dict):
        self.columns = columns  # name -> streaming.summaries.ColumnSummary

    def covers(self, name: str) -> bool:
        """Whether the column needs no scan of the staged rows at all."""
        s = self.columns.get(name)
        return s is not None and s.exact >= {"aggregate", "values", "registers"}

    def registers(self) -> dict[str, bytearray]:
        return {n: bytearray(s.registers) for n, s in self.columns.items() if "registers" in s.exact}

    def aggregates(self) -> dict[str, tuple]:
        return {n: (s.count, s.lo, s.hi, s.total) for n, s in self.columns.items() if "aggregate" in s.exact}

    def value_counts(self) -> tuple[frozenset, list, set]:
        """(the columns counted exactly, their (column, text, rows), the columns past the value limit)."""
        known = {n: s for n, s in self.columns.items() if "values" in s.exact}
        rows = [(n, text, count) for n, s in known.items() if s.values is not None for text, count in s.values.items()]
        return frozenset(known), rows, {n for n, s in known.items() if s.values is None}


def batch_summary(staged: list[StageReport], columns: dict[str, str]) -> BatchSummary:
    """The staged reports' summaries merged per column, where every input with rows has them and
    read the column as the type the table holds (integers of any width hash alike)."""
    from streaming import summaries

    inputs = [r for r in staged if r.staged_rows]
    if not inputs or any(r.summaries is None for r in inputs):
        return BatchSummary({})
    out = {}
    for name, kind in columns.items():
        merged = summaries.merge([r.summaries[name] for r in inputs if name in r.summaries])
        if merged is None:
            continue
        same = merged.kind == kind or (merged.kind in summaries.INTEGERS and kind in summaries.INTEGERS)
        if same and merged.exact:
            out[name] = merged
    return BatchSummary(out)


class _SideSketches:
    """The catalog's sketches of a large batch, computed from its staged rows on other sessions while
    the merge writes (:class:`stats.BatchSketches`), once :meth:`start` finds them worth it."""

    def __init__(self, dsn: str, source: sql.Composable, columns: dict[str, str], rows: int):
        self.dsn, self.source, self.columns, self.rows = dsn, source, columns, rows
        self.sketches: stats.BatchSketches | None = None

    def start(self) -> None:
        if self.sketches is None and self.columns and self.rows >= stats.SIDE_SKETCH_ROWS:
            self.sketches = stats.BatchSketches(self.dsn, self.source, self.columns, self.rows)

    def cancel(self) -> None:
        if self.sketches is not None:
            self.sketches.cancel()


def _write(cur, plan: MergePlan, target, source, columns: dict[str, str], prior_rows: int, load_id: int,
           defer_key: bool = False, staged_rows: int | None = None, side: _SideSketches | None = None):
    """Run the mode's set-based statements; return (rows written, rows newly inserted, stats delta).

    The batch's typed, deduplicated rows are materialized once: the insert reads them, and so do
    the catalog statistics (with, for upserts, the old versions of the rows the batch replaces).
    Staged rows known to be distinct that meet no row of the table go in straight from staging.
    The work tables are UNLOGGED tables of this transaction (dropped before it commits, gone with
    it if it aborts) rather than temporary ones, because PostgreSQL scans only those with parallel
    workers.
    """
    BATCH, REPLACED = batch_tables(plan, load_id)
    if side is not None and (plan.mode != "upsert" or defer_key):
        side.start()  # an upsert into a table starts them once it knows how many rows change (below)
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    key = sql.SQL(", ").join(map(sql.Identifier, plan.primary_key))
    distinct = _distinct_rows([r for r in plan.reports if r.status == "staged"], columns)
    # The table holds no row the batch could meet: it is new (this transaction made it), or replaced.
    empty = defer_key or plan.mode == "overwrite"
    # No two staged rows are equal (nor share a key), and none can meet a row of the table (there is
    # no key, or the table is new or replaced): they go in as they are, the catalog reads them staged.
    direct = bool(distinct) and not plan.partition_by and (
        not plan.primary_key or (empty and tuple(plan.primary_key) == (distinct,)))
    matches = sql.SQL(" AND ").join(sql.SQL("t.{c} = b.{c}").format(c=sql.Identifier(c)) for c in plan.primary_key)
    # Rows equal to the table's row of their key are left out as the batch is copied (an anti-join),
    # rather than copied and deleted: possible where no two staged rows share a key.
    folded = False
    unchanged = 0
    if direct:
        added = sql.SQL("({})").format(source)
        same_values = same_rows = True
    else:
        if distinct and tuple(plan.primary_key) == (distinct,):
            rows = sql.SQL("SELECT {n} FROM ({s}) b").format(n=names, s=source)  # each key once already
            if plan.mode == "upsert":
                rows = sql.SQL("{} WHERE NOT EXISTS (SELECT 1 FROM {t} t WHERE {m} AND {same})").format(
                    rows, t=target, m=matches, same=_same_row(columns, plan.primary_key))
                folded = True
        elif plan.primary_key:
            # Upsert keeps the last occurrence of a key in file order, append and overwrite the first.
            order = sql.SQL("_seq DESC, _ord DESC" if plan.mode == "upsert" else "_seq, _ord")
            rows = sql.SQL("SELECT DISTINCT ON ({k}) {n} FROM ({s}) src ORDER BY {k}, {o}").format(
                k=key, n=names, s=source, o=order)
        else:
            rows = sql.SQL("SELECT DISTINCT {n} FROM ({s}) src").format(n=names, s=source)
        cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} AS {}").format(BATCH, rows))
        added, batch_rows = BATCH, cur.rowcount
        # Whether the added rows hold exactly the values of the staged ones: only exact duplicates (which
        # repeat values kept anyway) were left out, or rows equal to the table's (whose values it has).
        if folded:
            unchanged = staged_rows - batch_rows
        same_values = not plan.primary_key or batch_rows + unchanged == staged_rows
        same_rows = batch_rows + unchanged == staged_rows
        if batch_rows > 10_000 and plan.primary_key:
            # Only the key joins the table: its statistics plan those joins. Other columns are only scanned
            # and grouped, which without statistics PostgreSQL spreads over parallel workers as whole scans.
            cur.execute(sql.SQL("ANALYZE {} ({})").format(BATCH, key))
        if plan.partition_by:
            _ensure_partitions(cur, plan, target, BATCH, columns)
    removed = None
    replaced = 0
    if plan.mode == "overwrite":
        cur.execute(sql.SQL("TRUNCATE {}").format(target))
    elif plan.mode == "upsert" and not direct:
        # A batch row equal to the table's row of its key changes nothing: it is neither written nor
        # counted in the catalog's deltas (a re-sent file with a few changed rows costs those rows).
        if not folded:
            cur.execute(sql.SQL("DELETE FROM {b} b USING {t} t WHERE {m} AND {same}").format(
                b=BATCH, t=target, m=matches, same=_same_row(columns, plan.primary_key)))
            unchanged = cur.rowcount
            batch_rows -= unchanged
        if side is not None and 2 * batch_rows >= (staged_rows or 0):
            # Most staged rows change the table: sketch them beside the rest of the merge. Otherwise the
            # catalog sketches the few changed rows from the batch table (a re-sent file costs what changed).
            side.start()
        cur.execute(sql.SQL("CREATE UNLOGGED TABLE {r} AS SELECT {tn} FROM {t} t "
                            "WHERE EXISTS (SELECT 1 FROM {b} b WHERE {m})").format(
            r=REPLACED, tn=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns),
            t=target, b=BATCH, m=matches))
        replaced, removed = cur.rowcount, REPLACED
    elif plan.primary_key and not direct:
        # Append with a primary key keeps the rows already loaded; batch rows with their keys are duplicates.
        cur.execute(sql.SQL("DELETE FROM {b} b WHERE EXISTS (SELECT 1 FROM {t} t WHERE {m})").format(
            b=BATCH, t=target, m=matches))
        batch_rows -= cur.rowcount
        same_values = same_values and not cur.rowcount
        same_rows = same_rows and not cur.rowcount
    conflict = sql.SQL("")
    if plan.mode == "upsert" and not defer_key:  # a new table holds no key the batch could meet
        # A key-only table still "updates" the key to itself, so every written row is counted.
        others = [c for c in columns if c not in plan.primary_key] or list(plan.primary_key[:1])
        conflict = sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(key, sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in others))
    cur.execute(sql.SQL("INSERT INTO {t} ({n}) SELECT {n} FROM {b} b{c}").format(t=target, n=names, b=added,
                                                                                  c=conflict))
    if direct:
        batch_rows = cur.rowcount
    if defer_key:
        cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(target, key))
    inserted = batch_rows - replaced
    rows_after = batch_rows if plan.mode == "overwrite" else prior_rows + inserted
    delta = stats.Delta(added=added, rows_after=rows_after, removed=removed, replaced_table=plan.mode == "overwrite",
                        key=tuple(plan.primary_key), staged_values=same_values, staged_rows=same_rows and not unchanged)
    return batch_rows + unchanged, inserted, delta


def _distinct_rows(staged: list[StageReport], columns: dict[str, str]) -> str | None:
    """The column no two of the staged rows share a value in, if the inputs show one: each found the
    same integer column strictly increasing (:attr:`StageReport.ascending`), over ranges that do not
    overlap, and the table holds it as a type that keeps integers apart."""
    spans = [r.ascending for r in staged if r.staged_rows]
    if not spans or None in spans or len({s[0] for s in spans}) != 1:
        return None
    name = spans[0][0]
    if columns.get(name) not in ("smallint", "integer", "bigint", "numeric", "text"):
        return None
    spans.sort(key=lambda s: s[1])
    return name if all(a[2] < b[1] for a, b in zip(spans, spans[1:])) else None


def _same_row(columns: dict[str, str], key: Sequence[str]) -> sql.Composable:
    """Whether batch row ``b`` holds what table row ``t`` of its key holds, as the table shows it:
    numerics of another scale, JSON written otherwise and ``-0`` differ although SQL holds them equal."""
    shown = {"numeric": ("{}", "scale({})"), "jsonb": ("{}::text",), "real": ("float4send({})",),
             "double precision": ("float8send({})",)}
    tests = []
    for name, kind in columns.items():
        if name in key:
            continue
        for value in shown.get(kind, ("{}",)):
            tests.append(sql.SQL("{} IS NOT DISTINCT FROM {}").format(
                sql.SQL(value).format(sql.SQL("b.{}").format(sql.Identifier(name))),
                sql.SQL(value).format(sql.SQL("t.{}").format(sql.Identifier(name)))))
    return sql.SQL(" AND ").join(tests) if tests else sql.SQL("true")


def refresh_catalog(dsn: str, catalog_schema: str, dataset: str) -> dict:
    """Recompute a dataset's row count, columns and every column statistic from its table.

    For tables edited by hand; loads of the dataset wait on its catalog row meanwhile.
    Returns ``{"dataset", "row_count", "columns"}``.

    Raises:
        SinkError: the dataset is not in the catalog or its table is gone.
    """
    cat = sql.Identifier(catalog_schema)
    conn = connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL work_mem = '256MB'")
            cur.execute(sql.SQL("SELECT table_schema, table_name, primary_key FROM {}.datasets WHERE name = %s "
                                "FOR UPDATE").format(cat), (dataset,))
            row = cur.fetchone()
            if row is None:
                raise SinkError(f"dataset {dataset}: not in the catalog")
            schema, table, key = row
            columns = table_columns(cur, schema, table)
            if not columns:
                raise SinkError(f"dataset {dataset}: table {schema}.{table} does not exist")
            target = sql.Identifier(schema, table)
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(target))
            rows = cur.fetchone()[0]
            cur.execute(sql.SQL("DELETE FROM {}.columns WHERE dataset = %s AND NOT name = ANY(%s)").format(cat),
                        (dataset, list(columns)))
            for ordinal, (name, kind) in enumerate(columns.items(), start=1):
                cur.execute(sql.SQL(
                    "INSERT INTO {}.columns (dataset, name, source_name, type, nullable, ordinal) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (dataset, name) DO UPDATE SET type = EXCLUDED.type, "
                    "ordinal = EXCLUDED.ordinal").format(cat), (dataset, name, name, kind, name not in key, ordinal))
            delta = stats.Delta(added=target, rows_after=rows, replaced_table=True)
            stats.apply(cur, cat, dataset, target, columns, delta)
            profile.apply(cur, cat, dataset, target, columns, delta, tuple(key))
            cur.execute(sql.SQL("UPDATE {}.datasets SET row_count = %s, stats_stale = false WHERE name = %s").format(cat),
                        (rows, dataset))
            return {"dataset": dataset, "row_count": rows, "columns": len(columns)}
    except psycopg2.Error as exc:
        raise classify_error(exc, f"dataset {dataset}: refreshing the catalog") from exc
    finally:
        conn.close()
