"""Column statistics of the catalog, kept exact batch by batch inside the merge transaction.

Each committed batch changes a table by a set of *added* rows and, for upserts, a set of *removed*
rows (the old versions of the rows it replaced). Both sets sit in work tables of the merge
transaction, so every statistic is updated from them at a cost proportional to the batch:

* row, null and non-null counts, sums (for means) and value counts of low-cardinality columns are
  added and subtracted exactly;
* min and max only move outwards from added rows; when a removed row held the minimum or maximum
  and no added row reaches it, that one bound is recomputed from the table;
* distinct counts of high-cardinality columns come from a HyperLogLog sketch per column, kept as
  registers in ``column_hll``, merged register by register with ``max``. Columns with exact value counts
  need no sketch scan: their sketch is made from their (at most 50) values, and a column passing the
  limit goes on from it with the batch's values. A sketch cannot forget values, so
  the values an upsert overwrites are counted as *drift*; when drift passes
  :data:`MAX_DRIFT` of the estimate, the column's sketch is rebuilt from the table.

All of it runs on the merge's cursor and commits with the batch.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from psycopg2 import sql

log = logging.getLogger(__name__)

HLL_P = 14
HLL_M = 1 << HLL_P
HLL_Q = 64 - HLL_P
TOP_VALUES_LIMIT = 50  # columns with at most this many distinct values keep exact value counts
TOP_VALUES_SHOWN = 10
SAMPLED_ROWS = 10_000  # added rows in which many distinct values end exact value counts early
MAX_DRIFT = 0.005  # overwritten distinct values tolerated in a sketch, as a share of its estimate
SIDE_SKETCH_ROWS = 50_000  # batches with at least this many staged rows get BatchSketches
FLOOR_MARGIN = 12.0  # a scan groups only ranks every register reaches with probability 1 - e^-12 (rank_floor)
MAX_SELECT_LIST = 1600  # PostgreSQL refuses select lists of more than 1664 entries

NUMERIC = ("smallint", "integer", "bigint", "numeric", "real", "double precision")
# Milliseconds a sketch scan of a million values takes by type (one core; text of about 20
# characters), and the aggregates' share per column: how BatchSketches shares out its scans.
SKETCH_COST = {"smallint": 390, "integer": 390, "bigint": 390, "numeric": 560, "real": 230, "double precision": 230,
               "timestamp": 430, "timestamptz": 430, "date": 150, "boolean": 150, "text": 660, "jsonb": 800}
AGGREGATE_COST = 85
VALUE_COUNT_COST = 220  # a column's exact value counts (grouped, one of the scan's grouping sets)
TEMPORAL = ("date", "timestamp", "timestamptz")


@dataclasses.dataclass
class ColumnStats:
    """One column's catalog statistics, as stored in ``columns`` (null count = rows - non-null)."""

    non_null_count: int = 0
    min_value: str | None = None
    max_value: str | None = None
    value_sum: Decimal | None = None
    top_values: dict | None = dataclasses.field(default_factory=dict)  # None = too many distinct values
    drift: int = 0


@dataclasses.dataclass
class Delta:
    """What a batch did to a table, as relations the merge transaction can read."""

    added: sql.Composable  # rows now in the table that were not before
    rows_after: int  # rows in the table after the batch
    removed: sql.Composable | None = None  # old versions of the rows the batch replaced (upsert)
    replaced_table: bool = False  # overwrite or refresh: the added rows are the whole table
    key: Sequence[str] = ()  # primary key, pairing removed rows with their new versions
    widened: Sequence[str] = ()  # columns whose type changed (the table was rewritten anyway)
    recompute: bool = False  # the stored statistics cannot be trusted (a catalog from before them)
    staged_values: bool = False  # the added rows hold exactly the values of the batch's staged rows
    staged_rows: bool = False  # ... and exactly its staged rows (none left out at all)
    batch_sketches: dict | None = None  # column -> registers of the added rows' values (BatchSketches)
    batch_aggregates: dict | None = None  # column -> _aggregate of the added rows (BatchSketches)
    # (columns counted, their _value_counts) of the added rows (BatchSketches)
    batch_value_counts: tuple[frozenset, list, set] | None = None
    # column -> (values lost, changed at all) of the replaced rows (replaced_changes: one join per batch)
    changes: dict = dataclasses.field(default_factory=dict)


def measures(kind: str) -> str:
    """What ``min``/``max`` describe for a column type: ``value``, ``length`` (text) or ``none``."""
    return {"text": "length", "jsonb": "none"}.get(kind, "value")


