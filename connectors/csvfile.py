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
from streaming.naming import keep_table_names, normalize_columns, normalize_identifier
from streaming.schema import ColumnTyper, bool_token_set

CHUNK_ROWS = 2000
SNIFF_BYTES = 64 << 10
DELIMITERS = (",", ";", "\t", "|")
_WS = " \t"
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
        fixed_columns: columns of the table whose type cannot change even under ``evolve`` (a
            partition key): values that would need a wider type go to quarantine.
        policy: ``on_schema_change`` — ``evolve`` (existing columns may widen, new ones are added),
            ``rescue`` (the table never changes; unknown columns and values that do not fit go to
            the row's ``_rescued`` JSON) or ``fail`` (a file that does not match is rejected).
        part: a large file is parsed in parts (byte ranges cut at record boundaries, see
            :func:`plan_parts`); ``part`` > 0 or a set ``header`` means the task reads only
            ``[start, end)``, whose first physical line is ``first_line``.
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
    policy: str = "evolve"
    fixed_columns: tuple = ()  # columns whose type may never change (the partition key)
    part: int = 0
    start: int = 0
    end: int | None = None
    first_line: int = 1
    header: tuple | None = None
    encoding: str | None = None
    delimiter: str | None = None
    last_part: bool = True


@dataclasses.dataclass(frozen=True)
class FilePlan:
    """How a large file is cut into parts that parse in parallel (computed on the driver)."""

    encoding: str
    delimiter: str
    header: tuple
    ranges: tuple  # ((start byte, end byte, first physical line), ...)


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
    bad_cut: bool = False  # the part ended inside a quoted field: its cut was not a record boundary
    diff: dict | None = None  # policy fail: how the file differs from the table

    @property
    def rows_in(self) -> int:
        return self.staged_rows + self.quarantined_rows


def run_file_task(task: FileTask, stage=None) -> FileReport:
    """Stage one file. Never raises: bad input is a ``rejected`` report, a failure an ``error`` report.

    ``stage`` replaces the CSV parser for other sources (see ``connectors.rest.records``).
    """
    report = _run(task, stage)
    report.stage_table, report.quarantine_table = task.stage_table, task.quarantine_table
    return report


def _run(task: FileTask, stage=None) -> FileReport:
    import psycopg2

    try:
        return (stage or _stage_file)(task)
    except FileRejected as exc:
        return FileReport(task.name, task.path, task.seq, "rejected", exc.reason, exc.detail, diff=exc.diff)
    except psycopg2.Error as exc:
        from connectors.postgres import is_transient

        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if exc.pgcode and not is_transient(exc):  # e.g. a character PostgreSQL cannot store, a limit
            return FileReport(task.name, task.path, task.seq, "rejected", "load_failed",
                              f"{task.name}: PostgreSQL refused the file's data: {detail}")
        return FileReport(task.name, task.path, task.seq, "error", "transient" if is_transient(exc) else "sink",
                          f"{task.name}: staging failed: {detail}")
    except OSError as exc:
        return FileReport(task.name, task.path, task.seq, "error", "io", f"{task.name}: cannot read: {exc.strerror or exc}")
    except Exception as exc:  # a bug: report it with its place, the batch fails and is retried
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1]
        return FileReport(task.name, task.path, task.seq, "error", "bug",
                          f"{task.name}: {type(exc).__name__}: {exc} (at {where.filename}:{where.lineno})")


def _stage_file(task: FileTask) -> FileReport:
    encoding = task.encoding or detect_encoding(task.path, task.name, task.options.get("encoding"))
    parsed = _ParsedFile(task, encoding)
    copy_to_stage(task, parsed)
    mismatch = mismatch_report(task, parsed)
    if mismatch:
        return mismatch
    if parsed.staged == 0 and parsed.quarantined == 0 and task.header is None:
        return FileReport(task.name, task.path, task.seq, "rejected", "header_only",
                          f"{task.name}: the file has a header but no data rows")
    return FileReport(
        task.name, task.path, task.seq, "staged", encoding=encoding, delimiter=parsed.delimiter,
        columns=parsed.report_columns(),
        staged_rows=parsed.staged, quarantined_rows=parsed.quarantined, bad_cut=parsed.bad_cut,
    )


