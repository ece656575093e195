"""Key and join candidates between the catalog's datasets, re-evaluated after each batch.

Runs after the batch commits, in its own short transaction (join candidates are derived from the
catalog; a batch never waits for them, and the next batch or ``dataops catalog refresh`` redoes
them if this step fails). Candidates are re-evaluated only where the batch's dataset is involved:
its columns as the referencing side, and its keys as the referenced side.

A column references a key (a one-column key candidate of a dataset) when, in this order:

1. both are integers or both text (``1`` and ``'1'`` do not join);
2. the names say so (``customer_id`` → ``customers.id`` or ``customers.customer_id``,
   ``origin_tailnum`` → ``planes.tailnum``), or both hold UUIDs: a small integer column that merely
   falls inside an id range has no such evidence;
3. the column has no more distinct values than the key (with the sketch's slack), and integer
   ranges overlap;
4. the share of its distinct values found in the key — the *containment* — is at least
   :data:`MIN_CONTAINMENT`: exact from the value sets of low-cardinality columns; else estimated
   from the HyperLogLog sketches (|A∩B| = |A| + |B| − |A∪B|) and verified exactly in SQL while
   the column's table has at most ``connectors.profile.EXACT_ROWS`` rows and the key's table too
   (or the key is its table's primary key, looked up by index). Beyond that the sketch estimate is reported when its
   error bound is within :data:`MAX_SKETCH_ERROR`, and the candidate is left out otherwise.
"""

from __future__ import annotations

import itertools
import json
import logging
import re

import psycopg2
from psycopg2 import sql
from psycopg2.extras import RealDictCursor, execute_values

from connectors import postgres, profile
from connectors.stats import HLL_M, hll_estimate, union

log = logging.getLogger(__name__)

MIN_CONTAINMENT = 0.5
MAX_SKETCH_ERROR = 0.05
MAX_PAIRS = 6  # two-column keys verified per dataset and batch
PAIR_SAMPLE_ROWS = 10_000  # rows a pair must be unique in before the whole table is checked
_HLL_SE = 1.04 / HLL_M ** 0.5
_FAMILY = {"smallint": "integer", "integer": "integer", "bigint": "integer", "text": "text"}
# Measurements (decimals, floating point) that happen not to repeat are no keys.
_KEY_TYPES = ("smallint", "integer", "bigint", "text", "date", "timestamp", "timestamptz")
GENERIC_NAMES = frozenset({"id", "key", "code", "name", "value", "type", "status", "number", "no", "uuid", "ref"})


def singular(word: str) -> str:
    """``customers`` → ``customer``, ``categories`` → ``category``, ``boxes`` → ``box``."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if re.search(r"(ss|x|ch|sh)es$", word):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def name_evidence(column: str, ref_dataset: str, ref_column: str) -> bool:
    """Whether a column's name points at ``ref_dataset.ref_column``."""
    if column == ref_column:
        return ref_column not in GENERIC_NAMES
    for form in {ref_dataset, singular(ref_dataset)}:
        if column in (f"{form}_{ref_column}", f"{form}{ref_column}"):
            return True
        if ref_column in GENERIC_NAMES and column.endswith(f"_{form}_{ref_column}"):
            return True  # billing_customer_id -> customers.id
    return ref_column not in GENERIC_NAMES and column.endswith(f"_{ref_column}")


def refresh(dsn: str, catalog_schema: str, dataset: str) -> None:
    """Recompute ``dataset``'s key candidates and every join candidate it takes part in.

    Raises:
        SinkError: PostgreSQL refused (classified like every sink error).
    """
    conn = postgres.connect(dsn)
    try:
        with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
            cur.execute("SET LOCAL work_mem = '64MB'; SET LOCAL jit = off")
            # One evaluation at a time: two datasets' batches both rewrite the candidates between them.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dataops.links:{catalog_schema}",))
            _refresh(cur, sql.Identifier(catalog_schema), dataset)
    except psycopg2.Error as exc:
        raise postgres.classify_error(exc, f"dataset {dataset}: finding key and join candidates") from exc
    finally:
        conn.close()


