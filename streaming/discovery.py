"""Finding and handing over datasets: ``catalog search``, ``catalog context`` and ``catalog describe``.

Reads the catalog documents of :mod:`streaming.catalog` (whose sample and frequent values of
personal-data columns are already masked); ranking and formatting are pure functions of them.
"""

from __future__ import annotations

import json
import re

import psycopg2
from psycopg2 import sql

from connectors import postgres
from streaming import catalog
from streaming.config import Settings
from streaming.errors import SinkError
from streaming.naming import normalize_dataset_name, normalize_identifier

# How much a match in each field counts; a match of the whole field scores above any partial one.
WEIGHTS = {"name": 1.0, "source_name": 0.8, "semantic_type": 0.8, "description": 0.7, "values": 0.6}
CONTEXT_SAMPLES = 3
CONTEXT_CHARS = 32
NUMBERS = ("smallint", "integer", "bigint", "numeric", "real", "double precision")


def documents(dsn: str, settings: Settings, names: list[str] | None = None) -> list[dict]:
    """Catalog documents of the named datasets (all when ``names`` is empty), by name.

    Raises:
        SinkError: a named dataset is not in the catalog.
    """
    known = [r["dataset"] for r in catalog.list_datasets(dsn, settings)]
    wanted = sorted({normalize_dataset_name(n) for n in names}) if names else known
    missing = [n for n in wanted if n not in known]
    if missing:
        raise SinkError(f"dataset {', '.join(missing)}: not in the catalog")
    return [catalog.show_dataset(dsn, settings, name) for name in wanted]


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", text.lower()) if w]


def _field_score(query: str, terms: list[str], text: str | None) -> float:
    if not text:
        return 0.0
    lowered = text.lower()
    if lowered == query or normalize_identifier(text) == normalize_identifier(query):
        return 1.0
    words = set(_words(lowered))
    return 0.9 * sum(1.0 if t in words else 0.5 if t in lowered else 0.0 for t in terms) / len(terms)


def _best(query: str, terms: list[str], fields: dict[str, list[str]]) -> tuple[float, str | None, str | None]:
    best = (0.0, None, None)
    for field, texts in fields.items():
        for text in texts:
            score = WEIGHTS[field] * _field_score(query, terms, text)
            if score > best[0]:
                best = (score, field, text)
    return best


def rank(docs: list[dict], text: str) -> list[dict]:
    """Datasets and columns matching ``text``, best first: ``{dataset, column, matched, score, text}``.

    A column's own best field decides its score; its dataset's name adds a little, so "customer
    email" ranks ``customers.email`` first. Values of personal-data columns are never searched.
    """
    query = text.strip().lower()
    terms = _words(query)
    if not terms:
        return []
    items = []
    for doc in docs:
        ds_fields = {"name": [doc["dataset"]], "source_name": [doc.get("source") or ""],
                     "description": [doc.get("description") or ""]}
        ds_score, ds_field, ds_text = _best(query, terms, ds_fields)
        if ds_field:
            items.append({"dataset": doc["dataset"], "column": None, "matched": ds_field, "score": round(ds_score, 3),
                          "text": ds_text})
        name_bonus = 0.25 * _field_score(query, terms, doc["dataset"])
        for col in doc["columns"]:
            values = [] if col["pii"] else [str(t["value"]) for t in col["top_values"] or []] + \
                [str(v) for v in col["sample_values"] or []]
            score, field, found = _best(query, terms, {
                "name": [col["name"]], "source_name": [col["source_name"] or ""],
                "semantic_type": [col["semantic_type"] or ""], "description": [col["description"] or ""],
                "values": values})
            if field:
                items.append({"dataset": doc["dataset"], "column": col["name"], "matched": field,
                              "score": round(score + name_bonus, 3), "text": found})
    items.sort(key=lambda i: (-i["score"], i["dataset"], i["column"] or ""))
    return items


def search(dsn: str, settings: Settings, text: str) -> list[dict]:
    """``dataops catalog search TEXT``: see :func:`rank`."""
    return rank(documents(dsn, settings), text)


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _range(col: dict) -> str | None:
    if col["min"] is None or col["min_max_of"] == "none" or col["type"] == "boolean":
        return None
    span = f"{_number(col['min'])}..{_number(col['max'])}"
    return f"length {span}" if col["min_max_of"] == "length" else span


def _clip(value: str) -> str:
    return value if len(value) <= CONTEXT_CHARS else value[:CONTEXT_CHARS - 1] + "…"


