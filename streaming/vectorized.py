"""The row stage's column kernels on Arrow arrays: trim, null tokens, type checks, line numbers.

Every function works on a whole column at once (Arrow compute, compiled RE2 patterns), so the common
case costs no Python per value. The type checks are *sound shortcuts* of :class:`streaming.schema.ColumnTyper`:
a column block they accept is one the typer accepts, with the same resulting type; a block they do not
accept goes through the typer value by value, which decides (and explains) exactly as it always has.
That is what keeps the vectorized stage's result identical to the exact one, row for row.

Pure; runs wherever the row stage runs (executor tasks, or the driver for a small batch).
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from streaming.schema import RE2_VALUE

# The typer's patterns, for RE2: a whole value, or values joined by line breaks.
_ONE = {t: rf"^(?:{p})$" for t, p in RE2_VALUE.items()}
_JOINED = {t: rf"\A(?:{p})(?:\n(?:{p}))*\z" for t, p in RE2_VALUE.items()}


def clean(raw: pa.Array, nulls: frozenset, empty_is_null: bool) -> pa.Array:
    """Trim spaces and tabs from both ends, then turn null tokens (and, if asked, empty values) into NULL."""
    # Both are ASCII, never a byte of a longer UTF-8 sequence: a third of utf8_trim's cost.
    values = pc.ascii_trim(raw, characters=" \t")
    tokens = [t for t in nulls if t]
    mask = pc.is_in(values, value_set=pa.array(tokens, pa.string())) if tokens else None
    if empty_is_null or "" in nulls:
        empty = pc.equal(pc.binary_length(values), 0)
        mask = empty if mask is None else pc.or_(mask, empty)
    if mask is None or not pc.any(mask).as_py():
        return values
    return pc.if_else(mask, pa.scalar(None, pa.string()), values)


def all_fit(values: pa.Array, kind: str, bool_tokens: frozenset, line_breaks: bool = True) -> bool:
    """Whether every non-NULL value is one :class:`~streaming.schema.ColumnTyper` accepts for ``kind``
    without looking further (False means "ask the typer", not "does not fit").

    Without ``line_breaks`` (no value holds one) the values are joined by line breaks and matched in
    one pass, as the typer does; otherwise each value is matched on its own.
    """
    if kind == "boolean":
        if not bool_tokens or not pc.all(pc.string_is_ascii(values)).as_py():
            return False
        lowered = pc.utf8_lower(values)
        return bool(pc.all(pc.is_in(lowered, value_set=pa.array(sorted(bool_tokens), pa.string()))).as_py())
    if kind not in RE2_VALUE:
        return False
    if line_breaks:
        return bool(pc.all(pc.match_substring_regex(values, _ONE[kind])).as_py())
    present = values.drop_null() if values.null_count else values
    if not len(present):
        return True
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(present)], pa.int32()), present), "\n")
    return bool(pc.match_substring_regex(joined, _JOINED[kind])[0].as_py())


def first_value(values: pa.Array) -> str | None:
    """The first non-NULL value, or None."""
    present = values.drop_null()
    return present[0].as_py() if len(present) else None


def newlines_per_row(columns: list[pa.Array], total: int | None = None) -> tuple[pa.Array | None, set[int]]:
    """How many line breaks each row's raw values hold (None when none does), and which columns hold
    any. ``total``, when the caller knows it, is how many there are in all: columns are counted until
    they are found."""
    per_row, found, holding = None, 0, set()
    for ci, col in enumerate(columns):
        if total is not None and found >= total:
            break
        if not _may_hold(col, b"\n"):
            continue
        counts = pc.count_substring(col, "\n")
        in_column = pc.sum(counts).as_py() or 0
        if not in_column:
            continue
        holding.add(ci)
        found += in_column
        per_row = counts if per_row is None else pc.add(per_row, counts)
    return per_row, holding


def _may_hold(column: pa.Array, needle: bytes) -> bool:
    """Whether a string column's bytes may hold ``needle`` (a byte search over its data buffer, which
    may hold more than the column's own values: false positives only)."""
    data = column.buffers()[2] if column.type == pa.string() else None
    return data is None or re.compile(re.escape(needle)).search(memoryview(data)) is not None


_RANGE = pa.array([], pa.int64())


def _range(rows: int) -> pa.Array:
    global _RANGE
    if len(_RANGE) < rows:
        _RANGE = pa.array(range(max(rows, 2 * len(_RANGE))), pa.int64())
    return _RANGE.slice(0, rows)


def positions(first: int, rows: int, newlines: pa.Array | None) -> pa.Array:
    """Each row's first physical line: rows follow each other, each taking one line plus its values'
    line breaks."""
    base = pc.add(_range(rows), first)
    if newlines is None:
        return base
    before = pc.subtract(pc.cumulative_sum(newlines.cast(pa.int64())), newlines.cast(pa.int64()))
    return pc.add(base, before)


def staged(values: pa.Array, kind: str, true_tokens) -> pa.Array:
    """A cleaned column as its staging column takes it: booleans as booleans (the values are known to
    be true or false tokens), everything else as the text PostgreSQL parses."""
    if kind != "boolean":
        return values
    truth = pc.is_in(pc.utf8_lower(values), value_set=pa.array(sorted({t.lower() for t in true_tokens}), pa.string()))
    return pc.if_else(pc.is_valid(values), truth, pa.scalar(None, pa.bool_()))


def ascending_span(values: pa.Array) -> tuple[int, int] | None:
    """(first, last) of a column of integers that strictly increase row after row, else None (a
    null, a value that is no integer, a step that does not go up). No two rows holding such a
    column are equal, which spares the merge its duplicate search."""
    if not len(values) or values.null_count:
        return None
    try:
        numbers = pc.cast(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if len(numbers) > 1 and not pc.all(pc.greater(numbers[1:], numbers[:-1])).as_py():
        return None
    return numbers[0].as_py(), numbers[-1].as_py()