def _refresh(cur, cat: sql.Identifier, dataset: str) -> None:
    cur.execute(sql.SQL("SELECT name, table_schema, table_name, primary_key, row_count FROM {}.datasets").format(cat))
    datasets = {r["name"]: dict(r) for r in cur.fetchall()}
    if dataset not in datasets:
        return
    cur.execute(sql.SQL(
        "SELECT dataset, name, type, ordinal, non_null_count, null_count, distinct_count, distinct_estimated, "
        "min_value, max_value, top_values, is_unique, semantic_type FROM {}.columns ORDER BY dataset, ordinal"
    ).format(cat))
    columns: dict[str, dict[str, dict]] = {}
    for r in cur.fetchall():
        columns.setdefault(r["dataset"], {})[r["name"]] = dict(r)
    keys = {name: single_keys(ds, columns.get(name, {})) for name, ds in datasets.items()}
    candidates = key_candidates(cur, datasets[dataset], columns.get(dataset, {}))
    cur.execute(sql.SQL("UPDATE {}.datasets SET key_candidates = %s WHERE name = %s").format(cat),
                (json.dumps(candidates), dataset))
    # The dataset's columns against every key, and every column against the dataset's keys.
    pairs = [(dataset, c, b, k) for c in columns.get(dataset, {}) for b in datasets for k in keys[b]]
    pairs += [(a, c, dataset, k) for a in datasets if a != dataset for c in columns.get(a, {}) for k in keys[dataset]]
    pairs = [(a, c, b, k) for a, c, b, k in pairs if (a, c) != (b, k)]
    found = []
    sketches = _Sketches(cur, cat)
    for a, c, b, k in pairs:
        col, key = columns[a][c], columns[b][k]
        if not _plausible(a, col, b, key):
            continue
        containment, method = _containment(cur, sketches, datasets[a], col, datasets[b], key)
        if containment is not None and containment >= MIN_CONTAINMENT:
            found.append((a, c, b, k, round(containment, 4), method))
    cur.execute(sql.SQL("DELETE FROM {}.column_links WHERE dataset = %s OR ref_dataset = %s").format(cat),
                (dataset, dataset))
    if found:
        execute_values(cur, sql.SQL(
            "INSERT INTO {}.column_links (dataset, column_name, ref_dataset, ref_column, containment, method) "
            "VALUES %s ON CONFLICT (dataset, column_name, ref_dataset, ref_column) DO UPDATE SET "
            "containment = EXCLUDED.containment, method = EXCLUDED.method, updated_at = now()").format(cat).as_string(cur),
            found)


def single_keys(dataset: dict, columns: dict[str, dict]) -> list[str]:
    """The dataset's one-column key candidates: its one-column primary key, and unique non-null columns."""
    pk = list(dataset["primary_key"] or [])
    out = [pk[0]] if len(pk) == 1 and pk[0] in columns else []
    out += [n for n, c in columns.items() if n not in out and _is_key(c)]
    return out


def _is_key(column: dict) -> bool:
    return bool(column["is_unique"] and column["non_null_count"] and not column["null_count"]
                and column["type"] in _KEY_TYPES)


def key_candidates(cur, dataset: dict, columns: dict[str, dict]) -> list[list[str]]:
    """Column sets whose values are unique and non-null: the primary key, single columns, then pairs.

    Pairs are looked for only when no single column is a key, among non-null columns whose distinct
    counts multiply to at least the row count, at most :data:`MAX_PAIRS` of them, verified exactly
    in SQL on tables of at most ``EXACT_ROWS`` rows: first over the table's first
    :data:`PAIR_SAMPLE_ROWS` rows (a pair repeated there is no key), then the pairs left over all rows.
    """
    pk = list(dataset["primary_key"] or [])
    out = [pk] if pk and all(c in columns for c in pk) else []
    out += [[n] for n in single_keys(dataset, columns) if [n] != pk]
    rows = dataset["row_count"]
    if out or not rows or rows > profile.EXACT_ROWS:
        return out
    usable = [c for c in columns.values() if c["non_null_count"] == rows and c["type"] in _KEY_TYPES]
    pairs = [(x, y) for x, y in itertools.combinations(usable, 2) if x["distinct_count"] * y["distinct_count"] >= rows]
    # Identifier-like names first (order_id, line_no), then the most distinct values.
    pairs.sort(key=lambda p: (-sum(_id_like(c["name"]) for c in p), -(p[0]["distinct_count"] * p[1]["distinct_count"]),
                              p[0]["ordinal"], p[1]["ordinal"]))
    pairs = pairs[:MAX_PAIRS]
    table = sql.Identifier(dataset["table_schema"], dataset["table_name"])
    # A pair repeated among the first rows is no key: most pairs are ruled out by a scan of those.
    if rows > PAIR_SAMPLE_ROWS:
        sample = sql.SQL("(SELECT * FROM {} LIMIT {}) s").format(table, sql.Literal(PAIR_SAMPLE_ROWS))
        pairs = [p for p, n in zip(pairs, _pair_counts(cur, pairs, sample)) if n == PAIR_SAMPLE_ROWS]
    return out + [[x["name"], y["name"]] for (x, y), n in zip(pairs, _pair_counts(cur, pairs, table)) if n == rows]


def _pair_counts(cur, pairs: list[tuple[dict, dict]], rel: sql.Composable) -> list[int]:
    """Distinct values of each pair of columns over ``rel``."""
    if not pairs:
        return []
    cur.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(
        sql.SQL("count(DISTINCT ({}, {})) AS {}").format(sql.Identifier(x["name"]), sql.Identifier(y["name"]),
                                                          sql.Identifier(f"p{i}"))
        for i, (x, y) in enumerate(pairs)), rel))
    counts = cur.fetchone()
    return [counts[f"p{i}"] for i in range(len(pairs))]


def _id_like(name: str) -> bool:
    return bool(re.search(r"(^|_)(id|no|num|number|seq|line|key|code)$", name))


