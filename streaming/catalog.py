"""Reading the metadata catalog: datasets, their columns, counts and load history."""

from __future__ import annotations

from psycopg2 import sql
from psycopg2.extras import RealDictCursor

from connectors import catalog_links, postgres, stats
from streaming import semantics
from streaming.config import Settings
from streaming.naming import normalize_dataset_name


def list_datasets(dsn: str, settings: Settings) -> list[dict]:
    cat = sql.Identifier(settings.postgres.catalog_schema)
    conn = postgres.connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
            if not _catalog_exists(cur, settings):
                return []
            cur.execute(sql.SQL(
                "SELECT name AS dataset, table_schema || '.' || table_name AS table, source, mode, primary_key, "
                "row_count, quarantined_rows, schema_version, created_at, last_loaded_at "
                "FROM {}.datasets ORDER BY name").format(cat))
            return [dict(r) for r in cur.fetchall()]
    finally:
        conn.close()


def show_dataset(dsn: str, settings: Settings, dataset: str) -> dict | None:
    """The catalog document of one dataset (``dataops catalog show --json``), or None."""
    cat = sql.Identifier(settings.postgres.catalog_schema)
    conn = postgres.connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
            if not _catalog_exists(cur, settings):
                return None
            cur.execute(sql.SQL(
                "SELECT name AS dataset, table_schema, table_name, source, mode, primary_key, row_count, "
                "quarantined_rows, schema_version, created_at, last_loaded_at, description, key_candidates "
                "FROM {}.datasets WHERE name = %s"
            ).format(cat), (normalize_dataset_name(dataset),))
            row = cur.fetchone()
            if row is None:
                return None
            doc = dict(row)
            doc["table"] = f"{doc['table_schema']}.{doc['table_name']}"
            cur.execute(sql.SQL(
                "SELECT name, source_name, type, nullable, ordinal, null_count, non_null_count, distinct_count, "
                "distinct_estimated, min_value, max_value, value_sum, top_values, semantic_type, semantic_confidence, pii, "
                "is_unique, description, sample_values FROM {}.columns "
                "WHERE dataset = %s ORDER BY ordinal").format(cat), (doc["dataset"],))
            doc["columns"] = [_column_doc(dict(c)) for c in cur.fetchall()]
            cur.execute(sql.SQL(
                "SELECT column_name, ref_dataset, ref_column, containment FROM {}.column_links WHERE dataset = %s "
                "ORDER BY column_name, ref_dataset, ref_column").format(cat), (doc["dataset"],))
            doc["join_candidates"] = [{"column": r["column_name"], "references": {
                "dataset": r["ref_dataset"], "column": r["ref_column"]}, "containment": r["containment"]}
                for r in cur.fetchall()]
            cur.execute(sql.SQL(
                "SELECT load_id, batch_id, rows_in, rows_loaded, rows_quarantined, duplicates_removed, "
                "files_rejected, started_at, finished_at, status FROM {}.loads WHERE dataset = %s "
                "ORDER BY load_id DESC LIMIT 10").format(cat), (doc["dataset"],))
            doc["recent_loads"] = [dict(r) for r in cur.fetchall()]
            return doc
    finally:
        conn.close()


def _column_doc(row: dict) -> dict:
    """A column's catalog entry as JSON: typed min/max, the mean, the most frequent values."""
    kind = row["type"]
    total = row.pop("value_sum")
    values = row.pop("top_values")
    row["min_max_of"] = stats.measures(kind)
    row["min"] = stats.json_bound(row.pop("min_value"), kind)
    row["max"] = stats.json_bound(row.pop("max_value"), kind)
    row["mean"] = float(total / row["non_null_count"]) if total is not None and row["non_null_count"] else None
    row["top_values"] = stats.top(values)
    row["unique"] = bool(row.pop("is_unique"))  # NULL: the column has no values yet
    if row["pii"] and row["top_values"]:
        row["top_values"] = [{**t, "value": semantics.mask(t["value"], row["pii"])} for t in row["top_values"]]
    return row


def refresh_dataset(dsn: str, settings: Settings, dataset: str) -> dict:
    """Recompute a dataset's catalog entry from its table (``dataops catalog refresh``)."""
    postgres.ensure_catalog(dsn, settings.postgres.catalog_schema, settings.postgres.schema_name)
    summary = postgres.refresh_catalog(dsn, settings.postgres.catalog_schema, normalize_dataset_name(dataset))
    catalog_links.refresh(dsn, settings.postgres.catalog_schema, summary["dataset"])
    return summary


def _catalog_exists(cur, settings: Settings) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL AS present",
                (sql.Identifier(settings.postgres.catalog_schema, "datasets").as_string(cur),))
    return cur.fetchone()["present"]


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A plain aligned text table for terminals."""
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "" for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
