"""Reading one landed CSV file into a staging table: the file task.

A file task runs on an executor (or on the driver for small batches): it decides the encoding and
delimiter, normalizes the header, parses every record with Python's RFC 4180 reader, cleans values
(trim, null tokens), infers or checks each column's type, and streams the clean rows into an UNLOGGED
staging table with ``COPY ... FROM STDIN`` while parsing. Rows that cannot be loaded go to a second
staging table with their line number, column, raw value and reason. The task returns a small report;
the driver merges staging tables into the dataset's table in one transaction.

Everything a task needs crosses the pickle boundary in :class:`FileTask`; the task opens its own
connection and holds no state between calls.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterator

from streaming.errors import FileRejected
from streaming.naming import normalize_columns
from streaming.schema import ColumnTyper, bool_token_set

CHUNK_ROWS = 2000
SNIFF_BYTES = 64 << 10
DELIMITERS = (",", ";", "\t", "|")
_WS = " \t"
_EDGE_SPACE = re.compile(r"(?:^|\n)[ \t]|[ \t](?:\n|$)")
_COPY_SPECIAL = re.compile(r"[\t\r\\]")
# Bytes that never occur in text files (C0 controls other than tab, CR, LF, FF and the DOS EOF mark).
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0e-\x19\x1b-\x1f]")


@dataclasses.dataclass(frozen=True)
class FileTask:
    """Everything one file task needs; pickled to the executor.

    Attributes:
        path: the file to read (the executor must see the same path: a shared mount on a cluster).
        name: the file's name as the user dropped it, used in quarantine rows and errors.
        seq: the file's position in its batch; orders rows for upsert (last occurrence wins).
        dataset: dataset name, for messages.
        dsn: libpq connection string (never logged).
        stage_table / quarantine_table: qualified names the task creates and fills.
        options: the dataset's CSV options (null tokens, delimiter, encoding, tokens, max field bytes).
        table_types: the target table's current columns and types (empty if it does not exist yet).
        hints: column -> type from config; values must fit.
        primary_key: columns that must not be NULL.
        widen: whether existing columns may widen (policy ``evolve``).
    """

    path: str
    name: str
    seq: int
    dataset: str
    dsn: str
    stage_schema: str
    stage_table: str
    quarantine_table: str
    options: dict
    table_types: dict
    hints: dict
    primary_key: tuple
    widen: bool = True


@dataclasses.dataclass
class FileReport:
    """What a file task sends back to the driver (small: no rows)."""

    name: str
    path: str
    seq: int
    status: str  # "staged", "rejected" (bad input) or "error" (the batch must fail and retry)
    reason: str = ""
    detail: str = ""
    encoding: str = ""
    delimiter: str = ""
    columns: list = dataclasses.field(default_factory=list)  # [name, source_name, inferred type or None]
    staged_rows: int = 0
    quarantined_rows: int = 0
    stage_table: str = ""
    quarantine_table: str = ""

    @property
    def rows_in(self) -> int:
        return self.staged_rows + self.quarantined_rows


def run_file_task(task: FileTask) -> FileReport:
    """Stage one file. Never raises: bad input is a ``rejected`` report, a failure an ``error`` report."""
    report = _run(task)
    report.stage_table, report.quarantine_table = task.stage_table, task.quarantine_table
    return report


def _run(task: FileTask) -> FileReport:
    import psycopg2

    try:
        return _stage_file(task)
    except FileRejected as exc:
        return FileReport(task.name, task.path, task.seq, "rejected", exc.reason, exc.detail)
    except psycopg2.Error as exc:
        from connectors.postgres import is_transient

        return FileReport(task.name, task.path, task.seq, "error", "transient" if is_transient(exc) else "sink",
                          f"{task.name}: staging failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
    except OSError as exc:
        return FileReport(task.name, task.path, task.seq, "error", "io", f"{task.name}: cannot read: {exc.strerror or exc}")
    except Exception as exc:  # a bug: report it with its place, the batch fails and is retried
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1]
        return FileReport(task.name, task.path, task.seq, "error", "bug",
                          f"{task.name}: {type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})")


def _stage_file(task: FileTask) -> FileReport:
    import psycopg2

    encoding = detect_encoding(task.path, task.name, task.options.get("encoding"))
    parsed = _ParsedFile(task, encoding)
    conn = psycopg2.connect(task.dsn, application_name="dataops-stage", connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            from psycopg2 import sql

            stage = sql.Identifier(task.stage_schema, task.stage_table)
            quarantine = sql.Identifier(task.stage_schema, task.quarantine_table)
            cols = sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(len(parsed.columns)))
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(stage, quarantine))
            cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} (_ord bigint, {})").format(
                stage, sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(f"c{i}"))
                                          for i in range(len(parsed.columns)))))
            cur.execute(sql.SQL(
                "CREATE UNLOGGED TABLE {} (line bigint, column_name text, raw_value text, reason text, record jsonb)"
            ).format(quarantine))
            cur.copy_expert(sql.SQL("COPY {} (_ord, {}) FROM STDIN").format(stage, cols).as_string(cur),
                            _IterReader(parsed.copy_chunks()), size=1 << 16)
            parsed.quarantine.seek(0)
            cur.copy_expert(sql.SQL("COPY {} FROM STDIN").format(quarantine).as_string(cur), parsed.quarantine)
    finally:
        conn.close()
        parsed.close()
    if parsed.staged == 0 and parsed.quarantined == 0:
        return FileReport(task.name, task.path, task.seq, "rejected", "header_only",
                          f"{task.name}: the file has a header but no data rows")
    return FileReport(
        task.name, task.path, task.seq, "staged", encoding=encoding, delimiter=parsed.delimiter,
        columns=[[n, s, t.current] for n, s, t in zip(parsed.columns, parsed.source_names, parsed.typers)],
        staged_rows=parsed.staged, quarantined_rows=parsed.quarantined,
    )


def detect_encoding(path: str, name: str, configured: str | None) -> str:
    """The file's text encoding, or :class:`FileRejected` (empty, binary, undecodable).

    UTF-8 with or without BOM is tried first over the whole file (fast, incremental), then cp1252,
    whose printable range covers latin-1 text; bytes that are undefined in cp1252 mean the file is not
    text in any encoding we can tell apart, and it is rejected rather than loaded as mojibake.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if size == 0 or not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise FileRejected("empty", f"{name}: the file is empty")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    control = _BINARY_BYTES.search(head)
    if control:
        raise FileRejected("binary", f"{name}: binary content (control byte 0x{control.group()[0]:02x} at offset "
                                     f"{control.start()}); not a CSV file")
    candidates = [configured] if configured else ["utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8", "cp1252"]
    failure = ""
    for encoding in candidates:
        decoder = codecs.getincrementaldecoder(encoding)("strict")
        offset = 0
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    decoder.decode(chunk)
                    offset += len(chunk)
                decoder.decode(b"", final=True)
            return encoding
        except UnicodeDecodeError as exc:
            failure = f"{encoding} fails at byte {offset + exc.start}"
    raise FileRejected("encoding", f"{name}: cannot decode the file as text ({'; '.join([failure])}); "
                                   f"set datasets.<name>.encoding if it is in another encoding")


