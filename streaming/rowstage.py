"""The row stage, shared by every source: raw values with their positions in, typed rows staged.

A source hands over blocks of raw values (one list per column, ``None`` for a missing value) with
each row's position (a file's line number, a record's index in its batch). The stage cleans them
(trim, null tokens), infers or checks each column's type, quarantines what cannot load with its
position, column, raw value and reason, and turns the clean rows into ``COPY`` text, which the
sink's staging writer (:mod:`connectors.staging`) streams into an UNLOGGED staging table; the
driver merges every task's staging table in one transaction. Pure: no I/O here.

Runs where the source's task runs: on an executor, or on the driver for a small batch. Everything a
task needs crosses the pickle boundary in :class:`StageTask`; a task opens its own connection and
holds no state between calls, and sends back only a small :class:`StageReport`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import BinaryIO, Protocol, runtime_checkable

from streaming.errors import FileRejected
from streaming.schema import TEXT, ColumnTyper, bool_token_set

CHUNK_ROWS = 2000
MAX_COLUMNS = 1599  # PostgreSQL's 1600 columns per table, less the staging table's row position
JSONB = "jsonb"
RESCUED = "_rescued"  # policy rescue: the jsonb column holding what did not fit the table
# Types a staging column may have (values the row stage accepted load into them as they are).
STAGED_TYPES = ("integer", "bigint", "numeric", "double precision", "date", "timestamp", "timestamptz", "boolean")
# A typed staging column the merge may cast to a wider type with the result a text one would give
# (double -> numeric is not one: 1.000e+02 is 100.0 as text, 100 as a double).
EXACT_CASTS = {("integer", "bigint"), ("integer", "numeric"), ("bigint", "numeric"), ("integer", "double precision"),
               ("date", "timestamp")}
_WS = " \t"


@runtime_checkable
class ByteSource(Protocol):
    """Where a task reads an input's bytes: a local file, an object in a store, ...

    Pickled to the executor with the task; :meth:`open` runs there and opens its own connection.
    """

    def open(self) -> BinaryIO:
        """A seekable binary stream over the input (reads may be ranged requests)."""

    @property
    def size(self) -> int:
        """The input's length in bytes."""



