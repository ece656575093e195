"""Loading files in tests through the same function the daemon's foreachBatch calls."""

from __future__ import annotations

import uuid
from pathlib import Path

from connectors.files import LandedFile, load_files
from streaming.batch import LoadContext
from streaming.metrics import Metrics


def load(settings, dataset: str, *paths, spark=None, stream: str | None = None, batch_id: int = 0, metrics=None):
    from connectors.postgres import ensure_catalog

    ensure_catalog(settings.dsn, settings.postgres.catalog_schema, settings.postgres.schema_name)
    ctx = LoadContext(settings=settings, dsn=settings.dsn, metrics=metrics or Metrics(), spark=spark)
    files = [LandedFile(str(Path(p)), Path(p).name) for p in paths]
    return load_files(ctx, dataset, files, stream or f"test:{uuid.uuid4()}", batch_id)


def accounted(result, db=None, rows: int | None = None) -> bool:
    """Every input row is loaded, quarantined, or counted as a removed duplicate.

    The load's own counts add up by construction; what makes the check worth something are the
    independent sides: ``rows``, the input rows as the test counted them, and with ``db`` the
    quarantine rows the load actually wrote.
    """
    if rows is not None and rows != result.loaded + result.quarantined + result.duplicates:
        return False
    if db is not None and db.scalar("SELECT count(*) FROM {c}.quarantine WHERE load_id = %s",
                                    (result.load_id,)) != result.quarantined:
        return False
    return result.rows_in == result.loaded + result.quarantined + result.duplicates


def records_frame(spark, records: list, chunk: int = 2):
    """A micro-batch of an endpoint as its stream yields it: rows of JSON arrays of ``chunk`` records,
    each with the position of its first record."""
    from connectors.rest.records import encode_chunk

    rows = [(encode_chunk(records[a:a + chunk]), a) for a in range(0, len(records), chunk)]
    return spark.createDataFrame(rows, "record string, seq bigint")