def mismatch_report(task: FileTask, parsed: "_ParsedFile") -> FileReport | None:
    """Policy fail: the rejection of a task whose values need wider types than the table has."""
    mismatch = parsed.type_mismatch()
    if not mismatch:
        return None
    return FileReport(task.name, task.path, task.seq, "rejected", "schema_mismatch",
                      f"{task.name}: values need wider types than table {task.dataset} has and "
                      f"on_schema_change is fail: " + ", ".join(f"{c} {d['table']} -> {d['file']}"
                                                                 for c, d in mismatch.items()),
                      diff={"changed_types": mismatch}, columns=parsed.report_columns(),
                      staged_rows=parsed.staged, quarantined_rows=parsed.quarantined)


def copy_to_stage(task: FileTask, parsed: "_ParsedFile") -> None:
    """Create the task's staging and quarantine tables and COPY the parsed rows into them."""
    import psycopg2

    conn = psycopg2.connect(task.dsn, application_name="dataops-stage", connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            from psycopg2 import sql

            stage = sql.Identifier(task.stage_schema, task.stage_table)
            quarantine = sql.Identifier(task.stage_schema, task.quarantine_table)
            names = [sql.Identifier(f"c{i}") for i in range(len(parsed.out_names))]
            cols = sql.SQL(", ").join([sql.Identifier("_ord"), *names])
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(stage, quarantine))
            cur.execute(sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(
                stage, sql.SQL(", ").join([sql.SQL("_ord bigint"), *(sql.SQL("{} text").format(n) for n in names)])))
            cur.execute(sql.SQL(
                "CREATE UNLOGGED TABLE {} (line bigint, column_name text, raw_value text, reason text, record jsonb)"
            ).format(quarantine))
            cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN").format(stage, cols).as_string(cur),
                            _IterReader(parsed.copy_chunks()), size=1 << 16)
            parsed.quarantine.seek(0)
            cur.copy_expert(sql.SQL("COPY {} FROM STDIN").format(quarantine).as_string(cur), parsed.quarantine)
    finally:
        conn.close()
        parsed.close()


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
                    nul = chunk.find(b"\x00")
                    if nul >= 0:  # PostgreSQL text cannot hold NUL; no CSV carries one
                        raise FileRejected("binary", f"{name}: binary content (NUL byte at offset {offset + nul}); "
                                                     f"not a CSV file")
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


MAX_COLUMNS = 1599  # PostgreSQL's 1600 columns per table, less the staging table's row position
RESCUED = "_rescued"  # policy rescue: the jsonb column holding what did not fit the table
_SPLITTABLE = {"utf-8", "utf-8-sig", "cp1252", "latin-1", "iso8859-1"}
_SCAN_BLOCK = 8 << 20