@dataclasses.dataclass(frozen=True)
class StageTask:
    """Everything one stage task needs; pickled to the executor.

    Attributes:
        path: the input: a local file (the executor must see the same path: a shared mount on a
            cluster), an object's URL, or an endpoint's (masked) URL.
        name: the input's name as the user knows it, used in quarantine rows and errors.
        seq: the input's position in its batch; orders rows for upsert (last occurrence wins).
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
        source: a :class:`ByteSource` for inputs that are not local files (None = open ``path``).
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
    source: ByteSource | None = None  # where the bytes are, when not the local file ``path``
    text_columns: tuple = ()  # columns to stage as text whatever their type (another input of the batch is text)
    encoding_checked: bool = True  # a part's whole file was checked as ``encoding`` (else the part checks)



@dataclasses.dataclass
class StageReport:
    """What a stage task sends back to the driver (small: no rows)."""

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
    staged_types: list | None = None  # the staging columns' types (None: all text, cast by the merge)
    # (column, first, last): an integer column whose staged values strictly increase in input
    # order, so no two staged rows are equal (None: not known).
    ascending: tuple | None = None
    # column -> streaming.summaries.ColumnSummary: what the staged rows add to the catalog (None:
    # not computed, the merge's SQL reads the staged rows).
    summaries: dict | None = None
    # Seconds the task spent reading its input ("parse"), cleaning and typing it ("clean_type"),
    # encoding it for COPY ("encode"), summarizing it for the catalog ("catalog") and waiting for
    # PostgreSQL to take the rows ("copy").
    timings: dict = dataclasses.field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        return self.staged_rows + self.quarantined_rows


def mismatch_report(task: StageTask, parsed: "RowStage") -> StageReport | None:
    """Policy fail: the rejection of a task whose values need wider types than the table has."""
    mismatch = parsed.type_mismatch()
    if not mismatch:
        return None
    return StageReport(task.name, task.path, task.seq, "rejected", "schema_mismatch",
                       f"{task.name}: values need wider types than table {task.dataset} has and "
                       f"on_schema_change is fail: " + ", ".join(f"{c} {d['table']} -> {d['file']}"
                                                                  for c, d in mismatch.items()),
                       diff={"changed_types": mismatch}, columns=parsed.report_columns(),
                       staged_rows=parsed.staged, quarantined_rows=parsed.quarantined)


def restage_as_text(reports: list[StageReport]) -> dict[int, tuple]:
    """Which reports must be staged again with some columns as text: a column typed in one input and
    of a type it cannot be cast to exactly in the batch (another input holds text, say). Returns
    report index -> the columns to stage as text."""
    from streaming.schema import join

    joined: dict[str, str | None] = {}
    for r in reports:
        for name, _, kind, _ in (r.columns if r.status == "staged" else ()):
            joined[name] = join(joined[name], kind) if joined.get(name) else kind
    redo = {}
    for i, r in enumerate(reports):
        if r.status != "staged" or not r.staged_types:
            continue
        names = tuple(c[0] for c, staged in zip(r.columns, r.staged_types)
                      if staged != TEXT and joined.get(c[0]) != staged and (staged, joined.get(c[0])) not in EXACT_CASTS)
        if names:
            redo[i] = names
    return redo


class RowStage:
    """One task's rows on their way to staging: cleaning, typing and quarantine, for every source.

    A source's parser creates one, names the columns with :meth:`set_columns`, and yields the COPY
    text of :meth:`block` for each block of rows it reads; :func:`copy_to_stage` streams that into
    the task's staging table. Lives inside one task (executor or driver); never pickled.

    Args:
        task: the task being staged.
        nulls: raw values that mean NULL.
        empty_is_null: whether an empty value is NULL whatever ``nulls`` says.
    """

    copy_format = "text"  # what copy_chunks yields: COPY text format (str), or "binary" (bytes)
    staged_types: list | None = None  # the staging table's column types after prepare() (None: all text)
    ascending: tuple | None = None  # StageReport.ascending, known once the rows are staged
    summaries: dict | None = None  # StageReport.summaries, known once the rows are staged

    def __init__(self, task: StageTask, nulls: frozenset, empty_is_null: bool | None = None):
        import tempfile

        self.task = task
        opts = task.options
        self.nulls = frozenset(nulls)
        self.bools = bool_token_set(opts["true_tokens"], opts["false_tokens"])
        self.staged = 0
        self.quarantined = 0
        self.bad_cut = False
        self.timings = {"parse": 0.0, "clean_type": 0.0, "encode": 0.0, "catalog": 0.0, "copy": 0.0}  # StageReport
        self.quarantine = tempfile.SpooledTemporaryFile(max_size=8 << 20, mode="w+", encoding="utf-8", newline="")
        self.source_names: list[str] = []
        self.columns: list[str] = []  # for quarantine records until the columns are known
        self.typers: list[ColumnTyper] = []
        self.unknown: set[int] = set()
        self.rescue = False
        self.fixed: set[int] = set()
        self.out_positions: list[int] = []
        self.out_names: list[str] = []
        self.null_columns: set[int] = set()  # staged columns with a NULL among the rows kept so far
        self.key_positions: list[int] = []
        # Null-token probes over a column joined by newlines (see _clean).
        self._empty_is_null = "" in self.nulls if empty_is_null is None else empty_is_null
        self._null_probes = tuple(f"\n{t}\n" for t in self.nulls if t)
        self._null_initials = frozenset(t[0] for t in self.nulls if t)

    def set_columns(self, source_names: list[str], columns: list[str], hints: dict | None = None) -> None:
        """Name the columns (as in the input, and normalized); typers follow the table and the policy.

        Raises:
            FileRejected: policy fail and the columns do not match the table.
        """
        self.source_names, self.columns = list(source_names), list(columns)
        task = self.task
        if hints:
            task = dataclasses.replace(task, hints={**task.hints, **hints})
        self._setup_columns(task, task.options)
        self.key_positions = [self.columns.index(k) for k in task.primary_key if k in self.columns]

    def prepare(self) -> None:
        """Work done before the staging table is created (a reader that decides the staging types
        from all of its input reads it here)."""

    def copy_chunks(self) -> Iterator[str]:
        """COPY text of every row, a block at a time (tab-separated, ``\\N`` for NULL)."""
        raise NotImplementedError

    def close(self) -> None:
        self.quarantine.close()

    def _setup_columns(self, task: StageTask, opts: dict) -> None:
        """Typers per column by policy, and which columns are staged (see StageTask.policy)."""
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
            out.append([RESCUED, None, JSONB, None])
        return out

    def type_mismatch(self) -> dict:
        """Policy fail: columns whose values needed a wider type than the table's."""
        if self.task.policy != "fail":
            return {}
        return {self.columns[i]: {"table": t.fixed, "file": t.wanted} for i, t in enumerate(self.typers)
                if t.wanted and not t.loose}


    def block(self, columns: list[list[str]], positions: list[int]) -> str:
        """Clean, type and quarantine a block of rows given as columns of raw text; the COPY text of
        the rows that load. ``positions[i]`` is row ``i``'s line (file) or index (records)."""
        started = time.perf_counter()
        try:
            return self._block(columns, positions)
        finally:
            self.timings["clean_type"] += time.perf_counter() - started

    def _block(self, columns: list[list[str]], positions: list[int]) -> str:
        rows = _Rows(columns)
        lines = positions
        bad: dict[int, tuple[int, str]] = {}
        rescued: dict[int, dict] = {}
        out_columns = []
        joins = []
        for ci, raw in enumerate(columns):
            values, joined, has_null = self._clean(raw)
            if ci in self.unknown:  # rescue: a column the table does not have
                for i, v in enumerate(values):
                    if v is not None:
                        rescued.setdefault(i, {})[self.columns[ci]] = columns[ci][i]
                out_columns.append(values)
                joins.append((joined, has_null))
                continue
            failures = self.typers[ci].check(values, joined, has_null)
            if failures and self.rescue:
                values = list(values)  # may be the raw column itself, which quarantine still reads
                for i in failures:
                    rescued.setdefault(i, {})[self.columns[ci]] = columns[ci][i]
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
            self.quarantine_row(lines[i], self.columns[ci], columns[ci][i], reason, rows[i])
        out_columns = [out_columns[i] for i in self.out_positions]
        joins = [joins[i] for i in self.out_positions]
        if self.rescue:
            name = self.task.name
            out_columns.append([json.dumps({**rescued[i], "_file": name}, ensure_ascii=False) if i in rescued else None
                                for i in range(len(lines))])
            joins.append((None, True))
        if bad:
            keep = [i for i in range(len(lines)) if i not in bad]
            out_columns = [[col[i] for i in keep] for col in out_columns]
            lines = [lines[i] for i in keep]
            joins = [(None, True)] * len(out_columns)
        self.staged += len(lines)
        if not lines:
            return ""
        encoded = [_copy_column(col, *j) for col, j in zip(out_columns, joins)]
        return "\n".join(map("\t".join, zip(map(str, lines), *encoded))) + "\n"

    def arrow_block(self, raw: list, first_line: int, line_breaks: int | None = None) -> list | None:
        """:meth:`block` on Arrow string arrays (one per column, no NULLs) whose rows follow each other
        from physical line ``first_line``: the rows that load, as arrays (their positions, then the
        staged columns' cleaned values), or None when none does. ``line_breaks`` is how many line
        breaks the values hold in all, when the caller knows.

        Whole columns go through :mod:`streaming.vectorized`; only a column block the vectorized checks
        do not accept is typed value by value, so the result is the one :meth:`block` gives. Not for
        the ``rescue`` policy (see :attr:`vectorized`).
        """
        started = time.perf_counter()
        try:
            return self._arrow_block(raw, first_line, line_breaks)
        finally:
            self.timings["clean_type"] += time.perf_counter() - started

    def _arrow_block(self, raw: list, first_line: int, line_breaks: int | None) -> list | None:
        from streaming import vectorized

        rows = len(raw[0]) if raw else 0
        if line_breaks == 0:
            per_row, holding = None, set()
        else:
            per_row, holding = vectorized.newlines_per_row(raw, line_breaks)
        return self._arrow_rows(raw, vectorized.positions(first_line, rows, per_row), holding)

    def arrow_rows(self, raw: list, positions) -> list | None:
        """:meth:`arrow_block` for rows whose positions are given (an Arrow int64 array: a record's
        index in its batch, say) and whose raw values may be NULL (a missing value)."""
        from streaming import vectorized

        started = time.perf_counter()
        try:
            return self._arrow_rows(raw, positions, vectorized.newlines_per_row(raw)[1])
        finally:
            self.timings["clean_type"] += time.perf_counter() - started

    def _arrow_rows(self, raw: list, lines, holding: set[int]) -> list | None:
        """The rows of ``raw`` that load (their positions ``lines``, then the staged columns' cleaned
        values), or None; ``holding``: the columns whose values hold line breaks."""
        import pyarrow as pa
        import pyarrow.compute as pc
        from streaming import vectorized

        rows = len(lines)
        values = [vectorized.clean(c, self.nulls, self._empty_is_null) for c in raw]
        bad: dict[int, tuple[int, str]] = {}
        for ci, column in enumerate(values):
            failures = self._check_column(ci, column, ci in holding)
            if failures:
                why = " (the table's partition key, whose type cannot change)" if ci in self.fixed else ""
                typer = self.typers[ci]
                for i in failures:
                    bad.setdefault(i, (ci, typer.describe_failure(column[i].as_py()) + why))
        for ci in self.key_positions:
            if values[ci].null_count:
                for i in pc.indices_nonzero(values[ci].is_null()).to_pylist():
                    bad.setdefault(i, (ci, f"NULL in primary key column {self.columns[ci]}"))
        out = [lines] + [values[i] for i in self.out_positions]
        if bad:
            for i in sorted(bad):
                ci, reason = bad[i]
                self.quarantine_row(lines[i].as_py(), self.columns[ci], raw[ci][i].as_py(), reason,
                                    [c[i].as_py() for c in raw])
            keep = pc.invert(pc.is_in(pa.array(range(rows), pa.int64()), value_set=pa.array(sorted(bad), pa.int64())))
            out = [pc.filter(c, keep) for c in out]
        self.staged += rows - len(bad)
        self.null_columns.update(j for j, column in enumerate(out[1:]) if column.null_count)
        return out if rows > len(bad) else None

    def arrow_copy(self, batches) -> Iterator[bytes]:
        """``COPY ... (FORMAT binary)`` input of the rows :meth:`arrow_rows` kept (record batches of
        the positions, then the staged columns), a batch at a time, typed as :attr:`staged_types`
        says (None: all text). Each column is read as its type once (:func:`streaming.pgvalues.read`),
        for the binary fields and for the catalog. Sets :attr:`ascending` when the first integer
        column strictly increases through all the rows, and :attr:`summaries` to what the rows add
        to the catalog."""
        import pyarrow as pa

        from streaming import pgvalues, summaries, vectorized

        true_tokens = self.task.options.get("true_tokens", ())
        staged = self.staged_types or [TEXT] * len(self.out_positions)
        kinds = self.staged_types or [self.typers[i].current for i in self.out_positions]
        probe = next((i for i, kind in enumerate(kinds) if kind in ("integer", "bigint")), None)
        span = None
        # What each staged column is read as for the catalog: the type the merge gives its values
        # (text where another input of the batch holds text; a date in a configured format is left
        # to the merge's SQL).
        text_columns = set(self.task.text_columns)
        read_as = [TEXT if self.columns[i] in text_columns else
                   None if self.typers[i].format is not None else self.typers[i].current for i in self.out_positions]
        summarizers = [summaries.ColumnSummarizer(kind) for kind in read_as]
        scales: list[int | None] = [None] * len(staged)  # numerics: the scale the column was read at so far
        order = self.copy_order()
        yield pgvalues.COPY_HEADER
        for batch in batches:
            if probe is not None:
                block = vectorized.ascending_span(batch.column(probe + 1))
                if block is None or (span is not None and block[0] <= span[1]):
                    probe = span = None
                else:
                    span = (span[0] if span else block[0], block[1])
            started = time.perf_counter()
            readings = []
            for j, kind in enumerate(staged):
                column = batch.column(j + 1)
                if kind == "boolean":
                    column = vectorized.staged(column, kind, true_tokens)
                reading = pgvalues.read(column, kind, scales[j])
                scales[j] = getattr(reading, "scale", None)
                readings.append(reading)
            encoded = time.perf_counter()
            for j, (summarizer, kind) in enumerate(zip(summarizers, read_as)):
                if kind == staged[j]:
                    summarizer.add(readings[j])
                elif kind is not None:  # staged as text, cast by the merge: read as that type
                    column = batch.column(j + 1)
                    if kind == "boolean" and column.type != pa.bool_():
                        column = vectorized.staged(column, kind, true_tokens)
                    summarizer.add(column)
            summarized = time.perf_counter()
            rows = pgvalues.copy_rows(batch.column(0), [readings[j] for j in order])
            self.timings["encode"] += encoded - started + time.perf_counter() - summarized
            self.timings["catalog"] += summarized - encoded
            yield rows
        yield pgvalues.COPY_TRAILER
        if probe is not None and span is not None:
            self.ascending = (self.out_names[probe], *span)
        self.summaries = {name: s.result() for name, s in zip(self.out_names, summarizers)}

    def copy_order(self) -> list[int]:
        """The staged columns in the order :meth:`arrow_copy` writes them (the COPY's column list
        names them so, after ``_ord``): first the typed columns without a NULL in the task's rows,
        whose fields are laid out together as one record per row, then the others."""
        from streaming import pgvalues

        staged = self.staged_types or [TEXT] * len(self.out_positions)
        fixed = [j for j, kind in enumerate(staged) if pgvalues.fixed_width(kind) and j not in self.null_columns]
        return fixed + [j for j in range(len(staged)) if j not in fixed]

    def staging_types(self, text_columns=()) -> list[str]:
        """The type each staged column can be staged as, so that the merge casts nothing: the inferred
        or fixed type where PostgreSQL reads the cleaned values as they are (ISO dates, numbers,
        booleans converted by :func:`streaming.vectorized.staged`, JSON its typer vouches for), else
        text."""
        out = []
        for i in self.out_positions:
            typer = self.typers[i]
            kind = typer.current
            typed = ((kind in STAGED_TYPES and typer.format is None) or (kind == JSONB and typer.jsonb_as_is)) \
                and self.columns[i] not in text_columns
            out.append(kind if typed else TEXT)
        return out

    @property
    def vectorized(self) -> bool:
        """Whether :meth:`arrow_block` can stage this task (every policy but ``rescue`` into a table)."""
        return not (self.rescue or self.unknown)

    def _check_column(self, ci: int, column, line_breaks: bool) -> list[int]:
        """:meth:`ColumnTyper.check` of an Arrow column block, vectorized where that gives the same answer."""
        from streaming import vectorized

        typer = self.typers[ci]
        if typer.current == TEXT or not typer.checks or column.null_count == len(column):
            return []
        kind = typer.current or typer.guess(vectorized.first_value(column))
        if kind == TEXT or vectorized.all_fit(column, kind, self.bools, line_breaks):
            typer.current = kind
            return []
        return typer.check(column.to_pylist())

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

    def quarantine_row(self, line: int, column: str | None, raw_value: str | None, reason: str,
                       record: list[str] | None) -> None:
        """Keep a row that cannot load: its position, column, raw value, reason and whole record."""
        self.quarantined += 1
        if record is None:
            record_json = None
        elif len(record) == len(self.columns):
            record_json = json.dumps(dict(zip(self.columns, record)), ensure_ascii=False)
        else:
            record_json = json.dumps(record, ensure_ascii=False)
        self.quarantine.write("\t".join(_copy_value(v) for v in (str(line), column, raw_value, reason, record_json)) + "\n")


class _Rows:
    """Row ``i`` of a block of columns, built only for the rows that are quarantined."""

    def __init__(self, columns: list[list[str]]):
        self.columns = columns

    def __getitem__(self, i: int) -> list[str]:
        return [c[i] for c in self.columns]


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
