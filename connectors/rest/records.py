"""JSON records into the row stage: the REST counterpart of a CSV file task (runs on executors).

A micro-batch of an endpoint arrives as a DataFrame of ``(record, seq)`` rows, ``record`` being one
JSON record as text. Each Spark partition becomes one task that flattens its records into columns,
types and cleans them with the same machinery as CSV files (null tokens, lossless inference, the
table's types, quarantine with a reason) and COPYs them into its own staging table; the driver then
merges every task's staging table in one transaction, exactly as for files.

Flattening: keys of nested objects join with ``__`` (``owner.login`` -> ``owner__login``) down to
``flatten_depth`` levels; arrays, and objects deeper than that, are kept whole as ``jsonb``. JSON
``null`` and empty strings are NULL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from streaming.errors import FileRejected
from streaming.naming import keep_table_names, nested_identifier, unique_names
from connectors.staging import copy_to_stage, run_stage_task
from streaming.rowstage import CHUNK_ROWS, RESCUED, RowStage, StageReport, StageTask, mismatch_report
from streaming.schema import ColumnTyper

JSON = "jsonb"
_SURROGATE = re.compile("[\ud800-\udfff]")


SEP = "\x1f"  # joins the keys of a nested field's path (no JSON key of a sane API holds it)


def flatten(record: Any, depth: int) -> dict[str, Any]:
    """A record's fields by key path (keys joined by :data:`SEP`); objects nested up to ``depth``
    levels are opened. A record that is not an object is one field, ``value``."""
    if type(record) is not dict:
        return {"value": record}
    if not depth or not any(type(v) is dict for v in record.values()):
        return record
    out: dict[str, Any] = {}
    _walk(record, "", depth, out)
    return out


def _walk(obj: dict, prefix: str, depth: int, out: dict) -> None:
    for key, value in obj.items():
        if depth and type(value) is dict and value:
            _walk(value, prefix + key + SEP, depth - 1, out)
        else:
            out[prefix + key] = value


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
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_text(value: Any) -> str:
    return "" if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _JsonTyper(ColumnTyper):
    """A jsonb column: its values are JSON this module wrote itself, so there is nothing to check."""

    def __init__(self, bools):
        super().__init__(bools, fixed=JSON, loose=True)

    def check(self, values, joined=None, has_null=True) -> list[int]:
        return []


class _ParsedRecords(RowStage):
    """A partition's records as columns of text, handed to the row stage."""

    def __init__(self, task: StageTask, rows: Iterable[tuple[str, int]]):
        # JSON null and "" are NULL, besides the endpoint's own null tokens.
        super().__init__(task, frozenset(["", *task.options["null_tokens"]]), empty_is_null=True)
        opts = task.options
        self.delimiter = ""
        depth = int(opts.get("flatten_depth", 1))
        records: list[tuple[int, dict]] = []
        paths: dict[str, None] = {}
        loads = json.loads
        for text, seq in rows:
            if ("\\u0000" in text and _has_nul(loads(text))) or _SURROGATE.search(text):
                # PostgreSQL text cannot hold NUL, nor UTF-8 an unpaired surrogate.
                shown = text[:1000].encode("utf-8", "backslashreplace").decode("utf-8")
                self.quarantine_row(seq, None, shown, "the record holds a NUL character or an unpaired surrogate, "
                                                   "which PostgreSQL cannot store", None)
                continue
            fields = flatten(loads(text), depth)
            if not fields:
                self.quarantine_row(seq, None, text[:1000], "the record has no fields", None)
                continue
            paths.update(dict.fromkeys(fields))
            records.append((seq, fields))
        # A key no record has: the column exists, and every row is quarantined for its NULL key.
        names = {nested_identifier(tuple(p.split(SEP))) for p in paths}
        paths.update(dict.fromkeys(k for k in task.primary_key if k not in names))
        if task.policy != "evolve":
            # An optional field absent from every record of this partition is NULL, not a schema change.
            paths.update(dict.fromkeys(c for c in task.table_types if c not in names and c != RESCUED))
        order = list(paths)
        source_names = [p.replace(SEP, ".") for p in order]
        columns = keep_table_names(unique_names([nested_identifier(tuple(p.split(SEP))) for p in order]),
                                   [nested_identifier(tuple(p.split(SEP)), False) for p in order], task.table_types)
        table = task.table_types
        raw_columns = [[fields.get(path) for _, fields in records] for path in order]
        # Arrays and deep objects are jsonb; so is every value of a column the table holds as jsonb.
        as_json = [table.get(c) == JSON or (c not in table and any(type(v) in (list, dict) for v in raw))
                   for c, raw in zip(columns, raw_columns)]
        hints = {c: JSON for c, j in zip(columns, as_json) if j and c not in table}
        # Column by column: strings (most values) pass through without a call.
        texts = []
        for raw, j in zip(raw_columns, as_json):
            if j:
                texts.append([_json_text(v) for v in raw])
            else:
                texts.append([v if type(v) is str else _text(v) for v in raw])
        self.blocks, self.positions = texts, [seq for seq, _ in records]
        try:
            self.set_columns(source_names, columns, hints)
        except FileRejected as exc:  # on_schema_change fail and the records do not match the table
            for i, seq in enumerate(self.positions):
                self.quarantine_row(seq, None, None, exc.detail, [c[i] for c in texts])
            self.blocks, self.positions = [], []
            self.typers, self.unknown, self.rescue = [], set(), False
            self.out_positions, self.out_names, self.key_positions = [], [], []
            return
        for i, j in enumerate(as_json):
            if j:
                self.typers[i] = _JsonTyper(self.bools)

    def copy_chunks(self) -> Iterator[str]:
        for start in range(0, len(self.positions), CHUNK_ROWS):
            end = start + CHUNK_ROWS
            yield self.block([c[start:end] for c in self.blocks], self.positions[start:end])


def _stage_records(task: StageTask, rows) -> StageReport:
    parsed = _ParsedRecords(task, rows)
    copy_to_stage(task, parsed)
    return mismatch_report(task, parsed) or StageReport(
        task.name, task.path, task.seq, "staged", columns=parsed.report_columns(), staged_rows=parsed.staged,
        quarantined_rows=parsed.quarantined, timings=parsed.timings)


def run_records_task(task: StageTask, rows: Iterable[tuple[str, int]]) -> StageReport:
    """Stage one partition of an endpoint's batch on an executor. Never raises (see
    :func:`streaming.rowstage.run_stage_task`)."""
    return run_stage_task(task, lambda t: _stage_records(t, rows))
