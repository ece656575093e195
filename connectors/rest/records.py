"""JSON records into the row stage: the REST counterpart of a CSV file task (runs on executors).

A micro-batch of an endpoint arrives as a DataFrame of ``(records, first)`` rows: ``records`` is a
JSON array of up to :data:`CHUNK_RECORDS` records as text, ``first`` the first one's position in
the batch. Each Spark partition becomes one task that flattens its records into columns, cleans and
types them with the same column kernels as CSV files (null tokens, lossless inference, the table's
types, quarantine with a reason) and COPYs them into its own staging table; the driver then merges
every task's staging table in one transaction, exactly as for files.

Flattening: keys of nested objects join with ``__`` (``owner.login`` -> ``owner__login``) down to
``flatten_depth`` levels; arrays, and objects deeper than that, are kept whole as ``jsonb``. JSON
``null`` and empty strings are NULL. Columns come in the order keys first appear, a nested object's
keys in its place. The records become columns in C (``pyarrow`` reads the parsed records into one
struct array); only numbers with a fraction, arrays and deep objects are written out value by value,
and a partition whose records Arrow cannot read as the flattening says (a field both an object and
something else, a field holding an empty object, a record that is no object, ...) is flattened in
Python, with the same result.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from streaming.errors import FileRejected
from streaming.naming import keep_table_names, nested_identifier, unique_names
from connectors.rest.jsontext import dumps_strict
from connectors.staging import copy_to_stage, run_stage_task
from streaming.rowstage import CHUNK_ROWS, JSONB, RESCUED, RowStage, StageReport, StageTask, mismatch_report
from streaming.schema import ColumnTyper

CHUNK_RECORDS = 1000  # records per row of an endpoint's micro-batch
_SURROGATE = re.compile("[\ud800-\udfff]")
# One encoder for every record: json.dumps builds one per call, a quarter of its time on small records.
encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


LENIENT = "\x01"  # marks a row whose records the standard library wrote (and alone reads)


def encode_chunk(records: list, strict: bool = False) -> str:
    """A micro-batch row's records as a JSON array. Records read by the strict parser
    (:mod:`connectors.rest.jsontext`) are written in C, and read back in C; the others are written
    by the standard library after :data:`LENIENT`, for :func:`_parse` to read them as it did."""
    return dumps_strict(records) if strict else LENIENT + encode(records)


def flatten(record: Any, depth: int) -> dict[tuple, Any]:
    """A record's fields by key path (a tuple of keys); objects nested up to ``depth`` levels are
    opened. A record that is not an object is one field, ``value``."""
    if type(record) is not dict:
        return {("value",): record}
    out: dict[tuple, Any] = {}
    _walk(record, (), depth, out)
    return out


def _walk(obj: dict, prefix: tuple, depth: int, out: dict) -> None:
    for key, value in obj.items():
        if depth and type(value) is dict and value:
            _walk(value, (*prefix, key), depth - 1, out)
        else:
            out[(*prefix, key)] = value


def key_order(paths: Iterable[tuple]) -> list[tuple]:
    """Key paths in the columns' order: the order each first appears, the fields of a nested object
    in the object's place (its own NULL value first)."""
    tree: dict = {}
    for path in paths:
        node = tree
        for key in path:
            node = node.setdefault(key, [False, {}])
            leaf, node = node, node[1]
        leaf[0] = True
    out: list[tuple] = []

    def walk(node: dict, prefix: tuple) -> None:
        for key, (is_leaf, children) in node.items():
            if is_leaf:
                out.append((*prefix, key))
            walk(children, (*prefix, key))

    walk(tree, ())
    return out


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _text(value: Any) -> str:
    """A scalar JSON value as the text a column receives ("" is NULL); arrays and objects as JSON."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    return encode(value)


def _json_text(value: Any) -> str:
    return "" if value is None else encode(value)


class _JsonTyper(ColumnTyper):
    """A jsonb column: its values are JSON this module wrote itself, which jsonb takes as they are
    (staged as jsonb). Records read leniently (``strict`` False) may hold NaN or Infinity, which
    Python writes into JSON and jsonb refuses: their values are checked, and the records holding one
    go to quarantine."""

    jsonb_as_is = True

    def __init__(self, bools, strict: bool):
        super().__init__(bools, fixed=JSONB, loose=True)
        self.checks = not strict

    def check(self, values, joined=None, has_null=True) -> list[int]:
        if not self.checks:
            return []
        refused = []
        for i, value in enumerate(values):
            if value is not None:
                try:
                    orjson.loads(value)  # refuses NaN and Infinity, as jsonb does
                except orjson.JSONDecodeError:
                    refused.append(i)
        return refused

    def describe_failure(self, value: str) -> str:
        return "the value holds NaN or Infinity, which a jsonb column cannot store"


def _parse(chunks: Iterable[tuple[str, int]], quarantine) -> tuple[list, list[int], bool, bool]:
    """The records of a partition's rows and their positions; records PostgreSQL cannot store, and
    records without fields, go to ``quarantine(position, text, reason)``. Also whether no record
    holds an empty object (which Arrow cannot tell from an object of NULLs), and whether every row
    was strict (see :func:`encode_chunk`)."""
    records: list = []
    positions: list[int] = []
    plain = every_strict = True
    for text, first in chunks:
        strict = not text.startswith(LENIENT)
        every_strict = every_strict and strict
        # A strict row was written in C from records read in C: no unpaired surrogate, no huge integer.
        batch = orjson.loads(text) if strict else json.loads(text[1:])
        if "{}" in text:
            plain = False
        if "\\u0000" not in text and "{}" not in text and (strict or not _SURROGATE.search(text)):
            records += batch
            positions += range(first, first + len(batch))
            continue
        for seq, record in enumerate(batch, start=first):  # a record at a time, only where one may be refused
            one = encode(record)
            if ("\\u0000" in one and _has_nul(record)) or _SURROGATE.search(one):
                # PostgreSQL text cannot hold NUL, nor UTF-8 an unpaired surrogate.
                shown = one[:1000].encode("utf-8", "backslashreplace").decode("utf-8")
                quarantine(seq, shown, "the record holds a NUL character or an unpaired surrogate, "
                                       "which PostgreSQL cannot store")
            elif record == {}:
                quarantine(seq, one, "the record has no fields")
            else:
                records.append(record)
                positions.append(seq)
    return records, positions, plain, every_strict


@contextlib.contextmanager
def _without_cycle_collection():
    """Parsed records are trees of dicts and lists, with no cycles, and a partition makes ~10^5 of
    them: the cycle collector, run again and again as they are made, would walk them all each time
    to find nothing (a sixth of the time of reading and flattening 50,000 records)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _struct_leaves(records: list, depth: int):
    """The records read by Arrow: ``[(key path, Arrow array or None, whether it is JSON), ...]`` in the
    columns' order (None: a field whose text is written value by value), or None where Arrow's
    reading differs from :func:`flatten`'s."""
    import pyarrow as pa

    try:
        array = pa.array(records)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return None  # a field of two kinds, an integer past 64 bits, ...
    if (isinstance(array, pa.ChunkedArray) or not pa.types.is_struct(array.type) or array.null_count
            or not array.type.num_fields):
        return None
    leaves: list = []

    def walk(struct, prefix: tuple, depth: int) -> bool:
        for field, child in zip(struct.type, struct.flatten()):  # flatten(): NULL where the object is
            path, kind = (*prefix, field.name), child.type
            if depth and pa.types.is_struct(kind):
                if not kind.num_fields:  # only empty objects: none to open
                    return False
                # A NULL object is a missing key, or a null, which flatten keeps as a field of its own.
                if child.null_count and _holds_null(records, path):
                    leaves.append((path, pa.nulls(len(child), pa.string()), False))
                if not walk(child, path, depth - 1):
                    return False
            elif pa.types.is_string(kind):
                leaves.append((path, child, False))
            elif pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_null(kind):
                leaves.append((path, child.cast(pa.string()), False))
            elif pa.types.is_list(kind):
                leaves.append((path, _json_list(child), True))
            else:  # numbers with a fraction (an integer among them is written as one), objects
                leaves.append((path, None, True))
        return True

    return leaves if walk(array, (), depth) else None


