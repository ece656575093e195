"""Column profiles of the catalog: semantic type, personal data, uniqueness and sample values.

Kept batch by batch inside the merge transaction, right after the column statistics
(:mod:`connectors.stats`), from the same work tables, so the cost follows the batch:

* per column and semantic type, how many values pass the type's test (:mod:`streaming.semantics`)
  out of how many were tested. Columns with exact value counts (at most 50 distinct values) are
  counted from those, exactly, without a scan. Other columns are tested in one SQL scan of at most
  :data:`TESTED_ROWS` rows of the batch — all of an ordinary batch, the first rows of a large one,
  so that a million-row file costs what ten thousand rows do; like the other counts they are added
  for added rows, subtracted for the rows an upsert replaced (tested the same way) and rebuilt
  when the table was replaced or rewritten. ``semantic_confidence`` is the share of tested values
  that fit;
* ``unique``: exact for columns with exact value counts (at most 50 distinct values) and for a
  one-column primary key; a column found repeating stays so while batches only append; for the
  other large columns the HyperLogLog estimate rules out columns clearly holding repeats, and the
  rest are checked exactly with ``count(DISTINCT)`` while the table has at most
  :data:`EXACT_ROWS` rows (beyond that the estimate stands: a column with fewer than
  :data:`UNIQUE_SLACK` of its values repeated can pass as unique);
* sample values: the (at most) five distinct values with the smallest hashes — from the exact value
  counts of low-cardinality columns, else a bottom-k sample that merges across batches, from which
  values an upsert replaced leave. Stored as found (for the next merge) and masked (for everything
  that shows them).
"""

from __future__ import annotations

import json

from psycopg2 import sql
from psycopg2.extras import execute_values

from connectors import stats
from connectors.stats import Delta
from streaming import semantics

EXACT_ROWS = 200_000  # tables up to this size get exact checks (uniqueness, pairs, containment)
UNIQUE_SLACK = 0.025  # about three standard errors of the distinct-count estimate
SAMPLE_SIZE = 5
TESTED_ROWS = 10_000  # rows of a batch whose values are tested for semantic types and sampled
TESTED = "_tested"  # the key of the semantic counts that counts the values tested
SAMPLE_CHARS = 200  # longer values are sampled by their first characters


def apply(cur, cat: sql.Identifier, dataset: str, target: sql.Composable, columns: dict[str, str],
          delta: Delta, primary_key=()) -> None:
    """Update every column profile of ``dataset`` for one committed batch (same transaction)."""
    rebuild = delta.replaced_table or bool(delta.widened) or delta.recompute
    old = {} if rebuild else _load(cur, cat, dataset)
    # Columns never profiled (new to an older catalog) start from the whole table, once.
    fresh = dict(columns) if rebuild else {n: k for n, k in columns.items() if old.get(n, (None,))[0] is None}
    incremental = {n: k for n, k in columns.items() if n not in fresh}
    whole = delta.added if delta.replaced_table else target
    facts = _facts(cur, cat, dataset)
    # Columns with exact value counts are profiled from those values, exactly and without a scan.
    known = {n: facts[n]["top_values"] for n in columns if n in facts and facts[n]["top_values"] is not None}
    counts = {n: counts_of_values(columns[n], values) for n, values in known.items()}
    samples = _sample_of_values(cur, {n: list(values) for n, values in known.items()})
    counts.update(_count(cur, whole, {n: k for n, k in fresh.items() if n not in known}))
    samples.update(_sample(cur, whole, {n: k for n, k in fresh.items() if n not in known}))
    merged = {n: k for n, k in incremental.items() if n not in known}
    if merged:
        added = _count(cur, delta.added, merged)
        removed = _count(cur, delta.removed, merged) if delta.removed is not None else {}
        for name in merged:
            before = old[name][0]
            counts[name] = {t: max(0, before.get(t, 0) + added[name].get(t, 0) - removed.get(name, {}).get(t, 0))
                            for t in {*before, *added[name]}}
        gone = _removed_values(cur, delta.removed, {n: (k, [v for _, v in old[n][1]]) for n, k in merged.items()}) \
            if delta.removed is not None else {}
        batch = _sample(cur, delta.added, merged)
        for name in merged:
            kept = [hv for hv in old[name][1] if hv[1] not in gone.get(name, set())]
            samples[name] = _bottom(kept + batch.get(name, []))
    # Adding rows never removes a repeat: a column known to repeat keeps repeating unless replaced rows
    # changed its values.
    repeats = {n for n in incremental if old[n][2] is False} - _changed(cur, delta, incremental)
    unique = _uniqueness(cur, target, delta.rows_after, facts, tuple(primary_key), repeats)
    rows = []
    for name, kind in columns.items():
        tested = (counts.get(name) or {}).get(TESTED, 0)
        if kind == "jsonb":
            tested = facts[name]["non_null_count"] if name in facts else 0
        semantic, confidence = semantics.classify(name, kind, counts.get(name), tested)
        pii = semantics.pii_category(name, semantic, counts.get(name), tested)
        sample = samples.get(name, [])
        rows.append((name, json.dumps(counts.get(name, {})), semantic, confidence, pii, unique.get(name),
                     json.dumps(sample), json.dumps([semantics.mask(v, pii) for _, v in sample])))
    execute_values(cur, sql.SQL(
        "UPDATE {cat}.columns c SET semantic_counts = d.counts::jsonb, semantic_type = d.semantic, "
        "semantic_confidence = d.confidence, pii = d.pii, is_unique = d.is_unique, sample_found = d.found::jsonb, "
        "sample_values = d.shown::jsonb FROM (VALUES %s) d(name, counts, semantic, confidence, pii, is_unique, found, "
        "shown) WHERE c.dataset = {ds} AND c.name = d.name").format(cat=cat, ds=sql.Literal(dataset)).as_string(cur),
        rows, template="(%s, %s, %s, %s::double precision, %s, %s::boolean, %s, %s)")