def column_facts(col: dict, rows: int) -> list[str]:
    """A column's profile as short phrases, in a fixed order."""
    facts = []
    if col["semantic_type"]:
        facts.append(col["semantic_type"])
    if col["pii"]:
        facts.append(f"PII {col['pii']}")
    facts.append(f"null {100 * col['null_count'] / rows:.3g}%" if rows else "empty")
    facts.append(("~" if col["distinct_estimated"] else "") + f"{col['distinct_count']} distinct"
                 + (", unique" if col["unique"] else ""))
    span = _range(col)
    if span:
        facts.append(span)
    samples = [_clip(str(v)) for v in (col["sample_values"] or [])[:CONTEXT_SAMPLES]]
    if samples:
        quote = col["type"] not in NUMBERS
        facts.append("e.g. " + ", ".join(json.dumps(s, ensure_ascii=False) if quote else s for s in samples))
    if col["description"]:
        facts.append(col["description"])
    return facts


def create_table(doc: dict) -> str:
    """The dataset's table as ``CREATE TABLE``, each column's profile in a trailing comment."""
    lines = []
    key = doc["primary_key"] or []
    columns = doc["columns"]
    for i, col in enumerate(columns):
        comma = "," if i < len(columns) - 1 or key else ""
        null = " NOT NULL" if not col["nullable"] else ""
        lines.append(f"  {col['name']} {col['type']}{null}{comma} -- " + "; ".join(column_facts(col, doc["row_count"])))
    if key:
        lines.append(f"  PRIMARY KEY ({', '.join(key)})")
    return f"CREATE TABLE {doc['table']} (\n" + "\n".join(lines) + "\n);"


def join_lines(doc: dict) -> list[str]:
    return [f"{doc['dataset']}.{j['column']} → {j['references']['dataset']}.{j['references']['column']} "
            f"(containment {j['containment']:.2f})" for j in doc["join_candidates"]]


def context_markdown(docs: list[dict]) -> str:
    """Prompt-ready markdown: per dataset its description, ``CREATE TABLE``, keys and joins."""
    parts = []
    for doc in docs:
        head = [f"## {doc['dataset']}", ""]
        if doc.get("description"):
            head += [doc["description"], ""]
        head.append(f"{doc['row_count']} rows.")
        body = ["```sql", create_table(doc), "```"]
        keys = ", ".join("(" + ", ".join(k) + ")" for k in doc["key_candidates"] or [])
        tail = [f"Keys: {keys}"] if keys else []
        joins = join_lines(doc)
        if joins:
            tail += ["Joins:", *(f"- {line}" for line in joins)]
        parts.append("\n".join(head + body + tail))
    return "\n\n".join(parts) + "\n"


def context_json(docs: list[dict]) -> dict:
    """The same description as :func:`context_markdown`, as data."""
    out = []
    for doc in docs:
        rows = doc["row_count"]
        out.append({
            "dataset": doc["dataset"], "table": doc["table"], "description": doc.get("description"),
            "row_count": rows, "primary_key": doc["primary_key"], "create_table": create_table(doc),
            "columns": [{
                "name": c["name"], "type": c["type"], "semantic_type": c["semantic_type"], "pii": c["pii"],
                "null_share": round(c["null_count"] / rows, 4) if rows else None,
                "distinct_count": c["distinct_count"], "distinct_estimated": c["distinct_estimated"],
                "unique": c["unique"], "min": c["min"], "max": c["max"], "min_max_of": c["min_max_of"],
                "sample_values": c["sample_values"], "description": c["description"]} for c in doc["columns"]],
            "key_candidates": doc["key_candidates"], "join_candidates": doc["join_candidates"],
            "joins": join_lines(doc)})
    return {"datasets": out}


def describe(dsn: str, settings: Settings, dataset: str, column: str | None, text: str) -> dict:
    """Set a dataset's or column's description (``dataops catalog describe``); empty text clears it.

    Raises:
        SinkError: the dataset or column is not in the catalog.
    """
    cat = sql.Identifier(settings.postgres.catalog_schema)
    name = normalize_dataset_name(dataset)
    value = text.strip() or None
    conn = postgres.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            if column is None:
                cur.execute(sql.SQL("UPDATE {}.datasets SET description = %s WHERE name = %s").format(cat), (value, name))
                what = f"dataset {name}: not in the catalog"
            else:
                column = normalize_identifier(column)
                cur.execute(sql.SQL("UPDATE {}.columns SET description = %s WHERE dataset = %s AND name = %s")
                            .format(cat), (value, name, column))
                what = f"dataset {name}: no column {column} in the catalog"
            if cur.rowcount == 0:
                raise SinkError(what)
    except psycopg2.Error as exc:
        raise postgres.classify_error(exc, f"dataset {name}: setting a description") from exc
    finally:
        conn.close()
    return {"dataset": name, "column": column, "description": value}