def _json_list(lists):
    """Arrays of strings, integers or booleans as the JSON text :func:`encode` writes (None for
    other arrays, or elements JSON escapes as more than a backslash)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    items = lists.values  # what the offsets point into
    kind = items.type
    if items.null_count:
        return None
    if pa.types.is_string(kind):
        if pc.any(pc.match_substring_regex(items, "[\\x00-\\x1f]")).as_py():
            return None
        quoted = pc.replace_substring(pc.replace_substring(items, "\\", "\\\\"), '"', '\\"')
        before, between, after = '["', '","', '"]'
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_null(kind):
        quoted = items.cast(pa.string())
        before, between, after = "[", ",", "]"
    else:
        return None
    joined = pc.binary_join(pa.ListArray.from_arrays(lists.offsets, quoted, mask=lists.is_null()), between)
    text = pc.binary_join_element_wise(before, joined, after, "")
    return pc.if_else(pc.equal(pc.list_value_length(lists), 0), "[]", text)


def _objects(records: list, path: tuple) -> list:
    """Each record's object holding the field at ``path`` (None where there is none)."""
    values = records
    for key in path[:-1]:
        values = [v.get(key) if type(v) is dict else None for v in values]
    return values


def _holds_null(records: list, path: tuple) -> bool:
    """Whether some record holds the key at ``path`` with the value null."""
    last = path[-1]
    return any(type(v) is dict and last in v and v[last] is None for v in _objects(records, path))


