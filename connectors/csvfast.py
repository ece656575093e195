"""The vectorized CSV reader: record-aligned blocks, checked against RFC 4180's grammar, parsed by pyarrow.

A file task reads its byte range in blocks of about :data:`BLOCK_BYTES`, each cut after a line break
with an even number of quote characters before it. Each block is then matched, in one RE2 pass,
against the grammar of a sequence of RFC 4180 records (a quoted field is ``"`` ... ``"`` with quotes
doubled inside, and is followed by a delimiter or a line break; an unquoted field holds no delimiter,
quote at its start, CR or LF). A text that matches the grammar has exactly one reading, the one
Python's strict ``csv`` reader gives, so ``pyarrow.csv`` parses it as the exact reader would, in
C++ on every core; the rows then go through the row stage's column kernels
(:meth:`streaming.rowstage.RowStage.arrow_block`). Line numbers come from the block's first line and
the line breaks inside each row's values. The rows that load wait in a local Arrow IPC file until
the whole range is read, so that the staging table is created with the columns' types and
PostgreSQL parses each value once, during the COPY.

Anything the grammar or pyarrow does not accept — a stray or unclosed quote, a row with too many or
too few fields, a blank line, a bare CR, a field over the size limit — raises
:class:`NeedsExactReader`, and the task stages the input again with the exact reader
(:mod:`connectors.csvfile`), which reports every such row with its line and reason. Memory follows
the block, not the file (the kept rows are on local disk).
"""

from __future__ import annotations

import codecs
import csv
import time
from collections.abc import Iterator

from streaming.rowstage import RowStage, StageTask

BLOCK_BYTES = 8 << 20
# Below this size the exact reader is as fast (the vectorized one compiles its patterns per block).
MIN_BYTES = 256 << 10
# Encodings whose line breaks and quotes are the single bytes \n, \r and ", so blocks can be cut on
# bytes; anything but UTF-8 is transcoded block by block.
_BYTE_ENCODINGS = {"utf-8", "utf-8-sig", "cp1252", "iso8859-1"}


class NeedsExactReader(Exception):
    """The input holds something only the exact reader reports row by row."""


class NeedsWholeFile(Exception):
    """A part of a large file finds its file is not what planning took it for (see
    :func:`connectors.csvfile.plan_parts`): the file is parsed again in one piece."""


def supports(encoding: str) -> bool:
    """Whether the vectorized reader can read a file in ``encoding``."""
    return codecs.lookup(encoding).name in _BYTE_ENCODINGS


def grammar(delimiter: str) -> str:
    """RE2 pattern of a block of whole RFC 4180 records with ``delimiter``."""
    d = {"\t": r"\t", "|": r"\|"}.get(delimiter, delimiter)
    filled = f'(?:"(?:[^"]|"")*"|[^"{d}\\r\\n][^{d}\\r\\n]*)'
    field = f"(?:{filled})?"
    # A record is never a blank line: pyarrow would read one as a row of empty values, the exact
    # reader skips it.
    record = f"(?:{filled}(?:{d}{field})*|(?:{d}{field})+)"
    return f"\\A(?:{record}(?:\\r\\n|\\n))*\\z"


