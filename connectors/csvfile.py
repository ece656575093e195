"""Reading one landed CSV file into a staging table: the file task.

A file task runs on an executor (or on the driver for small batches): it decides the encoding and
delimiter, normalizes the header, parses every record with Python's RFC 4180 reader, cleans values
(trim, null tokens), infers or checks each column's type, and streams the clean rows into an UNLOGGED
staging table with ``COPY ... FROM STDIN`` while parsing. Rows that cannot be loaded go to a second
staging table with their line number, column, raw value and reason. The task returns a small report;
the driver merges staging tables into the dataset's table in one transaction.

Everything a task needs crosses the pickle boundary in :class:`StageTask`; the task opens its own
connection and holds no state between calls.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import itertools
import os
import re
from collections.abc import Iterator

from connectors import csvfast
from connectors.csvfast import ArrowFile, NeedsExactReader, NeedsWholeFile, supports
from connectors.staging import copy_to_stage, run_stage_task
from streaming.errors import FileRejected
from streaming.naming import keep_table_names, normalize_columns, normalize_identifier
from streaming.rowstage import CHUNK_ROWS, ByteSource, RowStage, StageReport, StageTask, mismatch_report

SNIFF_BYTES = 64 << 10
DELIMITERS = (",", ";", "\t", "|")
# Bytes that never occur in text files (C0 controls other than tab, CR, LF, FF and the DOS EOF mark).
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0e-\x19\x1b-\x1f]")


@dataclasses.dataclass(frozen=True)
class FilePlan:
    """How a large file is cut into parts that parse in parallel (computed on the driver)."""

    encoding: str
    delimiter: str
    header: tuple
    ranges: tuple  # ((start byte, end byte, first physical line), ...)
    checked: bool = True  # the whole file was checked as ``encoding`` (else the parts check it)



def run_file_task(task: StageTask) -> StageReport:
    """Stage one CSV file, or one part of it (see :func:`plan_parts`). Runs on an executor or the
    driver; never raises (see :func:`streaming.rowstage.run_stage_task`)."""
    return run_stage_task(task, _stage_file)


def _stage_file(task: StageTask) -> StageReport:
    encoding = task.encoding or detect_encoding(_input(task), task.name, task.options.get("encoding"))
    try:
        parsed = _vectorized(task, encoding)
        if parsed is not None:
            try:
                copy_to_stage(task, parsed)
            except NeedsExactReader:
                parsed = None  # staged again below, row by row; the aborted COPY left nothing behind
        if parsed is None:
            if task.header is not None:  # a part: what the vectorized reader checks, checked here
                check_part(task, encoding)
            parsed = _ParsedFile(task, encoding)
            copy_to_stage(task, parsed)
    except NeedsWholeFile:
        return StageReport(task.name, task.path, task.seq, "staged", bad_cut=True)
    mismatch = mismatch_report(task, parsed)
    if mismatch:
        return mismatch
    if parsed.staged == 0 and parsed.quarantined == 0 and task.header is None:
        return StageReport(task.name, task.path, task.seq, "rejected", "header_only",
                          f"{task.name}: the file has a header but no data rows")
    return StageReport(
        task.name, task.path, task.seq, "staged", encoding=encoding, delimiter=parsed.delimiter,
        columns=parsed.report_columns(),
        staged_rows=parsed.staged, quarantined_rows=parsed.quarantined, bad_cut=parsed.bad_cut, timings=parsed.timings,
        staged_types=parsed.staged_types, ascending=parsed.ascending, summaries=parsed.summaries)


def _vectorized(task: StageTask, encoding: str) -> ArrowFile | None:
    """The vectorized reader for the task, or None where the exact reader reads the file: a small
    file (as fast either way), an encoding that is not byte-compatible with ASCII, one column, a
    header it cannot find in the file's first bytes, or lines that end with a bare CR."""
    source = _input(task)
    size = (task.end if task.end is not None else _size(source)) - task.start
    if not supports(encoding) or size < csvfast.MIN_BYTES:
        return None
    if task.header is not None:  # a part of a large file: the plan found the header
        header, delimiter = list(task.header), task.delimiter
        start, end, first_line = task.start, task.end, task.first_line
    else:
        with _open_text(source, encoding) as f:  # the exact reader's sample, so both see one header
            sample = f.read(SNIFF_BYTES)
        with _open_binary(source) as f:
            head = f.read(4 * SNIFF_BYTES)
        if "\n" not in sample:
            return None
        delimiter = task.delimiter or task.options.get("delimiter") or sniff_delimiter(sample)
        header_lines, header = _first_record(sample, delimiter)
        if header is None:
            return None
        start = 0
        for _ in range(header_lines):
            nl = head.find(b"\n", start)
            if nl < 0:
                if len(head) < _size(source):
                    return None
                start = len(head)
                break
            start = nl + 1
        end, first_line = None, header_lines + 1
    if len(header) < 2:  # a blank line is an empty value to pyarrow, and no record to the exact reader
        return None
    parsed = ArrowFile(task, encoding, delimiter, start, end, first_line,
                       lambda s, e: io.BufferedReader(_RangeFile(source, s, e), 1 << 20))
    _name_columns(parsed, task, header)
    return parsed