def apply(cur, cat: sql.Identifier, dataset: str, target: sql.Composable, columns: dict[str, str],
          delta: Delta) -> None:
    """Update every column statistic of ``dataset`` for one committed batch (same transaction).

    After a type widening (whose ``ALTER TABLE`` rewrote the table anyway) or when the stored
    statistics predate this code, everything is recomputed from the table instead.
    """
    batch, aggregates = delta.batch_sketches or {}, delta.batch_aggregates
    if (delta.widened or delta.recompute) and not delta.replaced_table:
        delta = Delta(added=target, rows_after=delta.rows_after, replaced_table=True)
        batch, aggregates = {}, None
    old = {} if delta.replaced_table else _load(cur, cat, dataset)
    known = aggregates or {}
    unknown = {n: k for n, k in columns.items() if n not in known}
    added = {**(_aggregate(cur, delta.added, unknown) if unknown else {}), **{n: known[n] for n in columns if n in known}}
    removed = _aggregate(cur, delta.removed, columns) if delta.removed is not None else {}
    drift = _drift(cur, delta, columns) if delta.removed is not None else {}
    sketches = {} if delta.replaced_table else _load_sketches(cur, cat, dataset)
    stats: dict[str, ColumnStats] = {}
    redo: dict[str, tuple[bool, bool]] = {}
    for name, kind in columns.items():
        before = old.get(name) or ColumnStats()
        stats[name], redo[name] = _combine(before, kind, added[name], removed.get(name))
        stats[name].drift = before.drift + drift.get(name, 0)
    _recompute_bounds(cur, target, columns, stats, {n: r for n, r in redo.items() if any(r)})
    # Columns with exact value counts need no sketch scan: their sketch is made from their values.
    untracked = {n: columns[n] for n, s in stats.items() if s.top_values is None}
    _add_batch_sketches(cur, delta.added, untracked, sketches, batch)
    estimates = {n: hll_estimate(sketches[n]) for n in untracked}
    rebuild = {n for n in untracked if stats[n].drift > max(1.0, MAX_DRIFT * estimates[n])}
    if rebuild:
        for name in rebuild:
            sketches.pop(name, None)
            stats[name].drift = 0
        _add_to_sketches(cur, target, {n: columns[n] for n in columns if n in rebuild}, sketches,
                         {n: estimates[n] / HLL_M for n in rebuild})
        estimates.update({n: hll_estimate(sketches[n]) for n in rebuild})
    tracked = [n for n, s in stats.items() if s.top_values is not None]
    _count_values(cur, delta, columns, stats)
    # A column past the limit goes on in a sketch: the one stored holds the values it had before.
    left = {n: columns[n] for n in tracked if stats[n].top_values is None}
    if left:
        _add_batch_sketches(cur, delta.added, left, sketches, batch)
        estimates.update({n: hll_estimate(sketches[n]) for n in left})
    still = {n: (columns[n], list(stats[n].top_values)) for n in tracked if n not in left}
    for name in still:
        sketches.pop(name, None)
    _add_values_to_sketches(cur, still, sketches)
    _save_sketches(cur, cat, dataset, {n: r for n, r in sketches.items() if n in columns})
    _store(cur, cat, dataset, delta.rows_after, stats, estimates)


def _load(cur, cat: sql.Identifier, dataset: str) -> dict[str, ColumnStats]:
    cur.execute(sql.SQL(
        "SELECT name, non_null_count, min_value, max_value, value_sum, top_values, sketch_drift "
        "FROM {}.columns WHERE dataset = %s").format(cat), (dataset,))
    return {r[0]: ColumnStats(*r[1:]) for r in cur.fetchall()}


def _bound(column: str, kind: str) -> sql.Composable | None:
    """What min and max are taken of: the value, the length of text, booleans as 0/1."""
    ident = sql.Identifier(column)
    if kind in NUMERIC or kind in TEMPORAL:
        return ident
    if kind == "text":
        return sql.SQL("length({})").format(ident)
    if kind == "boolean":
        return sql.SQL("{}::int").format(ident)
    return None


def _bound_kind(kind: str) -> str:
    """The type min/max compare in: the column's own, or integer for text lengths and booleans."""
    return kind if (kind in NUMERIC or kind in TEMPORAL) else "integer"


def _aggregate(cur, relation: sql.Composable, columns: dict[str, str]) -> dict[str, tuple]:
    """Per column: (non-null count, min, max, sum) over ``relation``, in one scan."""
    exprs = []
    for name, kind in columns.items():
        ident, bound = sql.Identifier(name), _bound(name, kind)
        exprs.append(sql.SQL("count({})").format(ident))
        if bound is None:
            exprs += [sql.SQL("NULL"), sql.SQL("NULL")]
        else:
            exprs += [sql.SQL("min({})").format(bound), sql.SQL("max({})").format(bound)]
        # Integers sum exactly in their own aggregate (bigint, or numeric for bigint): only floating
        # point needs the cast to sum as exact decimals, and the cast costs as much as the scan.
        exact = kind in ("smallint", "integer", "bigint", "numeric")
        exprs.append(sql.SQL("sum({})" if exact else "sum({}::numeric)").format(ident) if kind in NUMERIC
                     else sql.SQL("NULL"))
    row: list = []
    for part in select_lists(exprs):  # a wide table needs more than one scan
        cur.execute(sql.SQL("SELECT {} FROM {} rel").format(sql.SQL(", ").join(part), relation))
        row.extend(cur.fetchone())
    return {name: tuple(row[4 * i: 4 * i + 4]) for i, name in enumerate(columns)}