def _plausible(a: str, col: dict, b: str, key: dict) -> bool:
    """The cheap filters: types, name or shape evidence, distinct counts, integer ranges."""
    family = _FAMILY.get(col["type"])
    if family is None or family != _FAMILY.get(key["type"]) or not col["non_null_count"]:
        return False
    uuids = col["semantic_type"] == key["semantic_type"] == "uuid"
    if not (name_evidence(col["name"], b, key["name"]) or uuids):
        return False
    # Containment of at least one half needs at least half the column's values among the key's.
    if col["distinct_count"] * MIN_CONTAINMENT > key["distinct_count"] * (1 + 3 * _HLL_SE) + 1:
        return False
    if family == "integer" and None not in (col["min_value"], col["max_value"], key["min_value"], key["max_value"]):
        if int(col["max_value"]) < int(key["min_value"]) or int(col["min_value"]) > int(key["max_value"]):
            return False
    return True


class _Sketches:
    """Columns' HyperLogLog registers, read once per evaluation."""

    def __init__(self, cur, cat: sql.Identifier):
        self.cur, self.cat, self.cache = cur, cat, {}

    def get(self, dataset: str, column: str) -> bytes | None:
        if (dataset, column) not in self.cache:
            self.cur.execute(sql.SQL("SELECT registers FROM {}.column_hll WHERE dataset = %s AND column_name = %s")
                             .format(self.cat), (dataset, column))
            row = self.cur.fetchone()
            self.cache[dataset, column] = bytes(row["registers"]) if row else None
        return self.cache[dataset, column]


def _containment(cur, sketches: _Sketches, a: dict, col: dict, b: dict, key: dict) -> tuple[float | None, str]:
    """Share of the column's distinct values found in the key, and how it was found (exact / sketch)."""
    if col["top_values"] is not None:
        values = set(col["top_values"])
        if not values:
            return None, "exact"
        if key["top_values"] is not None:
            return len(values & set(key["top_values"])) / len(values), "exact"
        if b["row_count"] <= profile.EXACT_ROWS or list(b["primary_key"] or []) == [key["name"]]:
            return _found_values(cur, b, key, sorted(values)) / len(values), "exact"
    # A key that is its table's primary key is looked up by index: the cost follows the column's table.
    indexed = list(b["primary_key"] or []) == [key["name"]]
    affordable = a["row_count"] <= profile.EXACT_ROWS and (indexed or b["row_count"] <= profile.EXACT_ROWS)
    estimate, error = _sketch_containment(sketches.get(a["name"], col["name"]), sketches.get(b["name"], key["name"]))
    if estimate is None:
        return None, "sketch"
    if not affordable:
        return (estimate if error <= MAX_SKETCH_ERROR else None), "sketch"
    if estimate + max(error, MAX_SKETCH_ERROR) < MIN_CONTAINMENT:
        return None, "sketch"
    return _exact_containment(cur, a, col["name"], b, key["name"], indexed), "exact"


def _sketch_containment(sa: bytes | None, sb: bytes | None) -> tuple[float | None, float]:
    """|A∩B| / |A| by inclusion–exclusion over HyperLogLog sketches, and a two-sigma error bound."""
    if sa is None or sb is None:
        return None, 1.0
    na, nb = hll_estimate(sa), hll_estimate(sb)
    if na < 1:
        return None, 1.0
    both = hll_estimate(union(sa, sb))
    inter = min(max(na + nb - both, 0.0), na)
    return inter / na, 2 * _HLL_SE * (na * na + nb * nb + both * both) ** 0.5 / na


def _found_values(cur, b: dict, key: dict, values: list[str]) -> int:
    """How many of a few values (a low-cardinality column's, as text) the key holds: index lookups."""
    array = "bigint[]" if _FAMILY[key["type"]] == "integer" else "text[]"
    cur.execute(sql.SQL("SELECT count(DISTINCT {k}) AS n FROM {t} WHERE {k} = ANY(%s::{a})").format(
        k=sql.Identifier(key["name"]), t=sql.Identifier(b["table_schema"], b["table_name"]), a=sql.SQL(array)),
        (values,))
    return cur.fetchone()["n"]


def _exact_containment(cur, a: dict, column: str, b: dict, key: str, indexed: bool) -> float | None:
    """Exact containment. An indexed key is probed value by value (the cost follows the column's
    table); an unindexed one (both tables small) is hashed once: probing it per value would scan
    it per value."""
    found = ("EXISTS (SELECT 1 FROM {bt} r WHERE r.{k} = v.x)" if indexed else "v.x IN (SELECT r.{k} FROM {bt} r)")
    cur.execute(sql.SQL(
        "SELECT count(*) AS n, count(*) FILTER (WHERE " + found + ") AS found "
        "FROM (SELECT DISTINCT {c} AS x FROM {at} WHERE {c} IS NOT NULL) v").format(
        bt=sql.Identifier(b["table_schema"], b["table_name"]), k=sql.Identifier(key),
        c=sql.Identifier(column), at=sql.Identifier(a["table_schema"], a["table_name"])))
    row = cur.fetchone()
    return row["found"] / row["n"] if row["n"] else None