def _name_columns(parsed: RowStage, task: StageTask, header: list[str]) -> None:
    """Name the row stage's columns after the file's header (normalized, keeping the table's names).

    Raises:
        FileRejected: a primary key column is not in the header.
    """
    source_names = [h.strip() for h in header]
    parsed.set_columns(source_names, keep_table_names(normalize_columns(source_names),
                                                      [normalize_identifier(h, transliterate=False)
                                                       for h in source_names], task.table_types))
    missing = [k for k in task.primary_key if k not in parsed.columns]
    if missing:
        raise FileRejected("missing_key", f"{task.name}: primary key column(s) {', '.join(missing)} missing "
                                          f"from the header ({', '.join(parsed.columns)})")


def _input(task: StageTask) -> "str | ByteSource":
    return task.source if task.source is not None else task.path


def _open_binary(path: "str | ByteSource"):
    return open(path, "rb") if isinstance(path, (str, os.PathLike)) else path.open()


def _size(path: "str | ByteSource") -> int:
    return os.path.getsize(path) if isinstance(path, (str, os.PathLike)) else path.size


def detect_encoding(path: "str | ByteSource", name: str, configured: str | None) -> str:
    """The file's text encoding, or :class:`FileRejected` (empty, binary, undecodable).

    UTF-8 with or without BOM is tried first over the whole file (fast, incremental), then cp1252,
    whose printable range covers latin-1 text; bytes that are undefined in cp1252 mean the file is not
    text in any encoding we can tell apart, and it is rejected rather than loaded as mojibake.
    """
    head = _check_head(path, name)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    candidates = [configured] if configured else [_utf8_name(head), "cp1252"]
    failure = ""
    for encoding in candidates:
        decoder = codecs.getincrementaldecoder(encoding)("strict")
        offset = 0
        try:
            with _open_binary(path) as f:
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


def _check_head(path: "str | ByteSource", name: str) -> bytes:
    """The file's first bytes, or :class:`FileRejected` for an empty file or binary content in them."""
    with _open_binary(path) as f:
        head = f.read(SNIFF_BYTES)
    if _size(path) == 0 or not head.strip(b" \t\r\n\xef\xbb\xbf"):
        raise FileRejected("empty", f"{name}: the file is empty")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return head
    control = _BINARY_BYTES.search(head)
    if control:
        raise FileRejected("binary", f"{name}: binary content (control byte 0x{control.group()[0]:02x} at offset "
                                     f"{control.start()}); not a CSV file")
    return head


def _utf8_name(head: bytes) -> str:
    return "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"


def _head_encoding(path: "str | ByteSource", name: str, configured: str | None) -> tuple[str, bool]:
    """The encoding the file's first bytes are in, and whether the whole file was checked: when
    they decode (as configured, else as UTF-8) the rest is left for the parts to check as they read
    it; otherwise the whole file decides (:func:`detect_encoding`)."""
    head = _check_head(path, name)
    guess = configured or _utf8_name(head)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head:
        return detect_encoding(path, name, configured), True
    try:
        codecs.getincrementaldecoder(guess)("strict").decode(head)  # a character cut at the end waits
    except UnicodeDecodeError:
        return detect_encoding(path, name, configured), True
    return guess, False


def check_part(task: StageTask, encoding: str) -> None:
    """What planning left for a part of a large file to check before it is read record by record:
    that its bytes are in ``encoding`` (unless the whole file was checked), hold no NUL, and no quote
    stands between two ordinary characters (which would make the cuts' quote counts mislead).

    Raises:
        NeedsWholeFile: any of it; the file is parsed again in one piece, which decides as a whole.
    """
    decoder = None if task.encoding_checked else codecs.getincrementaldecoder(encoding)("strict")
    stray = _stray_quote(task.delimiter.encode(encoding))
    previous = b""
    with _RangeFile(_input(task), task.start, task.end) as f:
        while block := f.read(_SCAN_BLOCK):
            if b"\x00" in block or stray.search(previous[-2:] + block):
                raise NeedsWholeFile(f"{task.name}: part {task.part} holds a NUL or a stray quote")
            if decoder is not None:
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    raise NeedsWholeFile(f"{task.name}: part {task.part} is not {encoding}") from None
            previous = block
    if decoder is not None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise NeedsWholeFile(f"{task.name}: part {task.part} is not {encoding}") from None


def _stray_quote(separator: bytes) -> re.Pattern:
    """A quote with an ordinary character on both sides. The pattern starts with the quote itself so
    the regex engine can skip ahead to quote characters (a leading class would test every byte)."""
    ordinary = b'[^' + re.escape(separator) + b'\n\r"]'
    return re.compile(b'"(?<=' + ordinary + b'")(?=' + ordinary + b')')


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


_SPLITTABLE = {"utf-8", "utf-8-sig", "cp1252", "latin-1", "iso8859-1"}
_SCAN_BLOCK = 8 << 20