def select_lists(exprs: list, per_column: int = 4) -> list[list]:
    """``exprs`` cut into select lists PostgreSQL accepts (at most 1664 entries), whole columns each
    (``per_column`` expressions per column)."""
    size = MAX_SELECT_LIST // per_column * per_column
    return [exprs[i:i + size] for i in range(0, len(exprs), size)] or [exprs]


def _to_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def _parse(text: str | None, kind: str):
    if text is None:
        return None
    if kind == "date":
        return dt.date.fromisoformat(text)
    if kind in ("timestamp", "timestamptz"):
        return _comparable(dt.datetime.fromisoformat(text), kind)
    if kind in NUMERIC:
        return Decimal(text)
    return int(text)


def _comparable(value, kind: str):
    """Bring an aggregate and a value read back from the catalog to one Python type."""
    if value is None:
        return None
    if kind in NUMERIC:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    if kind in ("timestamp", "timestamptz"):
        if not isinstance(value, dt.datetime):
            value = dt.datetime.combine(value, dt.time())
        if kind == "timestamp":
            return value.replace(tzinfo=None)
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if kind == "date" and isinstance(value, dt.datetime):
        return value.date()
    return int(value) if isinstance(value, bool) else value


def _combine(before: ColumnStats, kind: str, added: tuple, removed: tuple | None):
    """New stats from the old ones and the added and removed rows' aggregates.

    Returns the stats and whether the min / max must be recomputed from the table: a removed row
    held the bound and no added row reaches it.
    """
    a_count, a_min, a_max, a_sum = added
    r_count, r_min, r_max, r_sum = removed or (0, None, None, None)
    bk = _bound_kind(kind)
    new = ColumnStats(non_null_count=before.non_null_count + a_count - r_count, top_values=before.top_values)
    if kind in NUMERIC and new.non_null_count:
        from streaming.pgvalues import EXACT  # (with NumPy and pyarrow: not on every import of this module)

        # Exact whatever the digits, as SQL's sum is (Python's default context rounds to 28).
        new.value_sum = EXACT.subtract(EXACT.add(before.value_sum or 0, a_sum or 0), r_sum or 0)
    if measures(kind) == "none" or not new.non_null_count:
        return new, (False, False)
    try:
        lo, hi = _parse(before.min_value, bk), _parse(before.max_value, bk)
        a_min, a_max = _comparable(a_min, bk), _comparable(a_max, bk)
        r_min, r_max = _comparable(r_min, bk), _comparable(r_max, bk)
        redo_min = bool(r_count and lo is not None and r_min is not None and r_min <= lo
                        and (a_min is None or a_min > lo))
        redo_max = bool(r_count and hi is not None and r_max is not None and r_max >= hi
                        and (a_max is None or a_max < hi))
        lo = a_min if lo is None else (lo if a_min is None else min(lo, a_min))
        hi = a_max if hi is None else (hi if a_max is None else max(hi, a_max))
    except (TypeError, ValueError, InvalidOperation):  # NaN and friends: ask the table
        return new, (True, True)
    new.min_value, new.max_value = _to_text(lo), _to_text(hi)
    return new, (redo_min, redo_max)


def _recompute_bounds(cur, target, columns: dict[str, str], stats: dict[str, ColumnStats],
                      which: dict[str, tuple[bool, bool]]) -> None:
    """Min and max of a few columns straight from the table (after a removed row held them)."""
    if not which:
        return
    exprs = []
    for name in which:
        bound = _bound(name, columns[name])
        exprs += [sql.SQL("min({})").format(bound), sql.SQL("max({})").format(bound)]
    row: list = []
    for part in select_lists(exprs, 2):
        cur.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(part), target))
        row.extend(cur.fetchone())
    for i, name in enumerate(which):
        stats[name].min_value, stats[name].max_value = _to_text(row[2 * i]), _to_text(row[2 * i + 1])


def _drift(cur, delta: Delta, columns: dict[str, str]) -> dict[str, int]:
    """Per column, how many replaced rows held a non-null value their new version no longer has."""
    return {n: lost for n, (lost, _) in replaced_changes(cur, delta, columns).items()}


def replaced_changes(cur, delta: Delta, columns: dict[str, str]) -> dict[str, tuple[int, bool]]:
    """Per column outside the key, what the rows an upsert replaced lost: how many held a non-null
    value their new version no longer has (a sketch's drift), and whether any of them changed at
    all. One join of the replaced rows with their new versions per batch (kept on ``delta``, which
    the statistics and the profiles share); empty without replaced rows or a key to pair them."""
    names = [n for n in columns if n not in delta.key]
    if delta.removed is None or not delta.key or not names:
        return {}
    missing = [n for n in names if n not in delta.changes]
    if missing:
        exprs = []
        for name in missing:
            c = sql.Identifier(name)
            exprs += [sql.SQL("count(*) FILTER (WHERE r.{c} IS NOT NULL AND r.{c} IS DISTINCT FROM a.{c})").format(c=c),
                      sql.SQL("coalesce(bool_or(r.{c} IS DISTINCT FROM a.{c}), false)").format(c=c)]
        row: list = []
        for part in select_lists(exprs, 2):  # a wide table needs more than one statement
            cur.execute(sql.SQL("SELECT {} FROM {} r JOIN {} a USING ({})").format(
                sql.SQL(", ").join(part), delta.removed, delta.added, sql.SQL(", ").join(map(sql.Identifier, delta.key))))
            row.extend(cur.fetchone())
        delta.changes.update({name: (row[2 * i], row[2 * i + 1]) for i, name in enumerate(missing)})
    return {n: delta.changes[n] for n in names}


