"""What the daemon says about itself: start-up lines, ``/status`` and the ``dataops status`` command.

The daemon side (:func:`daemon_status`, :class:`PostgresProbe`) runs on the driver; the command side
(:func:`fetch_status`, :func:`render_status`) asks a running daemon over its HTTP port.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import urllib.error
import urllib.request
from importlib import metadata

from psycopg2 import sql

from connectors import postgres

PROBE_SECONDS = 2.0  # a scrape or probe within this long of the last check reuses its answer
_DSN_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)([^@]*)(@)", re.IGNORECASE)
_URL_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&]*)", re.IGNORECASE)


def version() -> str:
    try:
        return metadata.version("smart-dataops-copilot")
    except metadata.PackageNotFoundError:
        return "unknown"


def mask_dsn(dsn: str) -> str:
    """``dsn`` fit for a log line: the password of a URL or ``key=value`` DSN replaced by ``***``."""
    masked = _URL_PASSWORD.sub(r"\1***\3", dsn)
    masked = _URL_QUERY_PASSWORD.sub(r"\1***", masked)
    return _DSN_PASSWORD.sub(r"\1***", masked)


def startup_lines(settings, dsn: str) -> list[str]:
    """The first lines ``dataops run`` prints: version, database, landing folder, datasets, each source's entries."""
    pg = settings.postgres
    landing = settings.landing.path.resolve()
    found = sorted(p.name for p in landing.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) \
        if landing.is_dir() else []
    configured = sorted(set(settings.datasets) - {f for f in found})
    datasets = ", ".join(found + [f"{d} (configured, no folder yet)" for d in configured]) or "none yet"
    lines = [f"dataops {version()} starting",
             f"PostgreSQL {mask_dsn(dsn)} (tables in schema {pg.schema_name}, catalog in {pg.catalog_schema})",
             f"landing folder {landing}; datasets: {datasets}"]
    from streaming.sources import registry

    sections = []
    for source in registry().values():  # each source's own section: endpoints, object_stores, ...
        if source.section:
            entries = settings.section(source.section) or []
            sections.append(f"{source.section}: {', '.join(getattr(e, 'name', str(e)) for e in entries) or 'none'}")
    return lines + ["; ".join(sections)] if sections else lines


class PostgresProbe:
    """``SELECT 1`` against PostgreSQL, cached for :data:`PROBE_SECONDS` so scrapes stay cheap."""

    def __init__(self, dsn: str, max_age: float = PROBE_SECONDS):
        self.dsn = dsn
        self.max_age = max_age
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._answer: tuple[bool, str] = (False, "not checked yet")

    def check(self) -> tuple[bool, str]:
        """``(up, problem)``: whether PostgreSQL answered, and why not."""
        with self._lock:  # concurrent scrapes share one check
            if time.monotonic() - self._at < self.max_age:
                return self._answer
            try:
                conn = postgres.connect(self.dsn, connect_timeout=3)
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT 1")
                finally:
                    conn.close()
                self._answer = (True, "")
            except Exception as exc:
                self._answer = (False, str(exc).strip() or type(exc).__name__)
            self._at = time.monotonic()
            return self._answer


def last_batches(dsn: str, catalog_schema: str) -> dict[str, dict]:
    """Each dataset's last committed batch from the catalog's ``loads`` table."""
    conn = postgres.connect(dsn, connect_timeout=3)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (sql.Identifier(catalog_schema, "loads").as_string(cur),))
            if cur.fetchone()[0] is None:
                return {}
            cur.execute(sql.SQL(
                "SELECT DISTINCT ON (dataset) dataset, load_id, finished_at, rows_in, rows_loaded, rows_quarantined, "
                "duplicates_removed, files_rejected, extract(epoch FROM finished_at - started_at) FROM {}.loads "
                "WHERE status = 'committed' ORDER BY dataset, load_id DESC").format(sql.Identifier(catalog_schema)))
            return {row[0]: {"load_id": row[1], "finished_at": row[2].isoformat(timespec="seconds"),
                             "rows_in": row[3], "rows_loaded": row[4], "rows_quarantined": row[5],
                             "duplicates": row[6], "files_rejected": row[7],
                             "seconds": round(float(row[8]), 3) if row[8] is not None else None}
                    for row in cur.fetchall()}
    finally:
        conn.close()


def daemon_status(daemon) -> tuple[bool, dict]:
    """``/status`` of a :class:`streaming.daemon.Daemon`: readiness, and per dataset its source, query
    state, pending files, last batch and last error."""
    ready, details = daemon.readiness()
    batches: dict[str, dict] = {}
    if details["postgres"] == "ok":
        try:
            batches = last_batches(daemon.ctx.dsn, daemon.settings.postgres.catalog_schema)
        except Exception as exc:  # the status page answers even while the catalog cannot be read
            details["postgres"] = f"catalog unreadable: {str(exc).strip().splitlines()[0]}"
    datasets = []
    for q in sorted(list(daemon.queries.values()), key=lambda q: q.table):
        reached = q.source.status(q.dataset)
        datasets.append({"dataset": q.table, "source": q.source.origin(q.dataset),
                         "query": details["queries"].get(q.key, "starting"), "files_pending": q.source.pending(q.dataset),
                         "last_batch": batches.get(q.table),
                         "last_error": q.last_error or (reached if reached != "ok" else None)})
    started = dt.datetime.fromtimestamp(daemon.started_at, dt.timezone.utc)
    return ready, {"ready": ready, "version": version(), "daemon": details["daemon"],
                   "started_at": started.isoformat(timespec="seconds"),
                   "uptime_seconds": round(time.time() - daemon.started_at, 1), "postgres": details["postgres"],
                   "datasets": datasets}


def status_url(settings) -> str:
    """Where the daemon of ``settings`` answers ``/status`` (a wildcard bind address means this host)."""
    host = settings.metrics.host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "*") else ("[::1]" if host == "::" else host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.metrics.port}/status"


def fetch_status(url: str, timeout: float = 5.0) -> dict | None:
    """The daemon's ``/status`` document, or None when no daemon answers at ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:  # 503: a daemon that is not ready still answers
        body = err.read()
    except (OSError, ValueError):
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "datasets" in doc else None


def render_status(doc: dict) -> str:
    """``dataops status`` for a person: the daemon, then one row per dataset."""
    from streaming.tables import render_fields, render_table

    head = {"ready": "yes" if doc.get("ready") else "no", "daemon": doc.get("daemon"),
            "version": doc.get("version"), "started": doc.get("started_at"),
            "uptime": _duration(doc.get("uptime_seconds")), "postgres": doc.get("postgres")}
    rows = []
    for d in doc.get("datasets", []):
        batch = d.get("last_batch") or {}
        rows.append({"dataset": d["dataset"], "source": d["source"], "query": d["query"],
                     "pending": d.get("files_pending"), "last batch": batch.get("finished_at"),
                     "loaded": batch.get("rows_loaded"), "quarantined": batch.get("rows_quarantined"),
                     "duplicates": batch.get("duplicates"),
                     "took": f"{batch['seconds']:.2f}s" if batch.get("seconds") is not None else None,
                     "last error": d.get("last_error")})
    parts = [render_fields(head, title="daemon")]
    if rows:
        parts.append(render_table(rows, title="datasets"))
    else:
        parts.append("no datasets yet")
    return "\n".join(parts)


def _duration(seconds) -> str | None:
    if seconds is None:
        return None
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"
