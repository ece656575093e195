"""REST endpoints as a :class:`streaming.sources.Source`: one dataset per entry of ``endpoints:``.

Each endpoint's query reads the Python data source :class:`connectors.rest.source.RestDataSource`,
whose stream reader polls the API in the reader process; a micro-batch's records are staged by one
task per Spark partition on the executors. Rejected records go to quarantine (there is no file to
keep). The reader reports requests, retries and failed polls as datagrams the daemon receives here
(:mod:`streaming.events`) and turns into metrics, logs and ``/readyz``.
"""

from __future__ import annotations

import dataclasses
import logging

from connectors import postgres
from connectors.rest.client import mask_url
from connectors.rest.config import EndpointConfig
from streaming.batch import drop_reports
from streaming.events import EventReceiver
from connectors.rest.records import run_records_task
from connectors.rest.source import SOURCE_NAME, RestDataSource
from streaming.rowstage import StageReport, StageTask, restage_as_text
from streaming.sources import Batch, Dataset, Source

log = logging.getLogger(__name__)


class EndpointSource(Source):
    """The ``endpoints:`` section; added, changed and removed entries apply while running."""

    kind = "endpoint"
    checkpoint_folder = "endpoints"
    section = "endpoints"
    section_model = list[EndpointConfig]
    status_section = "endpoints"

    @classmethod
    def declared_tables(cls, settings) -> list[str]:
        return [e.name for e in settings.section("endpoints")]

    def __init__(self, context):
        super().__init__(context)
        self._events: EventReceiver | None = None
        self._errors: dict[str, tuple[str, int]] = {}  # endpoint -> (last failed poll, times in a row)

    def start(self, spark) -> None:
        """Driver: register the Python data source and listen for the readers' events."""
        spark.dataSource.register(RestDataSource)
        self._events = EventReceiver(self._event).start()
        for endpoint in self._endpoints():
            self._announce(endpoint)

    def stop(self) -> None:
        if self._events is not None:
            self._events.stop()

    def _endpoints(self) -> list[EndpointConfig]:
        return list(self.context.settings.section("endpoints"))

    def reconfigure(self, settings) -> None:
        old = {e.name: e for e in self._endpoints()}
        new = {e.name: e for e in settings.section("endpoints")}
        for name in old.keys() - new.keys():
            self._errors.pop(name, None)
            log.info("endpoint=%s: removed from the config; polling stopped", name)
        for name, endpoint in new.items():
            if name not in old:
                self._announce(endpoint)
            elif endpoint.fingerprint() != old[name].fingerprint():
                self._errors.pop(name, None)
                log.info("endpoint=%s: changed in the config; query restarted", name)

    def _announce(self, endpoint: EndpointConfig) -> None:
        log.info("endpoint=%s: polling %s every %gs", endpoint.name, mask_url(endpoint.url), endpoint.poll_interval)
        if endpoint.incremental is None and endpoint.mode == "append" and not endpoint.primary_key:
            log.warning("endpoint=%s: a snapshot endpoint (no incremental) in append mode without a primary_key "
                        "appends the whole response at every poll; use mode upsert with a primary_key, or "
                        "incremental", endpoint.name)

    def datasets(self) -> list[Dataset]:
        return [Dataset(e.name, e.name, e, e.fingerprint()) for e in self._endpoints()]

    def stream(self, spark, dataset: Dataset):
        """Driver: the reader gets the endpoint's config as JSON (it runs in the reader process)."""
        return (spark.readStream.format(SOURCE_NAME)
                .option("endpoint", dataset.config.model_dump_json(by_alias=True))
                .option("events", self._events.path if self._events else "")
                .option("parallelism", str(spark.sparkContext.defaultParallelism)).load())

    def trigger_seconds(self, dataset: Dataset) -> float:
        # The reader polls at most once per poll_interval; the trigger only bounds how late it notices.
        return max(0.1, min(dataset.config.poll_interval, 1.0))

    def plan(self, dataset: Dataset, df, batch_id: int) -> Batch:
        """Driver: one stage task per Spark partition of ``df`` (rows of records, see :mod:`connectors.rest.records`), run on executors."""
        endpoint: EndpointConfig = dataset.config
        spark = self.context.spark
        options = {"null_tokens": list(endpoint.null_tokens), "true_tokens": endpoint.true_tokens,
                   "false_tokens": endpoint.false_tokens, "date_formats": list(endpoint.date_formats),
                   "flatten_depth": endpoint.flatten_depth}

        def stage_partitions(template: StageTask, token: str, suffix: str,
                              text_columns: dict[int, tuple] | None = None) -> list[tuple[int, StageReport]]:
            """One stage task per partition of ``df`` (those of ``text_columns`` only, if given):
            (partition, report) pairs."""

            def run(index: int, rows):  # executor
                if text_columns is not None and index not in text_columns:
                    return
                # A Row is (JSON array of records, position of the first); tuple() copies it in C.
                rows = [tuple(r) for r in rows]
                if rows:
                    stage_table, quarantine = postgres.stage_names(token, f"{index}{suffix}")
                    # seq 0 for every part: rows order by their position in the batch (_ord) alone, so
                    # the last occurrence of a key wins however Spark partitioned the records.
                    yield index, run_records_task(dataclasses.replace(
                        template, seq=0, stage_table=stage_table, quarantine_table=quarantine,
                        text_columns=(text_columns or {}).get(index, ())), rows)

            in_flight = self.context.in_flight
            group = in_flight.job_group(spark, f"dataops: stage batch {batch_id} of endpoint {endpoint.name}")
            try:
                return df.rdd.mapPartitionsWithIndex(run).collect()  # driver-ok: reports, not rows
            finally:
                in_flight.end_job_group(group)

        def stage(template: StageTask, token: str) -> list[StageReport]:
            template = dataclasses.replace(template, name=f"endpoint {endpoint.name} batch {batch_id}",
                                           path=mask_url(endpoint.url))
            staged = stage_partitions(template, token, "")
            # A column typed in one partition and text in another is staged again as text where it
            # was typed (reading the batch's partitions again), so raw values stay as written.
            redo = restage_as_text([report for _, report in staged])
            if redo:
                again = {staged[i][0]: columns for i, columns in redo.items()}
                drop_reports(self.context, [staged[i][1] for i in redo])
                log.info("endpoint=%s: staging %d part(s) of batch %d again with columns as text (%s), as other "
                         "parts hold text there", endpoint.name, len(again), batch_id,
                         ", ".join(sorted({c for cs in again.values() for c in cs})))
                staged = [s for i, s in enumerate(staged) if i not in redo] + stage_partitions(template, token, "t", again)
            return [report for _, report in staged]

        return Batch(source=mask_url(endpoint.url), stage=stage, options=options, keeps_rejected_input=False,
                     json_records=True)

    def status(self, dataset: Dataset) -> str:
        error = self._errors.get(dataset.table)
        return error[0] if error else "ok"

    def origin(self, dataset: Dataset) -> str:
        return f"endpoint {mask_url(dataset.config.url)}"

    def query_key(self, dataset: Dataset) -> str:
        return f"endpoint:{dataset.table}"

    def _event(self, event: dict) -> None:
        """Driver (the event receiver's thread): one event from an endpoint's stream reader."""
        name = str(event.get("dataset", ""))
        kind = event.get("event")
        metrics = self.context.metrics
        if kind == "request":
            metrics.api_requests.labels(name, str(event.get("code", "error"))).inc()
        elif kind == "retry":
            metrics.api_retries.labels(name).inc()
        elif kind == "error":
            message = str(event.get("message"))[:500]
            metrics.api_errors.labels(name, str(event.get("kind", "error"))).inc()
            last, repeats = self._errors.get(name, ("", 0))
            repeats = repeats + 1 if last == message else 1
            # The same failure every poll is logged once, then every tenth time.
            if repeats == 1 or repeats % 10 == 0:
                log.error("endpoint=%s: poll failed%s: %s", name, f" ({repeats} times in a row)" if repeats > 1 else "",
                          message)
            if name in {e.name for e in self._endpoints()}:
                self._errors[name] = (message, repeats)
        elif kind == "poll":
            if self._errors.pop(name, None) is not None:
                log.info("endpoint=%s: polling again (%s records)", name, event.get("records"))
            log.debug("endpoint=%s: poll fetched %s record(s) in %s page(s)", name, event.get("records"),
                      event.get("pages"))


def load_records(ctx, endpoint: EndpointConfig, df, stream: str, batch_id: int):
    """Load one micro-batch of an endpoint (a DataFrame of ``record, seq``) exactly once, as the
    daemon's query does (driver); for tools and tests."""
    from streaming.batch import load_batch

    dataset = Dataset(endpoint.name, endpoint.name, endpoint)
    return load_batch(ctx, dataset, EndpointSource(ctx).plan(dataset, df, batch_id), stream, batch_id)