def _hash(column: str, kind: str) -> sql.Composable:
    """A 64-bit hash, equal for values SQL holds equal (numeric ``1`` and ``1.0`` alike).

    Each type hashes its own binary form (cheaper than text); a column whose type widens gets its
    sketch rebuilt, so hashes never mix across types.
    """
    return _hash_of(sql.Identifier(column), kind)


def _hash_of(ident: sql.Composable, kind: str) -> sql.Composable:
    """:func:`_hash` of a value expression of type ``kind``."""
    if kind in ("smallint", "integer", "bigint"):
        return sql.SQL("hashint8extended({}::bigint, 0)").format(ident)
    if kind in ("real", "double precision"):
        # float8's own hash (0 and -0 alike), a tenth of the cost of hashing the value as numeric.
        return sql.SQL("hashfloat8extended({}::float8, 0)").format(ident)
    if kind in NUMERIC:
        # The numeric hash leaves out the sign, so a negative value's hash is hashed again (as an
        # int8): x and -x are two values to the sketch, with hashes as unrelated as any two.
        return sql.SQL("CASE WHEN sign({v}::numeric) = -1 THEN hashint8extended(hash_numeric_extended({v}::numeric, 0), 0) "
                       "ELSE hash_numeric_extended({v}::numeric, 0) END").format(v=ident)
    if kind in ("timestamp", "timestamptz"):
        # timestamptz and timestamp share their representation (microseconds since 2000 UTC).
        return sql.SQL("timestamp_hash_extended({}::timestamp, 0)").format(ident)
    if kind == "date":
        return sql.SQL("hashint4extended({} - date '2000-01-01', 0)").format(ident)
    if kind == "boolean":
        return sql.SQL("hashint4extended({}::int, 0)").format(ident)
    if kind == "jsonb":
        return sql.SQL("jsonb_hash_extended({}, 0)").format(ident)
    return sql.SQL("hashtextextended({}, 0)").format(ident)


def _add_to_sketches(cur, relation: sql.Composable, columns: dict[str, str], sketches: dict[str, bytearray],
                     spread: dict[str, float] | None = None) -> None:
    """Merge ``relation``'s values into each column's HyperLogLog registers (in ``sketches``).

    The low ``HLL_P`` bits of a value's hash pick the register; its rank is one more than the number
    of leading zeros in the remaining ``HLL_Q`` bits. The value with the highest rank in a register
    is the one whose remaining bits are smallest, so PostgreSQL returns ``min`` of them per register:
    integer work per value, one grouped scan per column (``UNION ALL`` runs about twice as fast as
    unpivoting every column in one scan), at most 2^14 rows per column back to the driver.

    Grouping the values costs several times hashing them. ``spread`` (column -> distinct values
    expected per register) lets a scan group only the values of rank :func:`rank_floor` or more
    (one in 2^(floor-1)), which every register almost surely holds; the registers that hold none
    are scanned again, all their values. Either way the registers are exactly those of all values.
    """
    if not columns:
        return
    floors = {n: rank_floor((spread or {}).get(n, 0.0)) for n in columns}
    found: dict[str, bytearray] = {}
    _merge_registers(cur, sql.SQL(" UNION ALL ").join(
        _register_scan(name, _hash(name, kind), relation, floors[name]) for name, kind in columns.items()),
        columns, found)
    missing = {n: [i for i, rank in enumerate(found[n]) if not rank] for n in columns if floors[n] > 1}
    missing = {n: idx for n, idx in missing.items() if idx}
    if missing:
        _merge_registers(cur, sql.SQL(" UNION ALL ").join(
            _register_scan(name, _hash(name, columns[name]), relation, 1, idx) for name, idx in missing.items()),
            missing, found)
    for name, registers in found.items():
        sketches[name] = bytearray(union(sketches.get(name, bytes(HLL_M)), registers))


def rank_floor(per_register: float) -> int:
    """The highest rank that a register with ``per_register`` distinct values almost surely reaches:
    one in 2^(rank-1) values has that rank or more, and the expected number of the 2^14 registers
    with none of them stays below 0.1 (e^-12 each)."""
    rank = 1
    while per_register * 2.0 ** -rank >= FLOOR_MARGIN:
        rank += 1
    return rank


def distinct_estimate(sampled: int, distinct: int, rows: int) -> float:
    """Distinct values expected in ``rows`` rows whose first ``sampled`` rows hold ``distinct``:
    the ``d`` with d·(1 − e^(−sampled/d)) = distinct (values drawn evenly), at most ``rows``."""
    if sampled <= 0 or distinct >= sampled:
        return float(rows)
    low, high = float(distinct), float(max(rows, distinct))
    if high * -math.expm1(-sampled / high) <= distinct:
        return high
    for _ in range(60):
        mid = (low + high) / 2
        if mid * -math.expm1(-sampled / mid) < distinct:
            low = mid
        else:
            high = mid
    return low


