"""CSV files as a micro-batch's input, for every source whose inputs are files: tasks per file or part.

Runs on the driver. A batch of files becomes one stage task per file; with a Spark session and a
batch larger than ``landing.local_parse_bytes``, a file larger than ``landing.split_bytes`` becomes
one task per part (byte ranges cut at record boundaries, :func:`connectors.csvfile.plan_parts`),
read through the file's :class:`~streaming.rowstage.ByteSource` (ranged reads for objects).
Tasks run as one Spark job (only their small reports come back), or on the driver for a small
batch, which saves the job's fixed cost.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from connectors import postgres
from connectors.csvfile import plan_parts, run_file_task
from streaming.batch import LoadContext, drop_reports, load_batch
from streaming.config import CsvOptions
from streaming.errors import FileRejected
from streaming.naming import normalize_dataset_name
from streaming.rowstage import ByteSource, StageReport, StageTask, restage_as_text
from streaming.sources import Batch, Dataset

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LandedFile:
    """A file to load: where it is now, the name the user gave it, and (for a file that is not on
    a local disk) where a task reads its bytes. Pickled into stage tasks."""

    path: str
    name: str
    source: ByteSource | None = None

    @property
    def size(self) -> int:
        if self.source is not None:
            return self.source.size
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0


def file_batch(ctx: LoadContext, files: list[LandedFile], config, source: str, *, keeps_rejected_input: bool = True,
               record_rejections: bool = False) -> Batch:
    """A :class:`~streaming.sources.Batch` of CSV files read with ``config``'s CSV options (driver)."""
    options = {k: getattr(config, k) for k in CsvOptions.model_fields}

    def stage(template: StageTask, token: str) -> list[StageReport]:
        local = ctx.spark is None or sum(f.size for f in files) <= ctx.settings.landing.local_parse_bytes
        return _run_tasks(ctx, _plan_tasks(ctx, template, files, token, split=not local), local)

    return Batch(source=source, stage=stage, options=options, inputs=files, keeps_rejected_input=keeps_rejected_input,
                 record_rejections=record_rejections, files=len(files))


def load_files(ctx: LoadContext, dataset: str, files: list[LandedFile], stream: str, batch_id: int,
               config=None, source: str | None = None, one_off: bool = False) -> postgres.MergeResult:
    """Load ``files`` into ``dataset`` as batch ``batch_id`` of ``stream``, exactly once (driver).

    ``ingest`` and tests load files this way; the daemon goes through the landing source.
    ``one_off`` (``dataops ingest``): the catalog keeps an existing dataset's mode, key and source.
    """
    cfg = config or ctx.settings.dataset(dataset)
    folder = Path(ctx.settings.landing.path).resolve() / dataset
    batch = file_batch(ctx, files, cfg, source or f"landing folder {folder}")
    return load_batch(ctx, Dataset(dataset, normalize_dataset_name(dataset), cfg), batch, stream, batch_id, one_off)


def _plan_tasks(ctx: LoadContext, template: StageTask, files: list[LandedFile], token: str,
                split: bool) -> list[StageTask | StageReport]:
    """One task per file; with ``split``, a large file becomes one task per part (per Spark core)."""
    parallelism = ctx.spark.sparkContext.defaultParallelism if split else 1
    tasks: list[StageTask | StageReport] = []
    for seq, f in enumerate(files):
        plan = None
        if parallelism > 1 and f.size > ctx.settings.landing.split_bytes:
            try:
                plan = plan_parts(f.source or f.path, f.name, template.options, parallelism)
            except FileRejected as exc:
                tasks.append(StageReport(f.name, f.path, seq, "rejected", exc.reason, exc.detail, diff=exc.diff))
                continue
        ranges = plan.ranges if plan else ((0, None, 1),)
        for part, (start, end, first_line) in enumerate(ranges):
            stage, quarantine = postgres.stage_names(token, f"{seq}_{part}")
            tasks.append(dataclasses.replace(
                template, path=f.path, name=f.name, seq=seq, stage_table=stage, quarantine_table=quarantine, source=f.source,
                part=part, start=start, end=end, first_line=first_line,
                header=plan.header if plan else None, encoding=plan.encoding if plan else None,
                encoding_checked=plan.checked if plan else True,
                delimiter=plan.delimiter if plan else None, last_part=part == len(ranges) - 1))
    return tasks


