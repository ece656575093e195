"""The landing folder: decide when a dropped file is complete, hand it to Spark, archive or reject it.

Layout under ``landing.path``::

    <dataset>/            users drop files here (one folder per dataset)
    _inbox/<dataset>/     complete files, watched by the dataset's Spark file stream
    _processed/<dataset>/ files whose rows committed
    _rejected/<dataset>/  files that could not be read, each beside <file>.error.json

A file is complete when nothing has written to it for ``settle_seconds`` (or it was closed by its
writer and stayed quiet briefly) and its size and mtime are unchanged; then it is renamed atomically
into the inbox, so Spark never sees a half-written file. Watchdog events drive this; a periodic
rescan catches files that existed before start or whose events were lost (network mounts).
Runs on the driver.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from connectors.files import LandedFile
from streaming.naming import normalize_dataset_name

log = logging.getLogger(__name__)

CSV_SUFFIXES = {".csv", ".tsv", ".txt", ".psv"}
TEMP_SUFFIXES = {".tmp", ".part", ".partial", ".crdownload", ".swp", ".download", ".filepart"}
RESERVED = ("_", ".")
CLOSED_QUIET_SECONDS = 0.05
# A file renamed into the folder was complete before it got its name (the rename is atomic): it
# waits for nothing but the size/mtime check, which would still see a writer that kept it open.
MOVED_QUIET_SECONDS = 0.0
# With inotify a writer's close is seen, so a file still open for writing is held back; a writer that
# stalls this long with the file open is assumed gone.
OPEN_WRITER_SECONDS = 60.0
# An empty file may be a writer that has not written yet (created events alone do not tell): unless
# its writer closed it, it is rejected as empty only after staying empty this long.
EMPTY_FILE_SECONDS = 30.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclasses.dataclass
class _Pending:
    dataset: str
    size: int
    mtime: float
    last_event: float
    # "quiet" (found by a scan), "writing" (open for writing), "closed" (writer done), "moved" (renamed in)
    state: str = "quiet"


class Landing:
    """Watches ``root`` and moves complete files into each dataset's inbox.

    Args:
        root: the landing folder.
        settle_seconds: quiet time after the last write before a file counts as complete.
        scan_interval: seconds between full rescans.
        on_dataset: called (from a watcher thread) with a dataset folder's name when one appears.
        on_file_ready: called after a file entered a dataset's inbox.
        metrics: counts rejected files (``dataops_files_rejected_total``) where they are moved.
    """

    def __init__(self, root: Path, settle_seconds: float, scan_interval: float,
                 on_dataset: Callable[[str], None], on_file_ready: Callable[[str], None] | None = None,
                 metrics=None):
        self.root = Path(root).resolve()
        self.settle = settle_seconds
        self.scan_interval = scan_interval
        self.on_dataset = on_dataset
        self.on_file_ready = on_file_ready or (lambda ds: None)
        self.metrics = metrics
        self._pending: dict[str, _Pending] = {}
        self._datasets: set[str] = set()
        self._lock = threading.Lock()
        self._move_lock = threading.Lock()
        self._tables: dict[str, str] = {}  # table name -> the dataset folder that feeds it
        self._refused: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer = None
        self._thread = None
        self._seq = 0
        self._sees_close = False

    # --- paths -------------------------------------------------------------------------------
    def inbox(self, dataset: str) -> Path:
        # Named after the table: safe characters only (Spark reads the path as a glob pattern).
        return self.root / "_inbox" / normalize_dataset_name(dataset)

    def processed(self, dataset: str) -> Path:
        return self.root / "_processed" / dataset

    def rejected(self, dataset: str) -> Path:
        return self.root / "_rejected" / dataset

    def folder_of(self, table: str) -> str:
        """The dataset folder that feeds ``table`` (the table name itself if none is known)."""
        with self._lock:
            return self._tables.get(table, table)

    def datasets(self) -> list[str]:
        with self._lock:
            return sorted(self._datasets)

    def pending_count(self, dataset: str) -> int:
        """Files landed but not committed: settling in the dataset folder or waiting in the inbox."""
        with self._lock:
            settling = sum(1 for p in self._pending.values() if p.dataset == dataset)
        try:
            queued = sum(1 for e in os.scandir(self.inbox(dataset)) if e.is_file() and not e.name.startswith(RESERVED))
        except FileNotFoundError:
            queued = 0
        return settling + queued

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("_inbox", "_processed", "_rejected"):
            (self.root / sub).mkdir(exist_ok=True)
        self._observer = Observer()
        self._observer.schedule(_Handler(self), str(self.root), recursive=True)
        self._observer.start()
        self._sees_close = type(self._observer).__name__ == "InotifyObserver"
        self.scan()
        self._thread = threading.Thread(target=self._settle_loop, name="landing-settle", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; files still settling stay where they are and are picked up on the next start."""
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- discovery ---------------------------------------------------------------------------
    def scan(self) -> None:
        """Register every dataset folder and every file in them (startup and periodic safety net)."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith(RESERVED):
                self._dataset_seen(entry.name)
                for f in os.scandir(entry.path):
                    if f.is_file():
                        self.observe(f.path, "scan")
                    elif f.is_dir() and not f.name.startswith(RESERVED):
                        self._nested_folder(entry.name, f.name)

    def observe(self, path: str, what: str) -> None:
        """Note ``path``: ``what`` is "scan" (found by a rescan) or an event: "scan_event" (appeared),
        "write" (modified), "closed" (writer closed it) or "moved" (renamed into the folder)."""
        p = Path(path)
        try:
            rel = p.relative_to(self.root)
        except ValueError:
            return
        if len(rel.parts) == 1 and not rel.name.startswith(RESERVED) and p.is_dir():
            self._dataset_seen(rel.name)
            return
        if len(rel.parts) < 2 or rel.parts[0].startswith(RESERVED):
            return
        if len(rel.parts) > 2 or p.is_dir():
            if not rel.parts[1].startswith(RESERVED):
                self._nested_folder(rel.parts[0], rel.parts[1])
            return
        dataset, name = rel.parts
        if name.startswith(RESERVED) or name.startswith("~$") or p.suffix.lower() in TEMP_SUFFIXES:
            return
        try:
            st = p.stat()
        except FileNotFoundError:
            with self._lock:
                self._pending.pop(str(p), None)
            return
        if not p.is_file() or not self._dataset_seen(dataset):
            return
        now = time.monotonic()
        # A rename into the folder is atomic: the file is complete, like one whose writer closed it.
        state = {"scan": "quiet", "scan_event": "quiet", "write": "writing", "closed": "closed", "moved": "moved"}[what]
        if state == "writing" and not self._sees_close:
            state = "quiet"
        with self._lock:
            current = self._pending.get(str(p))
            if current is None:
                # A file found by a scan that has been quiet for a while needs no further wait.
                quiet_for = max(0.0, time.time() - st.st_mtime) if what == "scan" else 0.0
                self._pending[str(p)] = _Pending(dataset, st.st_size, st.st_mtime, now - quiet_for, state)
            elif what != "scan":
                current.last_event = now
                current.state = state
                current.size, current.mtime = st.st_size, st.st_mtime
        self._wake.set()

    def _dataset_seen(self, name: str) -> bool:
        """Register a dataset folder; False if it cannot be a dataset (its files are left alone)."""
        with self._lock:
            if name in self._datasets:
                return True
            try:
                table = normalize_dataset_name(name)
            except ValueError as exc:
                if name not in self._refused:
                    self._refused.add(name)
                    log.error("landing folder %r ignored: %s", name, exc)
                return False
            if table in self._tables:
                if name not in self._refused:
                    self._refused.add(name)
                    log.error("landing folder %r ignored: table %s is already fed by folder %r",
                              name, table, self._tables[table])
                return False
            self._tables[table] = name
            self._datasets.add(name)
        self.inbox(name).mkdir(parents=True, exist_ok=True)
        try:
            self.on_dataset(name)
        except Exception:  # a bad dataset must not stop the watcher
            log.exception("dataset %s: could not start", name)
        return True

    def _nested_folder(self, dataset: str, name: str) -> None:
        """A folder inside a dataset folder: its files are not loaded (said once per folder)."""
        key = f"{dataset}/{name}"
        with self._lock:
            if key in self._refused:
                return
            self._refused.add(key)
        log.warning("landing folder %s ignored: files load only from the dataset folder itself (%s/); "
                    "move them up one level to load them", key, dataset)

    # --- settling ----------------------------------------------------------------------------
    def _settle_loop(self) -> None:
        next_scan = time.monotonic() + self.scan_interval
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            self.settle_ready()
            if time.monotonic() >= next_scan:
                next_scan = time.monotonic() + self.scan_interval
                try:
                    self.scan()
                except OSError as exc:
                    log.warning("landing rescan failed: %s", exc)

    def settle_ready(self) -> int:
        """Move every complete file into its inbox; return how many moved."""
        now = time.monotonic()
        wait = {"closed": CLOSED_QUIET_SECONDS, "moved": MOVED_QUIET_SECONDS, "quiet": self.settle,
                "writing": max(self.settle, OPEN_WRITER_SECONDS)}
        with self._lock:
            candidates = [(path, p) for path, p in self._pending.items()
                          if now - p.last_event >= (wait[p.state] if p.size or p.state in ("closed", "moved")
                                                    else max(wait[p.state], EMPTY_FILE_SECONDS))]
        moved = 0
        for path, pending in candidates:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                with self._lock:
                    self._pending.pop(path, None)
                continue
            if st.st_size != pending.size or st.st_mtime != pending.mtime:
                with self._lock:  # still growing: wait a full settle period from now
                    pending.size, pending.mtime, pending.last_event = st.st_size, st.st_mtime, now
                    if pending.state in ("closed", "moved"):
                        pending.state = "quiet"
                continue
            with self._lock:
                self._pending.pop(path, None)
            try:
                if self._admit(Path(path), pending.dataset):
                    moved += 1
            except FileNotFoundError:
                continue  # removed by its owner before we took it
        return moved

    def _admit(self, path: Path, dataset: str) -> bool:
        if path.stat().st_size == 0:
            # Spark's file scan skips empty files, so they are answered here rather than by a batch.
            self.reject(dataset, LandedFile(str(path), path.name), "empty", f"{path.name}: the file is empty")
            return False
        if path.suffix.lower() not in CSV_SUFFIXES:
            landed = LandedFile(str(path), path.name)
            self.reject(dataset, landed, "extension",
                        f"{path.name}: not a CSV file (extension {path.suffix or 'none'}; expected "
                        f"{', '.join(sorted(CSV_SUFFIXES))})")
            return False
        with self._lock:
            self._seq += 1
            seq = self._seq
        safe = _UNSAFE.sub("_", path.name)
        target = self.inbox(dataset) / f"{time.time_ns():020d}{seq % 1000:03d}_{safe}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if safe != path.name:
            (target.parent / f"_{target.name}.name").write_text(path.name, encoding="utf-8")
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return False
        # Spark's file source orders files and ignores old ones by mtime: make it the arrival time.
        os.utime(target)
        self.on_file_ready(dataset)
        return True

    # --- after a batch -----------------------------------------------------------------------
    @staticmethod
    def original_name(inbox_path: str) -> str:
        p = Path(inbox_path)
        sidecar = p.parent / f"_{p.name}.name"
        if sidecar.exists():
            return sidecar.read_text(encoding="utf-8")
        return p.name.split("_", 1)[1] if "_" in p.name else p.name

    def archive(self, dataset: str, landed: LandedFile) -> Path | None:
        """Move a committed file to ``_processed/<dataset>/`` (idempotent: a missing file is fine)."""
        return self._move(landed, self.processed(dataset))

    def reject(self, dataset: str, landed: LandedFile, reason: str, detail: str, load_id: int | None = None,
               diff: dict | None = None) -> Path | None:
        """Move a file that cannot be loaded to ``_rejected/<dataset>/`` beside ``<file>.error.json``."""
        target = self._move(landed, self.rejected(dataset))
        if target is not None:
            sidecar = target.with_name(target.name + ".error.json")
            # Written beside it under a hidden name, then renamed: a reader never sees half a sidecar.
            partial = target.with_name(f".{target.name}.error.json.tmp")
            partial.write_text(json.dumps({
                "file": landed.name, "dataset": dataset, "reason": reason, "error": detail, "load_id": load_id,
                "rejected_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                **({"diff": diff} if diff else {}),
            }, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            os.replace(partial, sidecar)
            log.warning("dataset=%s file %s rejected (%s): %s", dataset, landed.name, reason, detail)
            if self.metrics is not None:
                self.metrics.files_rejected.labels(normalize_dataset_name(dataset)).inc()
        return target

    def _move(self, landed: LandedFile, folder: Path) -> Path | None:
        source = Path(landed.path)
        with self._move_lock:  # the settle thread and batch threads both move files
            if not source.exists():
                return None
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / landed.name
            n = 1
            while target.exists():
                stem, suffix = os.path.splitext(landed.name)
                target = folder / f"{stem}.{n}{suffix}"
                n += 1
            os.replace(source, target)
        sidecar = source.parent / f"_{source.name}.name"
        if sidecar.exists():
            sidecar.unlink()
        return target


class _Handler(FileSystemEventHandler):
    def __init__(self, landing: Landing):
        self.landing = landing

    # "created" alone proves nothing about an open writer (watchdog synthesizes it for files found in a
    # new folder, whose close happened before the watch existed), so it only starts the settle clock.
    _KINDS = {"created": "scan_event", "modified": "write", "closed": "closed", "moved": "moved"}

    def on_any_event(self, event: FileSystemEvent) -> None:
        what = self._KINDS.get(event.event_type)
        if what is None:  # opened, closed_no_write, deleted
            return
        path = getattr(event, "dest_path", "") or event.src_path
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if event.is_directory:
            what = "scan"
        self.landing.observe(path, what)