def _load(cur, cat, dataset: str) -> dict[str, tuple[dict | None, list, bool | None]]:
    cur.execute(sql.SQL("SELECT name, semantic_counts, sample_found, is_unique FROM {}.columns WHERE dataset = %s")
                .format(cat), (dataset,))
    return {name: (counts, [tuple(hv) for hv in found or []], unique)
            for name, counts, found, unique in cur.fetchall()}


def _test(column: str, kind: str, t: semantics.SemanticType) -> sql.Composable:
    ident = sql.Identifier(column)
    if kind == "text" and t.codes is not None:
        return sql.SQL("{} = ANY({})").format(ident, sql.Literal(sorted(t.codes)))
    if kind == "text":
        # Cheap tests first: AND stops at the first that fails, so most values never reach the regex.
        tests = []
        if t.length:
            tests.append(sql.SQL("length({}) BETWEEN {} AND {}").format(ident, *map(sql.Literal, t.length)))
        if t.starts:
            tests.append(sql.SQL("left({}, 1) = ANY({})").format(ident, sql.Literal(list(t.starts))))
        tests.append(sql.SQL("{} ~ {}").format(ident, sql.Literal(f"^(?:{t.pattern})$")))
        return sql.SQL(" AND ").join(tests)
    low, high = t.numeric
    return sql.SQL("{} BETWEEN {} AND {}").format(ident, sql.Literal(low), sql.Literal(high))


