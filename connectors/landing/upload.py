"""Uploads into the landing folder: the uploads object of :class:`connectors.landing.folders.LandingSource`
(``PUT /datasets/<dataset>/files/<file>``, and ``GET`` of the same path to follow the file:
waiting, loaded, rejected; the HTTP side is :mod:`streaming.upload`).

A body streams to ``<landing>/_uploads/`` (same file system, ignored by the landing watcher) in
chunks, never whole into memory; only a complete body is linked into ``<landing>/<dataset>/`` (a
link never replaces a file of that name), so a body cut off half-way leaves nothing to load. The
request must say its size up front (``Content-Length``): an upload past ``upload.max_bytes`` is
refused before a byte is read, and a short body is recognized. ``Transfer-Encoding: chunked``
is answered with 411.

Runs on the driver, in the HTTP server's request threads.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import os
import uuid
from pathlib import Path

from psycopg2 import sql

from connectors import postgres
from connectors.landing.watcher import Landing
from streaming.naming import normalize_dataset_name
from streaming.upload import UploadRefused, plain_name

log = logging.getLogger(__name__)

STAGING = "_uploads"
CHUNK_BYTES = 1 << 20
_RESERVED = ("_", ".")  # names the landing folder keeps for itself, and hidden ones


class Uploads:
    """The upload endpoints of one daemon.

    Args:
        landing: the landing folder's root.
        settings: the daemon's settings (``upload`` section, catalog schema, endpoints).
        dsn: the catalog's database, where ``GET`` finds loaded files.
    """

    def __init__(self, landing: Path, settings, dsn: str):
        self.root = Path(landing).resolve()
        self.settings = settings
        self.max_bytes = settings.upload.max_bytes
        self._token = settings.upload.token().encode()
        self.dsn = dsn

    @staticmethod
    def clean_staging(landing: Path) -> None:
        """Remove uploads cut off by a crash (the daemon holds the landing folder's lock)."""
        staging = Path(landing).resolve() / STAGING
        for leftover in staging.glob("*.part") if staging.is_dir() else ():
            leftover.unlink(missing_ok=True)

    def authorize(self, header: str | None) -> None:
        """Check ``Authorization: Bearer <token>`` in constant time; :class:`UploadRefused` (401) if not."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            raise UploadRefused(401, "missing or wrong bearer token (Authorization: Bearer <token>)")

    def target(self, dataset: str, filename: str) -> tuple[str, str]:
        """Validate the names; return ``(dataset folder, file name)``."""
        plain_name(dataset, "dataset")
        plain_name(filename, "file")
        try:
            table = normalize_dataset_name(dataset)
        except ValueError as exc:
            raise UploadRefused(400, f"dataset name {dataset!r}: {exc}") from None
        owner = self.settings.configured_source(table)
        if owner is not None:
            raise UploadRefused(409, f"dataset {table} is loaded by {owner}, not from files")
        # "Orders" and "orders" are one dataset: upload into the folder that already feeds its table.
        return self._folder_of(table, dataset), filename

    def _folder_of(self, table: str, dataset: str) -> str:
        if (self.root / dataset).is_dir():
            return dataset
        for entry in os.scandir(self.root) if self.root.is_dir() else ():
            if entry.is_dir() and not entry.name.startswith(_RESERVED):
                try:
                    if normalize_dataset_name(entry.name) == table:
                        return entry.name
                except ValueError:
                    continue
        return dataset

    def check_size(self, length: str | None, chunked: bool) -> int:
        """The declared body size; 411 without one (chunked bodies included), 413 past ``max_bytes``."""
        if chunked or length is None:
            raise UploadRefused(411, "send Content-Length (chunked uploads are not accepted)")
        try:
            size = int(length)
        except ValueError:
            raise UploadRefused(400, f"Content-Length {length!r} is not a number") from None
        if size <= 0:  # an empty file could only be rejected later, after the landing folder's wait
            raise UploadRefused(400, "the file is empty" if size == 0 else "Content-Length is negative")
        if size > self.max_bytes:
            raise UploadRefused(413, f"file of {size} bytes exceeds upload.max_bytes ({self.max_bytes})",
                                max_bytes=self.max_bytes)
        return size

    def receive(self, dataset: str, filename: str, size: int, body) -> dict:
        """Stream ``size`` bytes from ``body`` into ``<landing>/<dataset>/<filename>``.

        Raises:
            UploadRefused: 409 when a file of that name is waiting; 400 when the body ends early
                (nothing is kept in either case).
        """
        if self._waiting(dataset, filename):
            raise UploadRefused(409, f"a file named {filename} is already waiting in dataset {dataset}")
        staging = self.root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        part = staging / f"{uuid.uuid4().hex}.part"
        received = 0
        try:
            with open(part, "wb") as out:
                while received < size:
                    chunk = body.read(min(CHUNK_BYTES, size - received))
                    if not chunk:
                        raise UploadRefused(400, f"body ended after {received} of {size} bytes; nothing was kept")
                    out.write(chunk)
                    received += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            folder = self.root / dataset
            folder.mkdir(parents=True, exist_ok=True)
            try:
                # A link, unlike a rename, never replaces a file that arrived meanwhile.
                os.link(part, folder / filename)
            except FileExistsError:
                raise UploadRefused(409, f"a file named {filename} is already waiting in dataset {dataset}") from None
        finally:
            part.unlink(missing_ok=True)
        log.info("upload: dataset=%s file %s received (%d bytes)", dataset, filename, received)
        return {"dataset": dataset, "file": filename, "bytes": received, "status": "waiting",
                "location": f"/datasets/{dataset}/files/{filename}"}

    def _waiting(self, dataset: str, filename: str) -> bool:
        if (self.root / dataset / filename).exists():
            return True
        return self._in_inbox(dataset, filename)

    def _in_inbox(self, dataset: str, filename: str) -> bool:
        inbox = self.root / "_inbox" / normalize_dataset_name(dataset)
        try:
            entries = [e for e in os.scandir(inbox) if e.is_file() and not e.name.startswith(_RESERVED)]
        except FileNotFoundError:
            return False
        return any(Landing.original_name(e.path) == filename for e in entries)

    def where(self, dataset: str, filename: str) -> dict:
        """Where an uploaded (or dropped) file is now: waiting, loaded (with its load id) or rejected
        (with its reason). :class:`UploadRefused` (404) when the daemon never saw it."""
        doc = {"dataset": dataset, "file": filename}
        if (self.root / dataset / filename).exists():
            return {**doc, "status": "waiting", "stage": "landing"}
        if self._in_inbox(dataset, filename):
            return {**doc, "status": "waiting", "stage": "queued"}
        found = [f for f in (self._last_load(dataset, filename), self._last_rejection(dataset, filename)) if f]
        if not found:
            raise UploadRefused(404, f"no file named {filename} in dataset {dataset}")
        return {**doc, **max(found, key=lambda f: f["at"])}

    def _last_load(self, dataset: str, filename: str) -> dict | None:
        cat = sql.Identifier(self.settings.postgres.catalog_schema)
        conn = postgres.connect(self.dsn, connect_timeout=3)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT to_regclass(%s)", (sql.Identifier(self.settings.postgres.catalog_schema,
                                                                      "loads").as_string(cur),))
                if cur.fetchone()[0] is None:
                    return None
                cur.execute(sql.SQL(
                    "SELECT load_id, finished_at, e FROM {}.loads, jsonb_array_elements(files) e WHERE dataset = %s "
                    "AND status = 'committed' AND e->>'name' = %s ORDER BY load_id DESC LIMIT 1").format(cat),
                    (normalize_dataset_name(dataset), filename))
                row = cur.fetchone()
        finally:
            conn.close()
        if row is None:
            return None
        load_id, finished, entry = row
        at = finished.astimezone(dt.timezone.utc).isoformat(timespec="seconds") if finished else ""
        if entry.get("status") == "rejected":
            return {"status": "rejected", "load_id": load_id, "reason": entry.get("reason"),
                    "error": entry.get("detail"), "at": at}
        return {"status": "loaded", "load_id": load_id, "rows_in": entry.get("rows_in"),
                "rows_quarantined": entry.get("quarantined"), "at": at}

    def _last_rejection(self, dataset: str, filename: str) -> dict | None:
        """Files rejected before any load (empty, not CSV) are known only by their ``.error.json``."""
        folder = self.root / "_rejected" / dataset
        best = None
        for sidecar in folder.glob("*.error.json") if folder.is_dir() else ():
            try:
                info = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if info.get("file") != filename:
                continue
            entry = {"status": "rejected", "load_id": info.get("load_id"), "reason": info.get("reason"),
                     "error": info.get("error"), "at": _utc(info.get("rejected_at"))}
            if best is None or entry["at"] > best["at"]:
                best = entry
        return best


def _utc(stamp: str | None) -> str:
    """A sidecar's ``rejected_at`` comparable with the catalog's ``finished_at`` (both UTC ISO)."""
    if not stamp:
        return ""
    try:
        return dt.datetime.fromisoformat(stamp).astimezone(dt.timezone.utc).isoformat(timespec="seconds")
    except ValueError:
        return stamp