def sniff_delimiter(sample: str) -> str:
    """Pick the delimiter among , ; tab | that splits the first lines into the most consistent fields."""
    lines = sample.splitlines()[:50]
    if len(sample) >= SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line of a cut sample is partial
    best, best_score = ",", (0, 0)
    for delimiter in DELIMITERS:
        try:
            rows = list(csv.reader(lines, delimiter=delimiter))
        except csv.Error:
            continue
        widths = [len(r) for r in rows if r]
        if not widths or widths[0] < 2:
            continue
        consistent = sum(1 for w in widths if w == widths[0])
        score = (consistent, widths[0])
        if score > best_score:
            best, best_score = delimiter, score
    return best


class _LineTap:
    """Feeds lines to csv.reader and remembers those of the record being parsed (for error recovery)."""

    __slots__ = ("source", "lines")

    def __init__(self, source: Iterator[str]):
        self.source = source
        self.lines: list[str] = []

    def __iter__(self) -> "_LineTap":
        return self

    def __next__(self) -> str:
        line = next(self.source)
        self.lines.append(line)
        return line


class _ParsedFile:
    """Parses a file as it is copied; counts staged and quarantined rows."""

    def __init__(self, task: FileTask, encoding: str):
        self.task = task
        opts = task.options
        self.nulls = frozenset(opts["null_tokens"])
        self.bools = bool_token_set(opts["true_tokens"], opts["false_tokens"])
        csv.field_size_limit(max(csv.field_size_limit(), int(opts.get("max_field_bytes", 64 << 20))))
        self.file = open(task.path, encoding=encoding, newline="")
        sample = self.file.read(SNIFF_BYTES)
        self.file.seek(0)
        self.delimiter = opts.get("delimiter") or sniff_delimiter(sample)
        self.tap = _LineTap(iter(self.file))
        self.reader = csv.reader(self.tap, delimiter=self.delimiter, strict=True)
        self.base = 0  # physical lines consumed by earlier readers (after error recovery)
        self.prev_line = 0
        header = self._header()
        self.source_names = [h.strip() for h in header]
        self.columns = normalize_columns(self.source_names)
        table = task.table_types
        self.typers = [
            ColumnTyper(self.bools, fixed=task.hints.get(c) or (None if task.widen else table.get(c)),
                        widen_from=table.get(c) if task.widen and c not in task.hints else None)
            for c in self.columns
        ]
        missing = [k for k in task.primary_key if k not in self.columns]
        if missing:
            raise FileRejected("missing_key", f"{task.name}: primary key column(s) {', '.join(missing)} missing "
                                              f"from the header ({', '.join(self.columns)})")
        self.key_positions = [self.columns.index(k) for k in task.primary_key]
        self.staged = 0
        self.quarantined = 0
        self.quarantine = tempfile.SpooledTemporaryFile(max_size=8 << 20, mode="w+", encoding="utf-8", newline="")

    def _header(self) -> list[str]:
        for line_no, record in self._records():
            if isinstance(record, str):
                raise FileRejected("bad_header", f"{self.task.name}: line {line_no}: the header cannot be parsed ({record})")
            return record
        raise FileRejected("empty", f"{self.task.name}: the file has no header")

    def _records(self) -> Iterator[tuple[int, list[str] | str]]:
        """Yield (first line, fields) per record, or (line, error message) for a line that cannot parse.

        On a parse error (a stray quote, an unterminated quoted field, a field over the size limit) the
        first line of the broken record is reported and parsing resumes on the line after it, so one bad
        quote costs one row, not the rest of the file.
        """
        while True:
            try:
                for record in self.reader:
                    start = self.prev_line + 1
                    self.prev_line = self.base + self.reader.line_num
                    self.tap.lines.clear()
                    if record:
                        yield start, record
                return
            except csv.Error as exc:
                bad_line = self.prev_line + 1
                pending = self.tap.lines
                self.raw_bad_line = pending[0] if pending else ""
                yield bad_line, str(exc)
                self.base = bad_line
                self.prev_line = bad_line
                self.tap = _LineTap(itertools.chain(pending[1:], self.file))
                self.reader = csv.reader(self.tap, delimiter=self.delimiter, strict=True)

    def copy_chunks(self) -> Iterator[str]:
        """Text for ``COPY ... FROM STDIN`` (tab-separated, ``\\N`` for NULL), a chunk at a time."""
        ncols = len(self.columns)
        rows: list[list[str]] = []
        lines: list[int] = []
        try:
            for line_no, record in self._records():
                if isinstance(record, str):
                    self._quarantine(line_no, None, self.raw_bad_line.rstrip("\r\n"), f"unparseable CSV: {record}",
                                     None)
                elif len(record) == ncols:
                    rows.append(record)
                    lines.append(line_no)
                    if len(rows) >= CHUNK_ROWS:
                        yield self._chunk(rows, lines)
                        rows, lines = [], []
                else:
                    self._quarantine(line_no, None, None,
                                     f"expected {ncols} fields, found {len(record)}", record)
            if rows:
                yield self._chunk(rows, lines)
        finally:
            self.file.close()

    def close(self) -> None:
        self.file.close()
        self.quarantine.close()

    def _chunk(self, rows: list[list[str]], lines: list[int]) -> str:
        columns = [list(c) for c in zip(*rows)]
        bad: dict[int, tuple[int, str]] = {}
        out_columns = []
        for ci, raw in enumerate(columns):
            values, joined = self._clean(raw)
            for i in self.typers[ci].check(values, joined):
                bad.setdefault(i, (ci, self.typers[ci].describe_failure(values[i])))
            out_columns.append(values)
        for ci in self.key_positions:
            for i, v in enumerate(out_columns[ci]):
                if v is None:
                    bad.setdefault(i, (ci, f"NULL in primary key column {self.columns[ci]}"))
        for i in sorted(bad):
            ci, reason = bad[i]
            self._quarantine(lines[i], self.columns[ci], rows[i][ci], reason, rows[i])
        if bad:
            keep = [i for i in range(len(rows)) if i not in bad]
            out_columns = [[col[i] for i in keep] for col in out_columns]
            lines = [lines[i] for i in keep]
        self.staged += len(lines)
        if not lines:
            return ""
        encoded = [_copy_column(col) for col in out_columns]
        return "\n".join(map("\t".join, zip(map(str, lines), *encoded))) + "\n"

    def _clean(self, raw: list[str]) -> tuple[list[str | None], str | None]:
        """Trim and map null tokens; also return the values joined by newlines when none is NULL."""
        joined = "\n".join(raw)
        if _EDGE_SPACE.search(joined):
            raw = [v.strip(_WS) for v in raw]
            joined = "\n".join(raw)
        if self._may_hold_null(joined):
            nulls = self.nulls
            values = [None if v in nulls else v for v in raw]
            return values, None
        return raw, joined

    def _may_hold_null(self, joined: str) -> bool:
        pattern = getattr(self, "_null_pattern", None)
        if pattern is None:
            tokens = "|".join(re.escape(t) for t in sorted(self.nulls, key=len, reverse=True))
            pattern = self._null_pattern = re.compile(rf"(?:^|\n)(?:{tokens})(?=\n|$)") if tokens else None
        return pattern is not None and pattern.search(joined) is not None

    def _quarantine(self, line: int, column: str | None, raw_value: str | None, reason: str,
                    record: list[str] | None) -> None:
        self.quarantined += 1
        if record is None:
            record_json = None
        elif len(record) == len(self.columns):
            record_json = json.dumps(dict(zip(self.columns, record)), ensure_ascii=False)
        else:
            record_json = json.dumps(record, ensure_ascii=False)
        self.quarantine.write("\t".join(_copy_value(v) for v in (str(line), column, raw_value, reason, record_json)) + "\n")


def _copy_value(value: str | None) -> str:
    if value is None:
        return "\\N"
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_column(values: list[str | None]) -> list[str]:
    """COPY text encoding of a column; only columns that hold special characters pay per value."""
    present = [v for v in values if v is not None]
    joined = "\n".join(present)
    if _COPY_SPECIAL.search(joined) or joined.count("\n") != max(len(present) - 1, 0):
        return [_copy_value(v) for v in values]
    if len(present) == len(values):
        return values
    return ["\\N" if v is None else v for v in values]


class _IterReader(io.TextIOBase):
    """A file-like ``read()`` over an iterator of strings, so COPY streams while the file parses."""

    def __init__(self, chunks: Iterator[str]):
        self.chunks = chunks

    def read(self, size: int = -1) -> str:  # noqa: ARG002 - COPY accepts chunks of any length
        for chunk in self.chunks:
            if chunk:
                return chunk
        return ""

    readline = read