def _count(cur, relation: sql.Composable, columns: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per column, how many values were tested (``TESTED``) and how many passed each semantic test.

    One scan of at most :data:`TESTED_ROWS` rows of ``relation``.
    """
    tests = [(name, t) for name, kind in columns.items() for t in semantics.applicable(kind)]
    out: dict[str, dict[str, int]] = {name: {} for name in columns}
    if not tests:
        return out
    # Per column: how many values were tested, then how many passed each test -- in one statement,
    # so that both count the same rows; a wide table takes several statements of whole columns.
    groups: dict[str, list] = {}
    for name, t in tests:
        groups.setdefault(name, [(TESTED, sql.SQL("count({})").format(sql.Identifier(name)))]).append(
            (t.name, sql.SQL("count(*) FILTER (WHERE {})").format(_test(name, columns[name], t))))
    statements: list[list[tuple[str, str, sql.Composable]]] = [[]]
    for name, group in groups.items():
        if statements[-1] and len(statements[-1]) + len(group) > stats.MAX_SELECT_LIST:
            statements.append([])
        statements[-1].extend((name, label, expr) for label, expr in group)
    for statement in statements:
        cur.execute(sql.SQL("SELECT {} FROM (SELECT * FROM {} rel LIMIT {}) rel").format(
            sql.SQL(", ").join(expr for _, _, expr in statement), relation, sql.Literal(TESTED_ROWS)))
        for (name, label, _), n in zip(statement, cur.fetchone()):
            out[name][label] = n
    return out


def counts_of_values(kind: str, values: dict[str, int]) -> dict[str, int]:
    """Semantic counts of a column from its exact value counts (value text → rows)."""
    types = semantics.applicable(kind)
    out = {TESTED: sum(values.values()), **{t.name: 0 for t in types}}
    if not types:
        return out
    for text, n in values.items():
        value = text if kind == "text" else (int(text) if kind in ("smallint", "integer", "bigint") else float(text))
        for t in types:
            if semantics.fits(t.name, value):
                out[t.name] += n
    return out


def _value(column: str, kind: str) -> sql.Composable:
    """A value as sampled text: numeric ``1.50`` is ``1.5``, long text its first characters."""
    ident = sql.Identifier(column)
    text = sql.SQL("trim_scale({})::text" if kind == "numeric" else "{}::text").format(ident)
    return sql.SQL("left({}, {})").format(text, sql.Literal(SAMPLE_CHARS))


def _sample(cur, relation: sql.Composable, columns: dict[str, str]) -> dict[str, list[tuple[int, str]]]:
    """Per column, the distinct values of ``relation`` with the smallest hashes (``(hash, value)``).

    A top-N by hash (a heap, no sort of the whole relation) usually holds enough distinct values;
    a column whose smallest hashes are all one value's is asked again with ``DISTINCT``.
    """
    out = _sample_query(cur, relation, columns, distinct=False)
    again = {n: k for n, k in columns.items() if len(out.get(n, [])) < SAMPLE_SIZE}
    out.update(_sample_query(cur, relation, again, distinct=True))
    return out


def _sample_query(cur, relation, columns: dict[str, str], distinct: bool) -> dict[str, list[tuple[int, str]]]:
    if not columns:
        return {}
    cur.execute(sql.SQL(" UNION ALL ").join(
        sql.SQL("(SELECT {n}, h, v FROM (SELECT {d} hashtextextended(v, 0) AS h, v FROM "
                "(SELECT {v} AS v FROM {rel} rel LIMIT {rows}) s WHERE v IS NOT NULL) d ORDER BY h, v LIMIT {k})").format(
            n=sql.Literal(name), d=sql.SQL("DISTINCT" if distinct else ""), v=_value(name, kind), rel=relation,
            rows=sql.Literal(TESTED_ROWS), k=sql.Literal(SAMPLE_SIZE if distinct else 8 * SAMPLE_SIZE))
        for name, kind in columns.items()))
    found: dict[str, list[tuple[int, str]]] = {}
    for name, h, v in cur.fetchall():
        found.setdefault(name, []).append((h, v))
    return {name: _bottom(values) for name, values in found.items()}


def _sample_of_values(cur, values: dict[str, list[str]]) -> dict[str, list[tuple[int, str]]]:
    """Bottom-k samples of known value sets (the value counts of low-cardinality columns)."""
    texts = sorted({v[:SAMPLE_CHARS] for vs in values.values() for v in vs})
    if not texts:
        return {}
    cur.execute("SELECT v, hashtextextended(v, 0) FROM unnest(%s::text[]) v", (texts,))
    hashes = dict(cur.fetchall())
    return {n: _bottom([(hashes[v[:SAMPLE_CHARS]], v[:SAMPLE_CHARS]) for v in vs]) for n, vs in values.items()}


def _bottom(values: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return sorted(set(map(tuple, values)))[:SAMPLE_SIZE]


def _removed_values(cur, removed: sql.Composable, sampled: dict[str, tuple[str, list[str]]]) -> dict[str, set[str]]:
    """Which sampled values occur in the rows an upsert replaced (they may be gone from the table).

    ``sampled`` maps a column to its type and sampled values.
    """
    wanted = {n: kv for n, kv in sampled.items() if kv[1]}
    if not wanted:
        return {}
    cur.execute(sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT DISTINCT {n}, v FROM (SELECT {v} AS v FROM {rel} rel) s WHERE v = ANY({vs})").format(
            n=sql.Literal(name), v=_value(name, kind), rel=removed, vs=sql.Literal(values))
        for name, (kind, values) in wanted.items()))
    out: dict[str, set[str]] = {}
    for name, v in cur.fetchall():
        out.setdefault(name, set()).add(v)
    return out


def _facts(cur, cat, dataset: str) -> dict[str, dict]:
    cur.execute(sql.SQL("SELECT name, type, non_null_count, null_count, distinct_count, distinct_estimated, "
                        "top_values FROM {}.columns WHERE dataset = %s").format(cat), (dataset,))
    names = [d[0] for d in cur.description]
    return {r[0]: dict(zip(names, r)) for r in cur.fetchall()}


def _changed(cur, delta: Delta, columns: dict[str, str]) -> set[str]:
    """Columns in which some row an upsert replaced now holds another value (all, without a key)."""
    if delta.removed is None:
        return set()
    if not delta.key:
        return set(columns)
    return {n for n, (_, changed) in stats.replaced_changes(cur, delta, columns).items() if changed}


def _uniqueness(cur, target, rows: int, facts: dict[str, dict], primary_key: tuple,
                repeats: set[str]) -> dict[str, bool | None]:
    """Whether each column's non-null values never repeat (see the module docstring for how exact).

    None for a column without values; ``repeats`` are columns known to hold repeated values.
    """
    unique, verify = {}, []
    for name, f in facts.items():
        n = f["non_null_count"]
        if not n:
            unique[name] = None
        elif f["type"] in ("jsonb", "boolean") or name in repeats:
            unique[name] = False
        elif primary_key == (name,):
            unique[name] = True
        elif not f["distinct_estimated"]:
            unique[name] = f["distinct_count"] == n
        elif f["distinct_count"] < n * (1 - UNIQUE_SLACK):
            unique[name] = False
        else:
            unique[name] = True
            verify.append(name)
    if verify and rows <= EXACT_ROWS:
        for part in stats.select_lists(verify, 1):
            cur.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(
                sql.SQL("count(DISTINCT {c}) = count({c})").format(c=sql.Identifier(n)) for n in part), target))
            unique.update(zip(part, cur.fetchone()))
    return unique


def apply_descriptions(cur, cat: sql.Identifier, dataset: str, description: str | None,
                       column_descriptions: dict[str, str]) -> None:
    """Apply the configured descriptions where the configuration changed since it was last applied.

    Each field keeps the configured text it last took over; a description set at run time
    (``dataops catalog describe``) stays until the configured text itself changes. A description
    removed from the configuration leaves the current one alone.
    """
    changed = sql.SQL("CASE WHEN {new} IS NOT NULL AND {old} IS DISTINCT FROM {new} THEN {new} ELSE {cur} END")
    cur.execute(sql.SQL("UPDATE {}.datasets SET description = {}, description_config = %(d)s WHERE name = %(ds)s").format(
        cat, changed.format(new=sql.SQL("%(d)s::text"), old=sql.SQL("description_config"), cur=sql.SQL("description"))),
        {"d": description, "ds": dataset})
    cur.execute(sql.SQL("SELECT name FROM {}.columns WHERE dataset = %s").format(cat), (dataset,))
    names = [n for (n,) in cur.fetchall()]
    if names:
        execute_values(cur, sql.SQL(
            "UPDATE {cat}.columns c SET description = {set}, description_config = d.text "
            "FROM (VALUES %s) d(name, text) WHERE c.dataset = {ds} AND c.name = d.name").format(
            cat=cat, ds=sql.Literal(dataset),
            set=changed.format(new=sql.SQL("d.text"), old=sql.SQL("c.description_config"),
                               cur=sql.SQL("c.description"))).as_string(cur),
            [(n, column_descriptions.get(n)) for n in names], template="(%s, %s::text)")