class ArrowFile(RowStage):
    """A CSV file, or a part of one, read by pyarrow; the row stage's column kernels do the rest.

    Args:
        task: the task.
        encoding: the file's encoding (one :func:`supports` accepts).
        delimiter: the field delimiter.
        start / end: the data's byte range (after the header; ``end`` None = to the end of the input).
        first_line: the physical line number of the range's first byte.
        open_range: ``open_range(start, end)`` -> a binary stream over those bytes.

    The caller names the columns (:meth:`RowStage.set_columns`); :meth:`prepare` reads the input and
    raises :class:`NeedsExactReader` for input only the exact reader reports exactly.
    """

    copy_format = "binary"

    def __init__(self, task: StageTask, encoding: str, delimiter: str, start: int, end: int | None,
                 first_line: int, open_range):
        super().__init__(task, frozenset(task.options["null_tokens"]))
        self.encoding, self.delimiter = encoding, delimiter
        self.range = (start, end, first_line)
        self.open_range = open_range
        self.field_limit = max(csv.field_size_limit(), int(task.options.get("max_field_bytes", 64 << 20)))
        self.spool = None  # the kept rows (a local Arrow IPC stream), from prepare() to close()

    def prepare(self) -> None:
        """Read the whole range: rows that load are kept, cleaned, in a local Arrow IPC file (memory
        follows the block), so that the staging table can be created with the types the rows have.

        Raises:
            NeedsExactReader: the input holds something only the exact reader reports exactly.
        """
        import tempfile

        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pcsv

        if not self.vectorized:
            raise NeedsExactReader("the rescue policy")
        started, typing_before = time.perf_counter(), self.timings["clean_type"]
        names = [f"f{i}" for i in range(len(self.columns))]
        parse = pcsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True, ignore_empty_lines=False)
        convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False,
                                      quoted_strings_can_be_null=False)
        pattern = grammar(self.delimiter)
        transcode = codecs.lookup(self.encoding).name not in ("utf-8", "utf-8-sig")
        schema = pa.schema([("_ord", pa.int64()), *((f"c{i}", pa.string()) for i in range(len(self.out_positions)))])
        self.spool = tempfile.TemporaryFile(prefix="dataops-stage-")
        with pa.ipc.new_stream(pa.PythonFile(self.spool, mode="w"), schema) as writer:
            for block, line in self._blocks():
                if b"\x00" in block:  # no text holds one (a part's file was not checked for it as a whole)
                    raise NeedsExactReader(f"line {line}: a NUL byte")
                if transcode:
                    try:
                        block = block.decode(self.encoding).encode("utf-8")
                    except UnicodeDecodeError:  # a part's file, checked as a whole by the exact path
                        raise NeedsExactReader(f"line {line}: not {self.encoding}") from None
                if not pc.match_substring_regex(pa.array([block], pa.binary()), pattern)[0].as_py():
                    raise NeedsExactReader(f"line {line}: the block is not plain RFC 4180")
                try:
                    # One chunk per column: the task's blocks follow each other on one core (the other
                    # cores run the other tasks), and a column of two chunks costs a copy to join.
                    table = pcsv.read_csv(pa.py_buffer(block),
                                          read_options=pcsv.ReadOptions(column_names=names, use_threads=False,
                                                                        block_size=len(block) + 1),
                                          parse_options=parse, convert_options=convert)
                except pa.ArrowInvalid as exc:  # ragged rows, blank lines
                    raise NeedsExactReader(f"line {line}: {exc}") from None
                columns = [_one_array(table.column(i)) for i in range(len(names))]
                for column in columns:
                    if len(column) and pc.max(pc.binary_length(column)).as_py() > self.field_limit:
                        raise NeedsExactReader(f"line {line}: a field is over the size limit")
                rows = self.arrow_block(columns, line, block.count(b"\n") - table.num_rows)
                if rows is not None:
                    writer.write_batch(pa.record_batch(rows, schema=schema))
        self.staged_types = self.staging_types(self.task.text_columns)
        self.timings["parse"] += time.perf_counter() - started - (self.timings["clean_type"] - typing_before)

    def copy_chunks(self) -> Iterator[bytes]:
        """The kept rows as ``COPY ... (FORMAT csv)`` text for the typed staging table, a block at a time."""
        import pyarrow as pa

        self.spool.seek(0)
        with pa.ipc.open_stream(pa.PythonFile(self.spool, mode="r")) as reader:
            yield from self.arrow_copy(reader)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
        super().close()

    def _blocks(self) -> Iterator[tuple[bytes, int]]:
        """The range's bytes in blocks of whole records (if the quote count does not mislead; the
        grammar check finds out) with each block's first line."""
        start, end, line = self.range
        carry = b""
        with self.open_range(start, end) as f:
            while True:
                piece = f.read(BLOCK_BYTES)
                text = carry + piece
                if not piece:
                    # Blank lines at the end hold no records; the last record may lack its line break.
                    body = text.rstrip(b"\r\n")
                    if body:
                        yield body + b"\n", line
                    return
                cut = _record_end(text)
                while True:  # blank lines go with the next block (at the end of the input they are dropped)
                    if text.endswith(b"\n\n", 0, cut):
                        cut -= 1
                    elif text.endswith(b"\n\r\n", 0, cut):
                        cut -= 2
                    else:
                        break
                if cut <= 0:
                    if len(text) > self.field_limit + BLOCK_BYTES:
                        raise NeedsExactReader(f"line {line}: no record ends within the size limit")
                    carry = text
                    continue
                block, carry = text[:cut], text[cut:]
                yield block, line
                line += block.count(b"\n")


def _one_array(column):
    """A column of one chunk as that chunk (no copy); any other column joined into one array."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _record_end(data: bytes) -> int:
    """The offset after the last line break with an even number of quotes before it, or 0."""
    p = data.rfind(b"\n")
    if p < 0:
        return 0
    before = data.count(b'"', 0, p)
    while True:
        if before % 2 == 0:
            return p + 1
        q = data.rfind(b"\n", 0, p)
        if q < 0:
            return 0
        before -= data.count(b'"', q, p)
        p = q