def _add_batch_sketches(cur, added: sql.Composable, columns: dict[str, str], sketches: dict[str, bytearray],
                        batch: dict[str, bytearray]) -> None:
    """:func:`_add_to_sketches` of the added rows, taking the registers already computed for the batch."""
    for name in columns:
        if name in batch:
            sketches[name] = bytearray(union(sketches.get(name, bytes(HLL_M)), batch[name]))
    _add_to_sketches(cur, added, {n: k for n, k in columns.items() if n not in batch}, sketches)


def _share_sketches(columns: dict[str, str], many, spread: dict[str, float] | None = None
                    ) -> tuple[dict[str, str], dict[str, str]]:
    """The sketch scans of ``many`` columns in two shares of about equal cost, the first share
    lighter by the value counts of the other columns, the second by the aggregates of every
    column, which their sessions also compute. A scan that groups one value in 2^(floor-1)
    (``spread``, see :func:`_add_to_sketches`) costs its hashing (a third) and that share of the
    grouping."""
    shares: tuple[dict[str, str], dict[str, str]] = ({}, {})
    load = [float(VALUE_COUNT_COST * sum(1 for n in columns if n not in many)),
            float(AGGREGATE_COST * len(columns))]
    floors = {n: rank_floor((spread or {}).get(n, 0.0)) for n in columns}
    cost = {n: SKETCH_COST.get(kind, SKETCH_COST["text"]) * (1 + 2 * 2.0 ** (1 - floors[n])) / 3
            for n, kind in columns.items() if n in many}
    for name in sorted(cost, key=lambda n: -cost[n]):
        i = 0 if load[0] <= load[1] else 1
        shares[i][name] = columns[name]
        load[i] += cost[name]
    return shares


