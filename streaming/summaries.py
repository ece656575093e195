"""What a stage task's staged rows add to the catalog, computed on their Arrow columns as they are staged.

For every staged column a task keeps a :class:`ColumnSummary`: the non-null count, the bounds
(values; the length of text; booleans as 0 and 1), the exact sum of numbers, the exact count of
every value while the column has at most :data:`VALUE_LIMIT` of them, and the HyperLogLog
registers of its values. The driver merges the tasks' summaries (:func:`merge`), and the merge
takes from them what it would otherwise compute by scanning the staged rows in PostgreSQL.

Each piece is exactly what the SQL over the staged rows gives: values are read as PostgreSQL reads
the staged text (:mod:`streaming.pgvalues`: ``+5`` is 5, ``1.50`` keeps its scale, ``1.234e+02`` is the
double 123.4), counted under the text PostgreSQL prints for them (``value::text``), and hashed with
PostgreSQL's own hash functions (:mod:`streaming.pghash`). A piece that cannot be computed exactly
for a column (a value past 64-bit integers, a double too small for a decimal sum, a JSON column)
is left out of that column's summary, and the merge computes it in SQL as before: nothing here is
an approximation.

Pure; runs where the row stage runs (executor tasks, or the driver).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streaming import pghash, pgvalues
from streaming.pgvalues import EXACT, MANY

VALUE_LIMIT = 50  # columns with at most this many distinct values keep exact value counts (the catalog's limit)
SAMPLE_ROWS = 10_000  # a column with more than VALUE_LIMIT values in its first rows is counted no further
PIECES = frozenset({"aggregate", "values", "registers"})
INTEGERS = ("smallint", "integer", "bigint")


@dataclasses.dataclass
class ColumnSummary:
    """One column's share of the catalog statistics, from the rows one or more tasks staged.

    Attributes:
        kind: the PostgreSQL type the values were read as.
        count: non-null values.
        lo / hi: the smallest and largest value as ``min``/``max`` return them through psycopg2 (the
            length for text, 0 or 1 for booleans); None without values.
        total: the exact sum of a numeric column (int, or Decimal for numerics and doubles, whose SQL
            sums are numeric); None for other types.
        values: text as PostgreSQL prints it -> rows, while there are at most :data:`VALUE_LIMIT`;
            None past the limit.
        registers: HyperLogLog registers (:mod:`streaming.pghash`) of the values, as bytes.
        exact: the pieces computed exactly ("aggregate": count, bounds and total; "values";
            "registers"); the merge computes the others in SQL.
    """

    kind: str
    count: int = 0
    lo: Any = None
    hi: Any = None
    total: Any = None
    values: dict | None = dataclasses.field(default_factory=dict)
    registers: bytes | None = None
    exact: frozenset = PIECES


class ColumnSummarizer:
    """Accumulates one column's :class:`ColumnSummary` over the blocks a task stages."""

    def __init__(self, kind: str):
        self.summary = ColumnSummary(kind, exact=PIECES if kind in pgvalues.KINDS else frozenset())
        self._registers = np.zeros(pghash.HLL_M, np.uint8)
        self._sampled = 0  # rows looked at by the sample check of the value counts
        self._scale: int | None = None  # numerics: the scale the blocks so far were read at

    @property
    def scale(self) -> int | None:
        """Numerics: the scale the blocks so far were read at (the next block's hint)."""
        return self._scale

    def add(self, values: "pa.Array | pgvalues.Values") -> None:
        """Add a block of the column's staged values: cleaned text, or booleans, NULL for null (or
        that block already read as the column's type, :func:`streaming.pgvalues.read`)."""
        s = self.summary
        if not s.exact:
            return
        try:
            typed = values if isinstance(values, pgvalues.Values) else pgvalues.read(values, s.kind, self._scale)
            self._scale = getattr(typed, "scale", None)
            if not typed.count:
                return
            if "aggregate" in s.exact:
                if typed.aggregated:
                    _add_aggregate(s, typed)
                else:
                    s.exact -= {"aggregate"}
            if "values" in s.exact and s.values is not None:
                self._count(typed)
            if "registers" in s.exact:
                # A value set's registers need each value once: while the column is counted (few
                # values), only its distinct spellings are hashed.
                counted = "values" in s.exact and s.values is not None
                hashes = (pgvalues.read(pc.unique(typed.raw), s.kind, self._scale) if counted else typed).hashes()
                if hashes is None:
                    s.exact -= {"registers"}
                else:
                    pghash.registers(hashes, self._registers)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, ArithmeticError):
            # Values this module cannot read as PostgreSQL does: the merge's SQL reads the column.
            s.exact = frozenset()

    def _count(self, typed: pgvalues.Values) -> None:
        s = self.summary
        if self._sampled < SAMPLE_ROWS:
            # A column with many values shows it in its first rows: counting stops there.
            head = min(SAMPLE_ROWS - self._sampled, typed.count)
            self._sampled += head
            if typed.distinct_at_least(head) > VALUE_LIMIT:
                s.values = None
                return
        counted = typed.value_counts(VALUE_LIMIT)
        if counted is MANY:
            s.values = None
            return
        if counted is None:  # too many spellings to tell how many values they are
            s.exact -= {"values"}
            return
        _add_values(s, counted)

    def result(self) -> ColumnSummary:
        s = self.summary
        if "registers" in s.exact:
            s.registers = self._registers.tobytes()
        if "values" not in s.exact:
            s.values = None
        return s


def merge(summaries: list[ColumnSummary]) -> ColumnSummary | None:
    """One column's summary over several tasks' (None when they read it as different types)."""
    if not summaries or len({s.kind for s in summaries}) != 1:
        return None
    out = ColumnSummary(summaries[0].kind, exact=frozenset.intersection(*(s.exact for s in summaries)))
    for s in summaries:
        _add_aggregate(out, s)
        if out.values is not None:
            if s.values is None:
                out.values = None
            else:
                _add_values(out, s.values.items())
    if "registers" in out.exact:
        registers = np.zeros(pghash.HLL_M, np.uint8)
        for s in summaries:
            np.maximum(registers, np.frombuffer(s.registers, np.uint8), out=registers)
        out.registers = registers.tobytes()
    return out


def _add_aggregate(s: ColumnSummary, part: "ColumnSummary | pgvalues.Values") -> None:
    """Add the count, bounds and total of ``part`` (a block read, or another summary) to ``s``."""
    s.count += part.count
    if part.lo is not None:
        s.lo = part.lo if s.lo is None else min(s.lo, part.lo)
        s.hi = part.hi if s.hi is None else max(s.hi, part.hi)
    if part.total is not None:
        s.total = part.total if s.total is None else EXACT.add(s.total, part.total)


def _add_values(s: ColumnSummary, counted) -> None:
    """Add ``(text, rows)`` value counts to ``s``'s, which are dropped past :data:`VALUE_LIMIT` values."""
    for text, n in counted:
        s.values[text] = s.values.get(text, 0) + n
    if len(s.values) > VALUE_LIMIT:
        s.values = None