def _pick(records: list, path: tuple) -> list:
    """Each record's value at ``path`` (None where it has none)."""
    last = path[-1]
    return [v.get(last) if type(v) is dict else None for v in _objects(records, path)]


def _fields(records: list, depth: int, plain: bool) -> tuple[list[tuple], dict, set[tuple], bool]:
    """The records' fields: their key paths in the columns' order, each path's values (an Arrow
    array of text, or a list of values; absent where Arrow left them to be written one by one), the
    paths whose array holds JSON, and whether Arrow read the records."""
    leaves = _struct_leaves(records, depth) if plain and records else None
    if leaves is None:
        fields = [flatten(r, depth) for r in records]
        order = key_order(p for f in fields for p in f)
        return order, {p: [f.get(p) for f in fields] for p in order}, set(), False
    raw = {p: array for p, array, _ in leaves if array is not None}
    return [p for p, _, _ in leaves], raw, {p for p, _, is_json in leaves if is_json and p in raw}, True


class _ParsedRecords(RowStage):
    """A partition's records as columns of text, handed to the row stage."""

    def __init__(self, task: StageTask, rows: Iterable[tuple[str, int]]):
        import pyarrow as pa

        # JSON null and "" are NULL, besides the endpoint's own null tokens.
        super().__init__(task, frozenset(["", *task.options["null_tokens"]]), empty_is_null=True)
        started = time.perf_counter()
        depth = int(task.options.get("flatten_depth", 1))
        with _without_cycle_collection():
            records, positions, plain, strict = _parse(
                rows, lambda seq, text, why: self.quarantine_row(seq, None, text, why, None))
            order, raw, json_leaves, by_arrow = _fields(records, depth, plain)
        found = set(order)
        # A key no record has: the column exists, and every row is quarantined for its NULL key.
        names = {nested_identifier(p) for p in order}
        order += [(k,) for k in dict.fromkeys(task.primary_key) if k not in names]
        if task.policy != "evolve":
            # An optional field absent from every record of this partition is NULL, not a schema change.
            order += [(c,) for c in task.table_types if c not in names and c != RESCUED and (c,) not in order]
        source_names = [".".join(p) for p in order]
        columns = keep_table_names(unique_names([nested_identifier(p) for p in order]),
                                   [nested_identifier(p, False) for p in order], task.table_types)
        table = task.table_types
        texts: list = []
        as_json: list[bool] = []
        for path, column in zip(order, columns):
            values = raw.get(path, ())
            if isinstance(values, pa.Array) and (path in json_leaves or table.get(column) != JSONB):
                # Text as the column takes it, or arrays as JSON (a text column of the table takes
                # that JSON as its text).
                texts.append(values)
                as_json.append(path in json_leaves and table.get(column, JSONB) == JSONB)
                continue
            if by_arrow:
                values = _pick(records, path) if path in found else [None] * len(records)
            # Arrays and deep objects are jsonb; so is every value of a column the table holds as jsonb.
            j = table.get(column) == JSONB or (column not in table and any(type(v) in (list, dict) for v in values))
            as_json.append(j)
            texts.append([_json_text(v) for v in values] if j else
                         [v if type(v) is str else _text(v) for v in values] if values else [""] * len(records))
        hints = {c: JSONB for c, j in zip(columns, as_json) if j and c not in table}
        self.positions, self.kept = positions, None
        self.timings["parse"] += time.perf_counter() - started  # reading and flattening the records
        try:
            self.set_columns(source_names, columns, hints)
        except FileRejected as exc:  # on_schema_change fail and the records do not match the table
            lists = [c.fill_null("").to_pylist() if isinstance(c, pa.Array) else c for c in texts]
            for i, seq in enumerate(positions):
                self.quarantine_row(seq, None, None, exc.detail, [c[i] for c in lists])
            self.blocks, self.positions = [], []
            self.typers, self.unknown, self.rescue = [], set(), False
            self.out_positions, self.out_names, self.key_positions = [], [], []
            return
        for i, j in enumerate(as_json):
            if j:
                self.typers[i] = _JsonTyper(self.bools, strict)
        if self.vectorized:
            self.copy_format = "binary"
            self.blocks = [c.fill_null("") if isinstance(c, pa.Array) else pa.array(c, pa.string()) for c in texts]
        else:
            self.blocks = [c.fill_null("").to_pylist() if isinstance(c, pa.Array) else c for c in texts]

    def prepare(self) -> None:
        """The vectorized stage: every column cleaned and typed at once (the rows kept in memory,
        where the partition's records already are)."""
        if self.copy_format == "binary":
            import pyarrow as pa

            self.kept = self.arrow_rows(self.blocks, pa.array(self.positions, pa.int64())) if self.positions else None
            self.blocks = []
            # Staged as the types the columns have, so the merge casts nothing (see restage_as_text).
            self.staged_types = self.staging_types(self.task.text_columns)

    def copy_chunks(self) -> Iterator[str | bytes]:
        if self.copy_format == "binary":
            batches = []
            if self.kept is not None:
                import pyarrow as pa

                names = ["_ord", *(f"c{i}" for i in range(len(self.kept) - 1))]
                batches = pa.Table.from_arrays(self.kept, names=names).to_batches(max_chunksize=20 * CHUNK_ROWS)
            yield from self.arrow_copy(batches)  # a binary COPY has its header and trailer even without rows
            return
        for start in range(0, len(self.positions), CHUNK_ROWS):
            end = start + CHUNK_ROWS
            yield self.block([c[start:end] for c in self.blocks], self.positions[start:end])


def _stage_records(task: StageTask, rows) -> StageReport:
    parsed = _ParsedRecords(task, rows)
    copy_to_stage(task, parsed)
    return mismatch_report(task, parsed) or StageReport(
        task.name, task.path, task.seq, "staged", columns=parsed.report_columns(), staged_rows=parsed.staged,
        quarantined_rows=parsed.quarantined, ascending=parsed.ascending, summaries=parsed.summaries,
        staged_types=parsed.staged_types, timings=parsed.timings)


def run_records_task(task: StageTask, rows: Iterable[tuple[str, int]]) -> StageReport:
    """Stage one partition of an endpoint's batch on an executor: ``rows`` are ``(JSON array of
    records, position of the first)``. Never raises (see :func:`streaming.rowstage.run_stage_task`)."""
    return run_stage_task(task, lambda t: _stage_records(t, rows))