class BatchSketches:
    """The HyperLogLog registers, counts, bounds, sums and exact value counts of a batch's staged
    rows, computed on two other sessions while the merge transaction writes the rows.

    On a large batch the sketch scans are the catalog's largest cost, and the merge's session would
    run them one after another on one core. The staged rows, typed as the table holds them
    (``source``), are committed and readable by other sessions, so two threads scan them while the
    merge writes, and the work spreads over the cores. The registers describe the added rows
    exactly when the merge left out only exact duplicates or rows the table already holds
    (``Delta.staged_values``); the counts, bounds, sums and value counts only when it left out no
    row at all (``Delta.staged_rows``); otherwise the merge scans the added rows itself. Only
    columns with more than :data:`TOP_VALUES_LIMIT` values in the first rows are sketched; the
    others are counted value by value. A failure only means the merge scans the rows itself.
    """

    def __init__(self, dsn: str, source: sql.Composable, columns: dict[str, str], rows: int):
        import threading

        self._conns: list = []
        self._registers: dict[str, bytearray] = {}
        self._aggregates: dict[str, tuple] | None = None
        self._value_counts: tuple[frozenset, list, set] | None = None
        # Two sessions, sharing the sketch scans by cost (the first also counts values, the second
        # aggregates): with the merge's own session, the batch's catalog work spreads over both
        # cores. The first finds which columns need sketches and shares them out, so both go by the
        # same rows.
        self._shares: tuple[dict[str, str], dict[str, str]] | None = None
        self._shared = threading.Event()
        self._cancelled = False
        self._spread: dict[str, float] = {}
        self._threads = [threading.Thread(target=self._run, args=(dsn, source, dict(columns), rows, part),
                                          daemon=True, name=f"dataops-batch-sketches-{part}") for part in (0, 1)]
        for thread in self._threads:
            thread.start()

    def _run(self, dsn: str, source: sql.Composable, columns: dict[str, str], rows: int, part: int) -> None:
        import psycopg2

        try:
            conn = psycopg2.connect(dsn, application_name="dataops-sketch", connect_timeout=10)
            self._conns.append(conn)
            try:
                with conn, conn.cursor() as cur:
                    cur.execute("SET LOCAL work_mem = '64MB'; SET LOCAL TimeZone = 'UTC'; SET LOCAL jit = off")
                    staged = sql.SQL("({})").format(source)
                    if part == 0:
                        counts = _sampled_distinct(cur, staged, columns)
                        sampled = min(SAMPLED_ROWS, rows)
                        # The non-null values of the batch, in the sample's proportion, drawn from how many distinct.
                        self._spread = {n: distinct_estimate(filled, c, rows * filled // max(sampled, 1)) / HLL_M
                                        for n, (c, filled) in counts.items()}
                        many = _past_limit(counts)
                        self._shares = _share_sketches(columns, many, self._spread)
                        self._shared.set()
                    else:
                        self._shared.wait()
                    if self._cancelled:
                        return
                    if self._shares is not None:
                        sketches: dict[str, bytearray] = {}
                        _add_to_sketches(cur, staged, self._shares[part], sketches, self._spread)
                        self._registers.update(sketches)  # the two shares' columns differ
                    if part == 0:
                        few = {n: k for n, k in columns.items() if n not in many}
                        if few:
                            self._value_counts = (frozenset(few), *_value_counts(cur, staged, few))
                    if part == 1:
                        self._aggregates = _aggregate(cur, staged, columns)
            finally:
                conn.close()
        except Exception as exc:  # the merge scans the rows itself
            log.debug("batch sketches failed: %s", exc)
        finally:
            self._shared.set()  # the first session failed: the second still aggregates

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()

    def result(self) -> dict[str, bytearray]:
        """Wait for the registers; column -> registers (columns missing where they could not be computed)."""
        self._join()
        return self._registers

    def aggregates(self) -> dict[str, tuple] | None:
        """Wait for the staged rows' :func:`_aggregate` (None if it could not be computed)."""
        self._join()
        return self._aggregates

    def value_counts(self) -> tuple[frozenset, list, set] | None:
        """Wait for the staged rows' :func:`_value_counts` of the columns with few values in their
        first rows: (those columns, the counts, the columns past the limit), or None."""
        self._join()
        return self._value_counts

    def cancel(self) -> None:
        """Stop the scans that still run (the merge no longer needs them) and wait for the threads."""
        self._cancelled = True
        for conn in list(self._conns):
            try:
                conn.cancel()
            except Exception:  # already finished or closed
                pass
        self._join()


def _add_values_to_sketches(cur, values: dict[str, tuple[str, list[str]]], sketches: dict[str, bytearray]) -> None:
    """Merge known values into each column's registers: ``values`` maps a column to its type and
    values as text (a low-cardinality column's counted values), hashed as the column's own."""
    if not values:
        return
    _merge_registers(cur, sql.SQL(" UNION ALL ").join(
        _register_scan(name, _hash_of(sql.SQL("v::{}").format(sql.SQL(kind)), kind),
                       sql.SQL("(SELECT unnest({}::text[]) AS v)").format(sql.Literal(texts)))
        for name, (kind, texts) in values.items()), values, sketches)


def _register_scan(name: str, hashed: sql.Composable, relation: sql.Composable, floor: int = 1,
                   registers: Sequence[int] | None = None) -> sql.Composable:
    """Per register of one column, the smallest remaining hash bits of ``relation``'s values: of the
    values of rank ``floor`` or more only, and in ``registers`` only if given."""
    where = [sql.SQL("h IS NOT NULL")]
    if floor > 1:  # rank >= floor: the remaining bits are below 2^(HLL_Q + 1 - floor)
        where.append(sql.SQL("(h >> {p}) & {wmask} < {bound}").format(
            p=sql.Literal(HLL_P), wmask=sql.Literal((1 << HLL_Q) - 1), bound=sql.Literal(1 << (HLL_Q + 1 - floor))))
    if registers is not None:  # a constant array: PostgreSQL looks each value up in a hash table
        where.append(sql.SQL("(h & {mask})::int = ANY({regs}::int[])").format(
            mask=sql.Literal(HLL_M - 1), regs=sql.Literal("{" + ",".join(map(str, registers)) + "}")))
    return sql.SQL("SELECT {name}, (h & {mask})::int, min((h >> {p}) & {wmask}) "
                   "FROM (SELECT {hash} AS h FROM {rel} rel) s WHERE {where} GROUP BY 2").format(
        name=sql.Literal(name), hash=hashed, rel=relation, mask=sql.Literal(HLL_M - 1),
        p=sql.Literal(HLL_P), wmask=sql.Literal((1 << HLL_Q) - 1), where=sql.SQL(" AND ").join(where))


def _merge_registers(cur, query: sql.Composable, columns, sketches: dict[str, bytearray]) -> None:
    cur.execute(query)
    for name in columns:
        sketches.setdefault(name, bytearray(HLL_M))
    top = HLL_Q + 1
    for name, idx, rest in cur.fetchall():
        rank = top - rest.bit_length()
        registers = sketches[name]
        if registers[idx] < rank:
            registers[idx] = rank


def _load_sketches(cur, cat, dataset: str) -> dict[str, bytearray]:
    cur.execute(sql.SQL("SELECT column_name, registers FROM {}.column_hll WHERE dataset = %s").format(cat), (dataset,))
    return {name: bytearray(registers) for name, registers in cur.fetchall()}


def _save_sketches(cur, cat, dataset: str, sketches: dict[str, bytearray]) -> None:
    from psycopg2.extras import execute_values

    cur.execute(sql.SQL("DELETE FROM {}.column_hll WHERE dataset = %s AND NOT column_name = ANY(%s)").format(cat),
                (dataset, list(sketches)))
    if sketches:
        execute_values(cur, sql.SQL(
            "INSERT INTO {}.column_hll (dataset, column_name, registers) VALUES %s "
            "ON CONFLICT (dataset, column_name) DO UPDATE SET registers = EXCLUDED.registers").format(cat).as_string(cur),
            [(dataset, name, bytes(registers)) for name, registers in sketches.items()])


def union(a: bytes, b: bytes) -> bytes:
    """The HyperLogLog registers of the union of two sketches' values (register by register, max)."""
    return bytes(map(max, a, b))


def hll_estimate(registers: bytes) -> float:
    """Cardinality from HyperLogLog registers, by Ertl's improved estimator.

    It is unbiased from a handful of values to billions without empirical correction tables
    (O. Ertl, "New cardinality estimation algorithms for HyperLogLog sketches", 2017).
    """
    counts = [0] * (HLL_Q + 2)
    for rank, n in Counter(registers).items():
        counts[rank] += n
    if counts[0] == HLL_M:
        return 0.0
    z = HLL_M * _tau(1 - counts[HLL_Q + 1] / HLL_M)
    for k in range(HLL_Q, 0, -1):
        z = 0.5 * (z + counts[k])
    z += HLL_M * _sigma(counts[0] / HLL_M)
    return HLL_M * HLL_M / (2 * math.log(2)) / z


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        previous, z = z, z + x * y
        y += y
        if z == previous:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1 - x
    while True:
        x = math.sqrt(x)
        previous = z
        y *= 0.5
        z -= (1 - x) ** 2 * y
        if z == previous:
            return z / 3


def _count_values(cur, delta: Delta, columns: dict[str, str], stats: dict[str, ColumnStats]) -> None:
    """Exact value counts of low-cardinality columns; a column past the limit stops being tracked.

    A column with more distinct values than the limit among the first :data:`SAMPLED_ROWS` added
    rows is past it without counting the rest (those rows are in the table); the others are
    counted in one scan of the added (and one of the removed) rows for all columns.
    """
    tracked = [n for n, s in stats.items() if s.top_values is not None]
    # Counted from the staged rows (by the stage tasks, or beside the merge), for these columns.
    known = delta.batch_value_counts or (frozenset(), [], set())
    for name in [n for n in tracked if n in known[2]] + list(_many_values(
            cur, delta.added, {n: columns[n] for n in tracked if n not in known[0]})):
        stats[name].top_values = None
    tracked = [n for n in tracked if stats[n].top_values is not None]
    if not tracked:
        return
    for relation, sign in ((delta.added, 1), (delta.removed, -1)):
        if relation is None:
            continue
        counted = [row for row in known[1] if row[0] in tracked] if sign > 0 else []
        scan = [n for n in tracked if sign < 0 or n not in known[0]]
        many = set()
        if scan:
            rows, many = _value_counts(cur, relation, {n: columns[n] for n in scan})
            counted += rows
        for name in many:
            stats[name].top_values = None
        tracked = [n for n in tracked if n not in many]
        for name, value, count in counted:
            counts = stats[name].top_values
            if columns[name] == "numeric":
                value = _numeric_key(counts, value)
            counts[value] = counts.get(value, 0) + sign * count
    for name in tracked:
        counts = {v: n for v, n in stats[name].top_values.items() if n > 0}
        stats[name].top_values = counts if len(counts) <= TOP_VALUES_LIMIT else None


def _many_values(cur, relation: sql.Composable, columns: dict[str, str]) -> set[str]:
    """Columns with more than :data:`TOP_VALUES_LIMIT` distinct values in the first
    :data:`SAMPLED_ROWS` rows of ``relation``."""
    return _past_limit(_sampled_distinct(cur, relation, columns)) if columns else set()


def join_value_counts(a: tuple[frozenset, list, set], b: tuple[frozenset, list, set] | None
                      ) -> tuple[frozenset, list, set]:
    """Two sets of staged rows' value counts of different columns, as one (see BatchSketches.value_counts)."""
    if b is None:
        return a
    return a[0] | b[0], a[1] + b[1], a[2] | b[2]


def _past_limit(sampled: dict[str, tuple[int, int]]) -> set[str]:
    """The columns of :func:`_sampled_distinct` with more than :data:`TOP_VALUES_LIMIT` distinct values."""
    return {n for n, (count, _) in sampled.items() if count > TOP_VALUES_LIMIT}


def _sampled_distinct(cur, relation: sql.Composable, columns: dict[str, str]) -> dict[str, tuple[int, int]]:
    """Each column's (distinct values, non-null values) in the first :data:`SAMPLED_ROWS` rows of ``relation``."""
    counts: dict[str, tuple[int, int]] = {}
    names, size = list(columns), MAX_SELECT_LIST // 2
    for part in (names[i:i + size] for i in range(0, len(names), size)):
        cur.execute(sql.SQL("SELECT {} FROM (SELECT * FROM {} rel LIMIT {}) rel").format(
            sql.SQL(", ").join(sql.SQL("count(DISTINCT {k}), count({c})").format(
                k=_value_key(n, columns[n]), c=sql.Identifier(n)) for n in part),
            relation, sql.Literal(SAMPLED_ROWS)))
        row = cur.fetchone()
        counts.update((n, (row[2 * i], row[2 * i + 1])) for i, n in enumerate(part))
    return counts


def _value_counts(cur, relation: sql.Composable, columns: dict[str, str]) -> tuple[list[tuple[str, str, int]], set[str]]:
    """(column, value, rows) of every non-null value of the columns in ``relation``, and the columns
    with more than :data:`TOP_VALUES_LIMIT` values (whose counts are left out: PostgreSQL counts
    their groups and sends back one).

    One scan for all columns: a grouping set per column, each its own hash table (one grouped scan
    per column costs a scan each). ``GROUPING`` tells which column a result row counts.
    """
    names = list(columns)
    out, many = [], set()
    per = MAX_SELECT_LIST // 2  # a flag and a value per column
    for part in (names[i:i + per] for i in range(0, len(names), per)):
        keys = [_value_key(n, columns[n]) for n in part]
        flags = [sql.Identifier(f"g{i}") for i in range(len(part))]
        grouped = sql.SQL("SELECT {}, {}, count(*) AS n FROM {} rel GROUP BY GROUPING SETS ({})").format(
            sql.SQL(", ").join(sql.SQL("GROUPING({}) AS {}").format(k, f) for k, f in zip(keys, flags)),
            sql.SQL(", ").join(sql.SQL("{} AS {}").format(k, sql.Identifier(f"v{i}")) for i, k in enumerate(keys)),
            relation, sql.SQL(", ").join(sql.SQL("({})").format(k) for k in keys))
        # A null group besides the limit's values is still within it.
        cur.execute(sql.SQL(
            "SELECT * FROM (SELECT *, count(*) OVER w AS groups, row_number() OVER w AS nth FROM ({}) g "
            "WINDOW w AS (PARTITION BY {})) c WHERE groups <= {} OR nth = 1").format(
            grouped, sql.SQL(", ").join(flags), sql.Literal(TOP_VALUES_LIMIT + 1)))
        width = len(part)
        for row in cur.fetchall():
            i = row.index(0)  # the one column this row is grouped by
            if row[-2] > TOP_VALUES_LIMIT + 1:
                many.add(part[i])
            elif row[width + i] is not None:
                out.append((part[i], row[width + i], row[2 * width]))
    return out, many


def _value_key(column: str, kind: str) -> sql.Composable:
    """A value as the text it is counted under: as the table holds it (numeric ``1.20``; equal numerics
    written with other scales are counted together by :func:`_numeric_key`)."""
    return sql.SQL("{}::text").format(sql.Identifier(column))


def _numeric_key(counts: dict, value: str) -> str:
    """The key ``value`` is counted under: an equal numeric already counted (``1.2`` for ``1.20``) is
    the same value, shown with the larger of the two scales (older catalogs stored trimmed scales)."""
    try:
        number = Decimal(value)
    except InvalidOperation:
        return value
    for key in counts:
        if key != value and _same_number(key, number):
            keep = max(key, value, key=lambda k: -Decimal(k).as_tuple().exponent)
            if keep != key:
                counts[keep] = counts.pop(key)
            return keep
    return value


def _same_number(key: str, number: Decimal) -> bool:
    try:
        return Decimal(key) == number
    except InvalidOperation:
        return False


def _store(cur, cat, dataset: str, rows: int, stats: dict[str, ColumnStats], estimates: dict[str, float]) -> None:
    from psycopg2.extras import execute_values

    data = []
    for name, s in stats.items():
        exact = s.top_values is not None
        distinct = len(s.top_values) if exact else min(round(estimates.get(name, 0.0)), s.non_null_count)
        data.append((name, rows - s.non_null_count, s.non_null_count, distinct, not exact, s.min_value,
                     s.max_value, s.value_sum, json.dumps(s.top_values) if exact else None, s.drift))
    execute_values(cur, sql.SQL(
        "UPDATE {cat}.columns c SET null_count = d.nulls, non_null_count = d.non_null, distinct_count = d.n_distinct, "
        "distinct_estimated = d.estimated, min_value = d.lo, max_value = d.hi, value_sum = d.total, "
        "top_values = d.top::jsonb, sketch_drift = d.drift, stats_updated_at = now() "
        "FROM (VALUES %s) d(name, nulls, non_null, n_distinct, estimated, lo, hi, total, top, drift) "
        "WHERE c.dataset = {ds} AND c.name = d.name").format(cat=cat, ds=sql.Literal(dataset)).as_string(cur),
        data, template="(%s, %s::bigint, %s::bigint, %s::bigint, %s::boolean, %s, %s, %s::numeric, %s, %s::bigint)")


def top(values: dict | None, limit: int = TOP_VALUES_SHOWN) -> list[dict] | None:
    """The most frequent values of a tracked column, most frequent first."""
    if values is None:
        return None
    ranked = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [{"value": v, "count": n} for v, n in ranked]


def json_bound(text: str | None, kind: str):
    """A stored min/max as a JSON value: numbers as numbers, dates as ISO strings."""
    if text is None:
        return None
    if kind == "boolean":
        return text == "1"
    if kind in TEMPORAL:
        return text
    value = Decimal(text)
    return int(value) if value == value.to_integral_value() and kind != "double precision" and kind != "real" \
        else float(value)
