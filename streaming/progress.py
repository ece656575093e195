"""Progress of ``dataops ingest`` on stderr: a bar on a terminal, a plain line every few seconds
otherwise, nothing with ``--quiet``.

File tasks may run on the driver or on Spark executors, so progress is read where all of them
write: PostgreSQL. ``pg_stat_progress_copy`` reports, for every COPY in flight into the load's
staging tables, the rows and bytes received so far; one small query every half second from a
thread of the driver, which costs the load nothing. Bytes staged stand in for bytes read (COPY
text is about the size of the CSV), which gives the rate and the estimated time left; the phases
after staging (merge, catalog statistics) are announced by the load itself (``LoadContext.progress``).
"""

from __future__ import annotations

import sys
import threading
import time

from connectors import postgres

POLL_SECONDS = 0.5
LINE_SECONDS = 5.0
_PHASES = {"stage": "staging", "merge": "merging", "catalog": "catalog statistics"}


class IngestProgress:
    """Reports one ingest's progress; pass it as ``LoadContext.progress``, use it as a context manager.

    Args:
        dsn: the database the staging tables are in.
        stage_schema: their schema (the catalog schema).
        label: what is loaded, e.g. ``orders.csv -> orders``.
        total_bytes: the file's size.
        style: ``"bar"`` (a terminal), ``"lines"`` or ``"none"``.
        line_seconds: seconds between plain lines.
    """

    def __init__(self, dsn: str, stage_schema: str, label: str, total_bytes: int, style: str,
                 line_seconds: float = LINE_SECONDS, stream=None):
        self.dsn = dsn
        self.stage_schema = stage_schema
        self.label = label
        self.total = max(1, total_bytes)
        self.style = style
        self.line_seconds = line_seconds
        self.stream = stream or sys.stderr
        self.phase = "starting"
        self.rows = 0
        self.bytes = 0
        self._token: str | None = None
        self._seen: dict[str, tuple[int, int]] = {}
        self._started = time.monotonic()
        self._phase_started = self._started
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar = None
        self._task = None
        self._last_line = 0.0

    @staticmethod
    def style_for(stream, quiet: bool) -> str:
        """``none`` when quiet, ``bar`` on a terminal, else ``lines``."""
        if quiet:
            return "none"
        return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"

    def __enter__(self) -> "IngestProgress":
        if self.style == "none":
            return self
        if self.style == "bar":
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), DownloadColumn(),
                                 TransferSpeedColumn(), TextColumn("{task.fields[rows]:,} rows"),
                                 TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, rows=0)
        self._thread = threading.Thread(target=self._poll, name="dataops-progress", daemon=True)
        self._thread.start()
        return self

    def __call__(self, phase: str, info) -> None:
        """A load's phase change (``LoadContext.progress``): ``stage`` (staging token), ``merge``
        (rows staged), ``catalog``."""
        if phase == "stage":
            self._token = str(info)
        elif phase == "merge" and isinstance(info, int):
            self.rows, self.bytes = info, self.total
        self.phase = phase
        self._phase_started = time.monotonic()
        self._show(force=True)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.style == "none":
            return
        self.phase = "done" if exc[0] is None else "failed"
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.label} {self.phase}", rows=self.rows,
                             completed=self.total if exc[0] is None else self.bytes)
            self._bar.stop()
        else:
            self._line()

    # --- reading progress --------------------------------------------------------------------
    def _poll(self) -> None:
        conn = None
        while not self._stop.wait(POLL_SECONDS):
            if self.phase == "stage" and self._token:
                try:
                    if conn is None or conn.closed:
                        conn = postgres.connect(self.dsn, application_name="dataops-ingest-progress",
                                                connect_timeout=3)
                        conn.autocommit = True
                    self._read(conn)
                except Exception:  # progress is a nicety: a failed read never disturbs the load
                    conn = None
            self._show()
        if conn is not None:
            conn.close()

    def _read(self, conn) -> None:
        with conn.cursor() as cur:
            # The staging tables are created in the COPY's own transaction, so other sessions cannot see
            # them in pg_class yet: the COPY is found by its statement, which names the table.
            cur.execute(
                "SELECT p.pid::text || ' ' || a.query, p.tuples_processed, p.bytes_processed "
                "FROM pg_stat_progress_copy p JOIN pg_stat_activity a ON a.pid = p.pid "
                "WHERE p.datname = current_database() AND a.query LIKE %s", (f"%stg\\_{self._token}\\_%",))
            for name, rows, size in cur.fetchall():
                before = self._seen.get(name, (0, 0))
                self._seen[name] = (max(before[0], rows or 0), max(before[1], size or 0))
        # A part whose COPY ended keeps the last count seen (the merge phase brings the exact total).
        self.rows = sum(r for r, _ in self._seen.values())
        self.bytes = min(self.total, sum(b for _, b in self._seen.values()))

    # --- showing it --------------------------------------------------------------------------
    def _show(self, force: bool = False) -> None:
        if self.style == "bar" and self._bar is not None:
            what = self.label if self.phase in ("stage", "starting") else f"{self.label} {_PHASES[self.phase]}"
            self._bar.update(self._task, description=what, completed=self.bytes, rows=self.rows)
        elif self.style == "lines" and (force or time.monotonic() - self._last_line >= self.line_seconds):
            self._line()

    def _line(self) -> None:
        self._last_line = time.monotonic()
        elapsed = self._last_line - self._started
        if self.phase == "stage":
            rate = self.rows / max(elapsed, 1e-3)
            done = self.bytes / self.total
            eta = f", ETA {(elapsed / done - elapsed):.0f}s" if 0.01 < done < 1 else ""
            text = (f"staged {self.bytes / 1e6:.1f} of {self.total / 1e6:.1f} MB ({done:.0%}), {self.rows:,} rows, "
                    f"{rate:,.0f} rows/s{eta}")
        elif self.phase in _PHASES:
            text = f"{_PHASES[self.phase]} ({self.rows:,} rows staged; {self._last_line - self._phase_started:.0f}s)"
        else:
            text = f"{self.phase} after {elapsed:.1f}s"
        print(f"dataops: {self.label}: {text}", file=self.stream, flush=True)
