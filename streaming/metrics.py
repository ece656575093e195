"""Prometheus metrics. Names follow ``dataops_<noun>_<unit>``, counters end in ``_total``.

One :class:`Metrics` object owns its registry, so tests create a fresh one and read values with
``registry.get_sample_value``. Counters and Spark's progress gauges change as events happen; the
state gauges (PostgreSQL up, files pending, queries up, batches retrying) are computed when Prometheus scrapes, by a
collector asking the daemon (:meth:`Metrics.observe`), so they are true at every scrape.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rows_written = Counter("dataops_rows_written_total", "Rows written to dataset tables", ["dataset"], registry=r)
        self.rows_quarantined = Counter("dataops_rows_quarantined_total", "Rows sent to quarantine", ["dataset"], registry=r)
        self.duplicates_removed = Counter("dataops_duplicates_removed_total", "Duplicate rows removed within a batch",
                                          ["dataset"], registry=r)
        self.batches = Counter("dataops_batches_total", "Micro-batches by outcome", ["dataset", "status"], registry=r)
        self.batch_duration = Histogram("dataops_batch_duration_seconds", "Time from batch start to commit", ["dataset"],
                                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=r)
        self.last_batch = Gauge("dataops_last_batch_timestamp_seconds", "Unix time of the last committed batch",
                                ["dataset"], registry=r)
        self.files_rejected = Counter("dataops_files_rejected_total", "Files moved to _rejected", ["dataset"], registry=r)
        self.files_loaded = Counter("dataops_files_loaded_total", "Files committed and archived", ["dataset"], registry=r)
        self.query_restarts = Counter("dataops_query_restarts_total", "Streaming query restarts after a failure",
                                      ["dataset"], registry=r)
        self.input_rows_per_second = Gauge("dataops_input_rows_per_second", "Spark's reported input rate", ["dataset"],
                                           registry=r)
        self.processed_rows_per_second = Gauge("dataops_processed_rows_per_second", "Spark's reported processing rate",
                                               ["dataset"], registry=r)
        self.spark_batch_duration = Gauge("dataops_spark_batch_duration_seconds",
                                          "Spark's reported duration of the last micro-batch", ["dataset"], registry=r)
        self.api_requests = Counter("dataops_api_requests_total", "HTTP requests to REST endpoints by status code",
                                    ["endpoint", "code"], registry=r)
        self.api_retries = Counter("dataops_api_retries_total", "Retried REST requests", ["endpoint"], registry=r)
        self.api_errors = Counter("dataops_api_errors_total", "Failed polls of REST endpoints by kind",
                                  ["endpoint", "kind"], registry=r)
        self.source_errors = Counter("dataops_source_errors_total", "Failures reaching a dataset's input by kind "
                                     "(unreachable, auth, no_bucket, ...)", ["dataset", "kind"], registry=r)
        self.state = StateCollector()
        r.register(self.state)

    def observe(self, state: Callable[[], dict]) -> None:
        """Compute the state gauges from ``state()`` at every scrape (see :class:`StateCollector`)."""
        self.state.source = state

    def record_load(self, dataset: str, result, seconds: float, loaded_files: int) -> None:
        self.rows_written.labels(dataset).inc(result.loaded)
        self.rows_quarantined.labels(dataset).inc(result.quarantined)
        self.duplicates_removed.labels(dataset).inc(result.duplicates)
        self.files_loaded.labels(dataset).inc(loaded_files)
        self.batches.labels(dataset, "committed").inc()
        self.batch_duration.labels(dataset).observe(seconds)
        self.last_batch.labels(dataset).set_to_current_time()


class StateCollector(Collector):
    """State gauges computed at scrape time from ``source()``, which returns
    ``{"postgres_up": bool, "files_pending": {dataset: n}, "query_up": {dataset: bool},
    "batch_retrying": {dataset: bool}, "source_up": {dataset: bool}}``.

    Without a source (no daemon yet) the families are exported without samples.
    """

    def __init__(self):
        self.source: Callable[[], dict] | None = None

    def describe(self):
        return list(self._families({}))

    def collect(self):
        return self._families(self.source() if self.source is not None else {})

    @staticmethod
    def _families(state: dict):
        up = GaugeMetricFamily("dataops_postgres_up", "1 when PostgreSQL answers (checked at scrape, cached briefly)")
        if "postgres_up" in state:
            up.add_metric([], 1.0 if state["postgres_up"] else 0.0)
        pending = GaugeMetricFamily("dataops_files_pending", "Files landed but not yet committed", labels=["dataset"])
        for dataset, n in sorted(state.get("files_pending", {}).items()):
            pending.add_metric([dataset], float(n))
        queries = GaugeMetricFamily("dataops_query_up", "1 while the dataset's streaming query runs",
                                    labels=["dataset"])
        for dataset, running in sorted(state.get("query_up", {}).items()):
            queries.add_metric([dataset], 1.0 if running else 0.0)
        retrying = GaugeMetricFamily("dataops_batch_retrying", "1 while the dataset's batch waits out a PostgreSQL "
                                     "failure that heals (retried)", labels=["dataset"])
        for dataset, waiting in sorted(state.get("batch_retrying", {}).items()):
            retrying.add_metric([dataset], 1.0 if waiting else 0.0)
        inputs = GaugeMetricFamily("dataops_source_up", "1 when the dataset's input (an API, an object store) "
                                   "answered its last poll", labels=["dataset"])
        for dataset, ok in sorted(state.get("source_up", {}).items()):
            inputs.add_metric([dataset], 1.0 if ok else 0.0)
        return [up, pending, queries, retrying, inputs]


def progress_listener(metrics: "Metrics", dataset_of: Callable[[str | None], str | None]):
    """A StreamingQueryListener feeding Spark's own progress into ``metrics`` (runs on the driver);
    ``dataset_of(query name)`` is the dataset a query loads (None: not one of ours)."""
    from pyspark.sql.streaming import StreamingQueryListener

    class _Listener(StreamingQueryListener):
        def onQueryStarted(self, event) -> None:
            pass

        def onQueryProgress(self, event) -> None:
            progress = event.progress
            dataset = dataset_of(progress.name)
            if dataset is None:
                return
            metrics.input_rows_per_second.labels(dataset).set(progress.inputRowsPerSecond or 0.0)
            metrics.processed_rows_per_second.labels(dataset).set(progress.processedRowsPerSecond or 0.0)
            total_ms = (progress.durationMs or {}).get("triggerExecution")
            if total_ms is not None:
                metrics.spark_batch_duration.labels(dataset).set(total_ms / 1000.0)

        def onQueryIdle(self, event) -> None:
            pass

        def onQueryTerminated(self, event) -> None:
            pass

    return _Listener()