def plan_parts(path: "str | ByteSource", name: str, options: dict, parts: int) -> FilePlan | None:
    """Cut a large file into ``parts`` byte ranges that start and end on record boundaries.

    Runs on the driver and reads only what the cuts need, at C speed: the first bytes (encoding,
    delimiter, header), then quote and line-break counts up to the last cut. A line break ends a
    record when the number of quote characters before it is even, which holds for every RFC 4180
    file. Returns None when the file should not be split; raises :class:`FileRejected` like a file
    task would.

    What a pass over the whole file would check, the parts check as they read (the vectorized
    reader's grammar check, else :func:`check_part`): that the rest of the file is in the encoding
    its first bytes show, holds no NUL, and has no quote in the middle of an unquoted field
    (``ab"c``, which breaks the parity rule). A part that finds any of it, or that ends inside a
    quoted field (a wrong cut shows up that way in the part before it, as every part starts where
    the one before it ended), reports ``bad_cut``, and the driver parses the file again in one
    piece, as a file that was never split.
    """
    encoding, checked = _head_encoding(path, name, options.get("encoding"))
    if codecs.lookup(encoding).name not in _SPLITTABLE or parts < 2:
        return None
    with _open_text(path, encoding) as f:
        sample = f.read(SNIFF_BYTES)
    if "\n" not in sample:
        return None
    delimiter = options.get("delimiter") or sniff_delimiter(sample)
    header_lines, header = _first_record(sample, delimiter)
    if header is None:
        return None
    size = _size(path)
    targets = [size * k // parts for k in range(1, parts)]
    cuts: list[tuple[int, int]] = []  # (byte offset after a record's line break, lines before it)
    quotes = lines = offset = 0
    header_end = None
    with _open_binary(path) as f:
        while targets and (block := f.read(_SCAN_BLOCK)):
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
    if header_end is None:
        return None
    bounds = [(header_end, header_lines)] + [c for c in cuts if c[0] > header_end and c[0] < size]
    bounds = sorted(set(bounds))
    ranges = tuple((b, bounds[i + 1][0] if i + 1 < len(bounds) else size, n + 1) for i, (b, n) in enumerate(bounds))
    if len(ranges) < 2:
        return None
    return FilePlan(encoding, delimiter, tuple(header), ranges, checked)


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

    def __init__(self, path: "str | ByteSource", start: int, end: int | None):
        self.f = _open_binary(path)
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


def _open_text(path: "str | ByteSource", encoding: str, start: int = 0, end: int | None = None):
    if start == 0 and end is None and isinstance(path, (str, os.PathLike)):
        return open(path, encoding=encoding, newline="")
    return io.TextIOWrapper(io.BufferedReader(_RangeFile(path, start, end), 1 << 20), encoding=encoding, newline="")


class _Lines:
    """The file's physical lines (line breaks kept), read in large blocks with no Python work per line.

    csv.reader pulls lines through a C-level chain over per-block lists. The current block is kept so
    that a record that fails to parse can be reported by its raw first line, and parsing resumed on the
    line after it, without reading the file again (a record spanning blocks falls back to a re-read).
    """

    BLOCK_CHARS = 1 << 20

    def __init__(self, path: "str | ByteSource", encoding: str, skip: int = 0, start: int = 0, end: int | None = None,
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


class _ParsedFile(RowStage):
    """Parses a CSV file (or a part of one) as it is copied; the row stage does the rest."""

    def __init__(self, task: StageTask, encoding: str):
        super().__init__(task, frozenset(task.options["null_tokens"]))
        opts = task.options
        csv.field_size_limit(max(csv.field_size_limit(), int(opts.get("max_field_bytes", 64 << 20))))
        source = _input(task)
        if task.delimiter:
            self.delimiter = task.delimiter
        else:
            with _open_text(source, encoding) as f:
                sample = f.read(SNIFF_BYTES)
            self.delimiter = opts.get("delimiter") or sniff_delimiter(sample)
        self.lines = _Lines(source, encoding, start=task.start, end=task.end, first_line=task.first_line)
        self.reader = csv.reader(self.lines.iterator, delimiter=self.delimiter, strict=True)
        # Physical lines before this reader's first line (the part's offset, then error recovery).
        self.base = self.prev_line = task.first_line - 1
        _name_columns(self, task, list(task.header) if task.header is not None else self._header())

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
                                yield self.block([list(c) for c in zip(*rows)], lines)
                                rows, lines = [], []
                        elif record:
                            self.quarantine_row(prev + 1, None, None, f"expected {ncols} fields, found {len(record)}",
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
                    self.quarantine_row(bad_line, None, raw.rstrip("\r\n"), f"unparseable CSV: {exc}", None)
                    self.base = self.prev_line = bad_line
                    self.reader = csv.reader(rest, delimiter=self.delimiter, strict=True)
            if rows:
                yield self.block([list(c) for c in zip(*rows)], lines)
        finally:
            self.lines.close()

    def close(self) -> None:
        self.lines.close()
        super().close()