def _run_tasks(ctx: LoadContext, planned: list[StageTask | StageReport], local: bool) -> list[StageReport]:
    """Run the file tasks: on the driver for a small batch, else as one Spark job."""
    tasks = [t for t in planned if isinstance(t, StageTask)]
    done = [t for t in planned if isinstance(t, StageReport)]
    if not tasks:
        return done
    if local:
        return done + _restage_as_text(ctx, tasks, [run_file_task(t) for t in tasks], True)
    reports = _spark_job(ctx, tasks)
    bad = {r.seq for r in reports if r.bad_cut}
    if bad:
        # A cut was not a record boundary, or the file is not what its first bytes showed (see
        # plan_parts): parse those files again in one piece, deciding their encoding as a whole.
        drop_reports(ctx, [r for r in reports if r.seq in bad])
        redo = [dataclasses.replace(t, stage_table=t.stage_table + "w", quarantine_table=t.quarantine_table + "w",
                                    part=0, start=0, end=None, first_line=1, header=None, last_part=True,
                                    encoding=None, encoding_checked=True)
                for t in tasks if t.seq in bad and t.part == 0]
        log.info("dataset=%s: re-parsing %s in one piece (a part boundary fell inside a quoted field, or the "
                 "file holds what its parts could not be read past)", tasks[0].dataset, ", ".join(t.name for t in redo))
        reports = [r for r in reports if r.seq not in bad] + _spark_job(ctx, redo)
        tasks = tasks + redo
    reports = _reject_whole_files(ctx, reports)
    reports = _restage_as_text(ctx, tasks, reports, local)
    return done + reports


def _restage_as_text(ctx: LoadContext, tasks: list[StageTask], reports: list[StageReport],
                     local: bool) -> list[StageReport]:
    """Stage again, with those columns as text, the inputs whose typed staging columns the merge
    could not cast exactly to the batch's type (another file or part holds text in the column)."""
    redo = restage_as_text(reports)
    if not redo:
        return reports
    by_table = {t.stage_table: t for t in tasks}
    again = []
    for i, columns in redo.items():
        task = by_table[reports[i].stage_table]
        again.append(dataclasses.replace(task, stage_table=task.stage_table + "t",
                                         quarantine_table=task.quarantine_table + "t", text_columns=columns))
    drop_reports(ctx, [reports[i] for i in redo])
    log.info("dataset=%s: staging %d input(s) again with columns as text (%s), as other inputs hold text there",
             tasks[0].dataset, len(again), ", ".join(sorted({c for cs in redo.values() for c in cs})))
    staged = [run_file_task(t) for t in again] if local else _spark_job(ctx, again)
    return [r for i, r in enumerate(reports) if i not in redo] + staged


def _reject_whole_files(ctx: LoadContext, reports: list[StageReport]) -> list[StageReport]:
    """A file is rejected whole: when one of its parts is rejected, its other parts are dropped too."""
    rejected = {r.seq: r for r in reports if r.status == "rejected"}
    if not rejected:
        return reports
    drop_reports(ctx, [r for r in reports if r.seq in rejected])
    for r in reports:
        first = rejected[r.seq] if r.seq in rejected else None
        if first is not None and r is not first and r.status == "rejected" and r.diff:
            first.diff = first.diff or {}
            for key, value in r.diff.items():  # e.g. changed types found in different parts
                if isinstance(value, dict):
                    first.diff.setdefault(key, {}).update(value)
    return [r for r in reports if r.seq not in rejected] + list(rejected.values())


def _spark_job(ctx: LoadContext, tasks: list[StageTask]) -> list[StageReport]:
    sc = ctx.spark.sparkContext
    group = ctx.in_flight.job_group(ctx.spark, f"dataops: stage {len(tasks)} part(s) of {tasks[0].dataset}")
    try:
        # One Spark task per file part; the job returns one small report per part.
        return sc.parallelize(tasks, len(tasks)).map(run_file_task).collect()  # driver-ok: reports, not rows
    finally:
        ctx.in_flight.end_job_group(group)