def plan_parts(path: str, name: str, options: dict, parts: int) -> FilePlan | None:
    """Cut a large file into ``parts`` byte ranges that start and end on record boundaries.

    Runs on the driver: one pass over the bytes at C speed (decode check, quote and newline counts).
    A line break ends a record when the number of quote characters before it is even, which holds
    for every RFC 4180 file; a quote in the middle of an unquoted field (``ab"c``) breaks that rule,
    so such a file is not split and parses as one task. Returns None when the file should not be
    split; raises :class:`FileRejected` like a file task would.

    The quote-parity rule is checked after the fact too: a part that ends inside a quoted field
    reports ``bad_cut`` and the driver parses the file again in one piece. Because every part starts
    where the one before it ended, a wrong cut always shows up that way in the part before it.
    """
    encoding = detect_encoding(path, name, options.get("encoding"))
    if codecs.lookup(encoding).name not in _SPLITTABLE or parts < 2:
        return None
    with open(path, encoding=encoding, newline="") as f:
        sample = f.read(SNIFF_BYTES)
    if "\n" not in sample:
        return None
    delimiter = options.get("delimiter") or sniff_delimiter(sample)
    header_lines, header = _first_record(sample, delimiter)
    if header is None:
        return None
    sep = delimiter.encode(encoding)
    # A quote with an ordinary character on both sides. The pattern starts with the quote itself so
    # the regex engine can skip ahead to quote characters (a leading class would test every byte).
    ordinary = b'[^' + re.escape(sep) + b'\n\r"]'
    stray = re.compile(b'"(?<=' + ordinary + b'")(?=' + ordinary + b')')
    size = os.path.getsize(path)
    targets = [size * k // parts for k in range(1, parts)]
    cuts: list[tuple[int, int]] = []  # (byte offset after a record's line break, lines before it)
    quotes = lines = offset = 0
    header_end = None
    previous = b""
    with open(path, "rb") as f:
        while block := f.read(_SCAN_BLOCK):
            if stray.search(previous[-2:] + block):
                return None
            pos = 0
            while header_end is None:
                nl = block.find(b"\n", pos)
                if nl < 0:
                    break
                quotes += block.count(b'"', pos, nl)
                lines, pos = lines + 1, nl + 1
                if lines == header_lines:
                    header_end = offset + pos
            while targets and targets[0] < offset + len(block):
                start = max(targets[0] - offset, pos)
                quotes += block.count(b'"', pos, start)
                lines += block.count(b"\n", pos, start)
                pos = start
                found = False
                while (nl := block.find(b"\n", pos)) >= 0:
                    quotes += block.count(b'"', pos, nl)
                    lines, pos = lines + 1, nl + 1
                    if quotes % 2 == 0:
                        cuts.append((offset + pos, lines))
                        found = True
                        break
                if not found:
                    break
                targets.pop(0)
            quotes += block.count(b'"', pos)
            lines += block.count(b"\n", pos)
            offset += len(block)
            previous = block
    if header_end is None:
        return None
    bounds = [(header_end, header_lines)] + [c for c in cuts if c[0] > header_end and c[0] < size]
    bounds = sorted(set(bounds))
    ranges = tuple((b, bounds[i + 1][0] if i + 1 < len(bounds) else size, n + 1) for i, (b, n) in enumerate(bounds))
    if len(ranges) < 2:
        return None
    return FilePlan(encoding, delimiter, tuple(header), ranges)


def _first_record(sample: str, delimiter: str) -> tuple[int, list[str] | None]:
    """The header record of a file's first bytes and how many physical lines it spans."""
    lines = _LINE_LF.findall(sample)
    reader = csv.reader(iter(lines), delimiter=delimiter, strict=True)
    try:
        for record in reader:
            if record:
                return reader.line_num, record
    except csv.Error:
        return 0, None
    return 0, None


class _RangeFile(io.RawIOBase):
    """Bytes ``[start, end)`` of a file, for a text wrapper."""

    def __init__(self, path: str, start: int, end: int | None):
        self.f = open(path, "rb")
        self.f.seek(start)
        self.left = None if end is None else end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left is not None:
            if self.left <= 0:
                return 0
            view = memoryview(buffer)[: self.left]
        else:
            view = memoryview(buffer)
        n = self.f.readinto(view)
        if self.left is not None:
            self.left -= n
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


def _open_text(path: str, encoding: str, start: int = 0, end: int | None = None):
    if start == 0 and end is None:
        return open(path, encoding=encoding, newline="")
    return io.TextIOWrapper(io.BufferedReader(_RangeFile(path, start, end), 1 << 20), encoding=encoding, newline="")


class _Lines:
    """The file's physical lines (line breaks kept), read in large blocks with no Python work per line.

    csv.reader pulls lines through a C-level chain over per-block lists. The current block is kept so
    that a record that fails to parse can be reported by its raw first line, and parsing resumed on the
    line after it, without reading the file again (a record spanning blocks falls back to a re-read).
    """

    BLOCK_CHARS = 1 << 20

    def __init__(self, path: str, encoding: str, skip: int = 0, start: int = 0, end: int | None = None,
                 first_line: int = 1):
        self.path, self.encoding = path, encoding
        self.range = (start, end, first_line)
        self.block: list[str] = []
        self.block_first = first_line  # physical line number of block[0]
        self._blocks = self._read(skip)
        self.iterator: Iterator[str] = itertools.chain.from_iterable(self._blocks)

    def _read(self, skip: int) -> Iterator[list[str]]:
        start, end, first = self.range
        with _open_text(self.path, self.encoding, start, end) as f:
            carry, separator, pattern = "", "\n", _LINE_LF
            head = True
            while True:
                text = f.read(self.BLOCK_CHARS)
                eof = not text
                if head:
                    head = False
                    if "\n" not in text and "\r" in text:  # old Mac files end lines with a bare CR
                        separator, pattern = "\r", _LINE_CR
                text = carry + text
                if not text:
                    return
                if eof:
                    body, carry = text, ""
                else:
                    cut = text.rfind(separator) + 1
                    if cut == 0:  # no line break yet: read on
                        carry = text
                        continue
                    body, carry = text[:cut], text[cut:]
                lines = pattern.findall(body)
                if skip:
                    dropped = min(skip, len(lines))
                    lines, skip, first = lines[dropped:], skip - dropped, first + dropped
                if lines:
                    self.block, self.block_first = lines, first
                    first += len(lines)
                    yield lines
                if eof:
                    return

    def resume_after(self, line: int) -> tuple[str, Iterator[str]]:
        """The raw text of ``line`` and an iterator over the lines after it."""
        offset = line - self.block_first
        if 0 <= offset < len(self.block):
            rest = self.block[offset + 1:]
            return self.block[offset], itertools.chain(rest, itertools.chain.from_iterable(self._blocks))
        self._blocks.close()
        start, end, first_line = self.range
        again = _Lines(self.path, self.encoding, skip=line - first_line, start=start, end=end, first_line=first_line)
        raw = next(again.iterator, "")
        self.__dict__.update(again.__dict__)
        return raw, self.iterator

    def close(self) -> None:
        self._blocks.close()


_LINE_LF = re.compile(r"[^\n]*\n|[^\n]+")
_LINE_CR = re.compile(r"[^\r]*\r|[^\r]+")


class _ParsedFile:
    """Parses a file as it is copied; counts staged and quarantined rows."""

    def __init__(self, task: FileTask, encoding: str):
        self.task = task
        opts = task.options
        self.nulls = frozenset(opts["null_tokens"])
        self.bools = bool_token_set(opts["true_tokens"], opts["false_tokens"])
        csv.field_size_limit(max(csv.field_size_limit(), int(opts.get("max_field_bytes", 64 << 20))))
        if task.delimiter:
            self.delimiter = task.delimiter
        else:
            with open(task.path, encoding=encoding, newline="") as f:
                sample = f.read(SNIFF_BYTES)
            self.delimiter = opts.get("delimiter") or sniff_delimiter(sample)
        self.lines = _Lines(task.path, encoding, start=task.start, end=task.end, first_line=task.first_line)
        self.reader = csv.reader(self.lines.iterator, delimiter=self.delimiter, strict=True)
        # Physical lines before this reader's first line (the part's offset, then error recovery).
        self.base = self.prev_line = task.first_line - 1
        self.staged = 0
        self.quarantined = 0
        self.bad_cut = False
        self.quarantine = tempfile.SpooledTemporaryFile(max_size=8 << 20, mode="w+", encoding="utf-8", newline="")
        header = list(task.header) if task.header is not None else self._header()
        self.source_names = [h.strip() for h in header]
        self.columns = keep_table_names(normalize_columns(self.source_names),
                                        [normalize_identifier(h, transliterate=False) for h in self.source_names],
                                        task.table_types)
        self._setup_columns(task, opts)
        missing = [k for k in task.primary_key if k not in self.columns]
        if missing:
            raise FileRejected("missing_key", f"{task.name}: primary key column(s) {', '.join(missing)} missing "
                                              f"from the header ({', '.join(self.columns)})")
        self.key_positions = [self.columns.index(k) for k in task.primary_key]
        # Null-token probes over a column joined by newlines (see _clean).
        self._empty_is_null = "" in self.nulls
        self._null_probes = tuple(f"\n{t}\n" for t in self.nulls if t)
        self._null_initials = frozenset(t[0] for t in self.nulls if t)

    def _setup_columns(self, task: FileTask, opts: dict) -> None:
        """Typers per column by policy, and which columns are staged (see FileTask.policy)."""
        if len(self.columns) > MAX_COLUMNS:
            raise FileRejected("too_wide", f"{task.name}: {len(self.columns)} columns; a PostgreSQL table holds at "
                                           f"most 1600 and staging needs one of them, so at most {MAX_COLUMNS} load")
        table = task.table_types
        formats = tuple(opts.get("date_formats") or ())
        self.unknown: set[int] = set()
        if table and task.policy != "evolve":
            new = [c for c in self.columns if c not in table]
            missing = [c for c in table if c not in self.columns and c != RESCUED]
            if task.policy == "fail" and (new or missing):
                diff = {"new_columns": new, "missing_columns": missing}
                raise FileRejected("schema_mismatch", f"{task.name}: header does not match table {task.dataset} and "
                                                      f"on_schema_change is fail: new columns {new or 'none'}, "
                                                      f"missing columns {missing or 'none'}", diff=diff)
            self.unknown = {i for i, c in enumerate(self.columns) if c not in table}
        self.typers = []
        for c in self.columns:
            # A column the table already has keeps the table's type; a hint shapes new columns, and
            # keeps a column it shaped from widening (values out of its range go to quarantine).
            hint = task.hints.get(c) if c not in table or table[c] == task.hints.get(c) else None
            if hint:
                typer = ColumnTyper(self.bools, fixed=hint, loose=True, formats=formats)
            elif c in table and task.policy == "evolve" and c not in task.fixed_columns:
                typer = ColumnTyper(self.bools, widen_from=table[c], formats=formats)
            elif c in table:
                typer = ColumnTyper(self.bools, fixed=table[c], formats=formats)
            else:
                typer = ColumnTyper(self.bools, formats=formats)
            self.typers.append(typer)
        self.rescue = task.policy == "rescue" and bool(table)
        self.fixed = {i for i, c in enumerate(self.columns) if c in table and c in task.fixed_columns}
        self.out_positions = [i for i in range(len(self.columns)) if i not in self.unknown]
        self.out_names = [self.columns[i] for i in self.out_positions] + ([RESCUED] if self.rescue else [])

    def report_columns(self) -> list[list]:
        """[name, source name, type, date format] of each staged column."""
        out = [[self.columns[i], self.source_names[i], self.typers[i].current, self.typers[i].format]
               for i in self.out_positions]
        if self.rescue:
            out.append([RESCUED, None, "jsonb", None])
        return out

    def type_mismatch(self) -> dict:
        """Policy fail: columns whose values needed a wider type than the table's."""
        if self.task.policy != "fail":
            return {}
        return {self.columns[i]: {"table": t.fixed, "file": t.wanted} for i, t in enumerate(self.typers)
                if t.wanted and not t.loose}

    def _header(self) -> list[str]:
        while True:
            try:
                for record in self.reader:
                    self.prev_line = self.base + self.reader.line_num
                    if record:
                        return record
                raise FileRejected("empty", f"{self.task.name}: the file has no header")
            except csv.Error as exc:
                raise FileRejected("bad_header", f"{self.task.name}: line {self.prev_line + 1}: the header "
                                                 f"cannot be parsed ({exc})") from None

    def copy_chunks(self) -> Iterator[str]:
        """Text for ``COPY ... FROM STDIN`` (tab-separated, ``\\N`` for NULL), a chunk at a time.

        On a parse error (a stray quote, an unterminated quoted field, a field over the size limit) the
        first line of the broken record is quarantined and parsing resumes on the line after it, so one
        bad quote costs one row, not the rest of the file.
        """
        ncols = len(self.columns)
        rows: list[list[str]] = []
        lines: list[int] = []
        try:
            while True:
                reader = self.reader
                try:
                    prev = self.prev_line
                    base = self.base
                    for record in reader:
                        end = base + reader.line_num
                        if len(record) == ncols:
                            rows.append(record)
                            lines.append(prev + 1)
                            if len(rows) >= CHUNK_ROWS:
                                self.prev_line = end
                                yield self._chunk(rows, lines)
                                rows, lines = [], []
                        elif record:
                            self._quarantine(prev + 1, None, None, f"expected {ncols} fields, found {len(record)}",
                                             record)
                        prev = end
                    self.prev_line = prev
                    break
                except csv.Error as exc:
                    if not self.task.last_part and "unexpected end of data" in str(exc):
                        # Inside a quoted field at the end of a part that is not the file's last: the cut
                        # that ends this part is not a record boundary (see plan_parts).
                        self.bad_cut = True
                    bad_line = prev + 1
                    raw, rest = self.lines.resume_after(bad_line)
                    self._quarantine(bad_line, None, raw.rstrip("\r\n"), f"unparseable CSV: {exc}", None)
                    self.base = self.prev_line = bad_line
                    self.reader = csv.reader(rest, delimiter=self.delimiter, strict=True)
            if rows:
                yield self._chunk(rows, lines)
        finally:
            self.lines.close()

    def close(self) -> None:
        self.lines.close()
        self.quarantine.close()

    def _chunk(self, rows: list[list[str]], lines: list[int]) -> str:
        columns = [list(c) for c in zip(*rows)]
        bad: dict[int, tuple[int, str]] = {}
        rescued: dict[int, dict] = {}
        out_columns = []
        joins = []
        for ci, raw in enumerate(columns):
            values, joined, has_null = self._clean(raw)
            if ci in self.unknown:  # rescue: a column the table does not have
                for i, v in enumerate(values):
                    if v is not None:
                        rescued.setdefault(i, {})[self.columns[ci]] = rows[i][ci]
                out_columns.append(values)
                joins.append((joined, has_null))
                continue
            failures = self.typers[ci].check(values, joined, has_null)
            if failures and self.rescue:
                for i in failures:
                    rescued.setdefault(i, {})[self.columns[ci]] = rows[i][ci]
                    values[i] = None
                joined, has_null = None, True
            else:
                why = " (the table's partition key, whose type cannot change)" if ci in self.fixed else ""
                for i in failures:
                    bad.setdefault(i, (ci, self.typers[ci].describe_failure(values[i]) + why))
            out_columns.append(values)
            joins.append((joined, has_null))
        for ci in self.key_positions:
            for i, v in enumerate(out_columns[ci]):
                if v is None:
                    bad.setdefault(i, (ci, f"NULL in primary key column {self.columns[ci]}"))
        for i in sorted(bad):
            ci, reason = bad[i]
            self._quarantine(lines[i], self.columns[ci], rows[i][ci], reason, rows[i])
        out_columns = [out_columns[i] for i in self.out_positions]
        joins = [joins[i] for i in self.out_positions]
        if self.rescue:
            name = self.task.name
            out_columns.append([json.dumps({**rescued[i], "_file": name}, ensure_ascii=False) if i in rescued else None
                                for i in range(len(rows))])
            joins.append((None, True))
        if bad:
            keep = [i for i in range(len(rows)) if i not in bad]
            out_columns = [[col[i] for i in keep] for col in out_columns]
            lines = [lines[i] for i in keep]
            joins = [(None, True)] * len(out_columns)
        self.staged += len(lines)
        if not lines:
            return ""
        encoded = [_copy_column(col, *j) for col, j in zip(out_columns, joins)]
        return "\n".join(map("\t".join, zip(map(str, lines), *encoded))) + "\n"

    def _clean(self, raw: list[str]) -> tuple[list[str | None], str, bool]:
        """Trim and map null tokens.

        Returns the values, the non-NULL values joined by newlines, and whether any value is NULL.
        Both checks run as substring searches over the joined column (C speed); only a column that has
        padded values or null tokens pays a pass in Python.
        """
        joined = "\n".join(raw)
        if (" " in joined or "\t" in joined) and (
                joined[:1] in _WS_FIRST or joined[-1:] in _WS_FIRST or any(p in joined for p in _EDGE_PROBES)):
            raw = [v.strip(_WS) for v in raw]
            joined = "\n".join(raw)
        if self._may_hold_null(joined):
            nulls = self.nulls
            values = [None if v in nulls else v for v in raw]
            present = [v for v in values if v is not None]
            if len(present) != len(values):
                return values, "\n".join(present), True
        return raw, joined, False

    def _may_hold_null(self, joined: str) -> bool:
        if self._empty_is_null and (not joined or "\n\n" in joined or joined[0] == "\n" or joined[-1] == "\n"):
            return True
        if not any(c in joined for c in self._null_initials):
            return False
        padded = "\n" + joined + "\n"
        return any(p in padded for p in self._null_probes)

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


_WS_FIRST = (" ", "\t")
_EDGE_PROBES = ("\n ", "\n\t", " \n", "\t\n")


def _copy_value(value: str | None) -> str:
    if value is None:
        return "\\N"
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_column(values: list[str | None], joined: str | None = None, has_null: bool = True) -> list[str]:
    """COPY text encoding of a column; only columns that hold special characters pay per value.

    ``joined`` is the column's non-NULL values joined by newlines, when the caller has it.
    """
    if joined is None:
        joined = "\n".join(v for v in values if v is not None)
        has_null = None in values
    count = len(values) - values.count(None) if has_null else len(values)
    if "\t" in joined or "\r" in joined or "\\" in joined or (joined.count("\n") != max(count - 1, 0)):
        return ["\\N" if v is None else
                v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
                for v in values]
    if not has_null:
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
