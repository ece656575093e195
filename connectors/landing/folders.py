"""The landing folder as a :class:`streaming.sources.Source`: one dataset per folder under ``landing.path``.

Each dataset's query is a Spark file stream over its inbox whose micro-batches carry file paths
only (Spark checkpoints which files each batch owns); the batch's files are parsed by stage tasks
and, once their rows committed, archived to ``_processed/`` or moved to ``_rejected/``.
Configured by the core sections ``landing:``, ``csv:`` and ``datasets:``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from connectors import postgres
from connectors.files import LandedFile, file_batch
from connectors.landing.upload import Uploads
from connectors.landing.watcher import Landing
from streaming.naming import normalize_dataset_name
from streaming.sources import Batch, Dataset, Source

log = logging.getLogger(__name__)

BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length bigint, content binary"


class LandingSource(Source):
    """Dataset folders under ``landing.path``, found by watching it (driver)."""

    kind = "landing"
    checkpoint_folder = "landing"

    @classmethod
    def declared_tables(cls, settings) -> list[str]:
        return list(settings.datasets)

    @classmethod
    def describe_table(cls, table: str) -> str:
        return f"datasets: {table!r} (a landing dataset)"

    def __init__(self, context):
        super().__init__(context)
        s = context.settings.landing
        self.landing = Landing(s.path, s.settle_seconds, s.scan_interval,
                               on_dataset=lambda _name: context.datasets_changed(), metrics=context.metrics)

    def start(self, spark) -> None:
        """Driver: watch the landing folder; archive inbox files whose load committed before a crash."""
        self.landing.start()
        self._finish_committed_files()
        found = self.landing.datasets()
        log.info("watching %s; %d dataset(s): %s", self.landing.root, len(found), ", ".join(found) or "none yet")

    def stop(self) -> None:
        self.landing.stop()

    def uploads(self) -> Uploads | None:
        """Driver: uploads land in the dataset folders (see :mod:`connectors.landing.upload`)."""
        settings = self.context.settings
        root = Path(settings.landing.path).resolve()
        Uploads.clean_staging(root)  # bodies cut off by a crash (the daemon holds the folder's lock)
        return Uploads(root, settings, self.context.dsn) if settings.upload.enabled else None

    def datasets(self) -> list[Dataset]:
        settings = self.context.settings
        # Edits of datasets: entries take effect at the next restart (fingerprint unchanged).
        return [Dataset(folder, normalize_dataset_name(folder), settings.dataset(folder))
                for folder in self.landing.datasets()]

    def query_key(self, dataset: Dataset) -> str:
        return dataset.name

    def origin(self, dataset: Dataset) -> str:
        return f"landing folder {self.landing.root / dataset.name}"

    def pending(self, dataset: Dataset) -> int:
        return self.landing.pending_count(dataset.name)

    def stream(self, spark, dataset: Dataset):
        """Driver: a file stream over the dataset's inbox, carrying paths only."""
        inbox = self.landing.inbox(dataset.name)
        inbox.mkdir(parents=True, exist_ok=True)
        # Overwrite loads one file per batch, so each file replaces the table in arrival order.
        max_files = 1 if dataset.config.mode == "overwrite" else self.context.settings.landing.max_files_per_batch
        # maxFileAge: the landing watcher stamps arrival time on every file, and none may be skipped.
        return (spark.readStream.format("binaryFile").schema(BINARY_FILE_SCHEMA)
                .option("maxFilesPerTrigger", max_files).option("maxFileAge", "36500d")
                .load(str(inbox)).select("path"))

    def plan(self, dataset: Dataset, df, batch_id: int) -> Batch | None:
        """Driver: the batch's file paths (not rows) come to the driver; one stage task per file or part."""
        paths = sorted(_batch_paths(df))
        if not paths:
            return None
        files = [LandedFile(_local_path(p), Landing.original_name(_local_path(p))) for p in paths]
        folder = Path(self.context.settings.landing.path).resolve() / dataset.name
        return file_batch(self.context, files, dataset.config, f"landing folder {folder}", keeps_rejected_input=True)

    def finish(self, dataset: Dataset, batch: Batch, result) -> None:
        """Driver, after commit: archive loaded files, reject unreadable ones (idempotent on replay)."""
        self._settle(dataset.name, batch.inputs, result.files, result.load_id)

    def _settle(self, folder: str, files: list[LandedFile], entries: list[dict], load_id: int) -> None:
        by_path = {e["path"]: e for e in entries}
        for f in files:
            entry = by_path.get(f.path)
            if entry is None:
                continue
            if entry["status"] == "rejected":
                self.landing.reject(folder, f, entry.get("reason", ""), entry.get("detail", ""), load_id,
                                    diff=entry.get("diff"))
            else:
                self.landing.archive(folder, f)

    def _finish_committed_files(self) -> None:
        """Archive inbox files whose load committed before a crash stopped us from moving them."""
        root = self.landing.root / "_inbox"
        if not root.is_dir():
            return
        conn = postgres.connect(self.context.dsn)
        try:
            with conn, conn.cursor() as cur:
                for ds_dir in root.iterdir():
                    for f in ds_dir.iterdir() if ds_dir.is_dir() else ():
                        if f.name.startswith(("_", ".")):
                            continue
                        cur.execute(postgres.sql.SQL(
                            "SELECT load_id, e FROM {}.loads, jsonb_array_elements(files) e WHERE dataset = %s "
                            "AND status = 'committed' AND e->>'path' = %s LIMIT 1").format(
                            postgres.sql.Identifier(self.context.settings.postgres.catalog_schema)),
                            (ds_dir.name, str(f)))
                        row = cur.fetchone()
                        if row:
                            landed = LandedFile(str(f), Landing.original_name(str(f)))
                            self._settle(self.landing.folder_of(ds_dir.name), [landed], [row[1]], row[0])
        finally:
            conn.close()


def _batch_paths(df) -> set[str]:
    """Driver: the paths of the files in a file stream's micro-batch.

    Read from the batch's file scan (the files Spark planned, in the partitions of its RDD) rather
    than by collecting the ``path`` column: that would run a Spark job per batch, which for a small
    file costs more than loading it. Falls back to the job where no file scan is found (another
    Spark build or plan shape).
    """
    try:
        todo, paths, found = [df._jdf.queryExecution().toRdd()], set(), False
        while todo:
            rdd = todo.pop()
            if rdd.getClass().getSimpleName() == "FileScanRDD":
                found = True
                for partition in rdd.partitions():
                    # A large file can be split over several partitions; the set keeps it once.
                    paths.update(f.filePath().toPath().toString() for f in partition.files())
                continue
            deps = rdd.dependencies().iterator()
            while deps.hasNext():
                todo.append(deps.next().rdd())
        if found:
            return paths
    except Exception as exc:  # py4j or API differences: the job below answers the same question
        log.debug("file scan of the batch not readable (%s); collecting its paths", exc)
    return {r.path for r in df.select("path").collect()}  # driver-ok: file paths only


def _local_path(uri: str) -> str:
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if uri.startswith("file:"):
        return uri[len("file:"):]
    return uri
