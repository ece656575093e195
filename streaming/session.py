"""The SparkSession factory: ``local[*]`` by default, any cluster master through config."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from streaming.config import Settings

log = logging.getLogger(__name__)

# Quiet, small-footprint defaults for a long-running driver; every one can be overridden in spark.conf.
DEFAULT_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.streaming.metricsEnabled": "false",
    "spark.python.worker.reuse": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.scheduler.mode": "FAIR",
}


def create_session(settings: Settings):
    """Start (or reuse) the SparkSession described by ``settings.spark``.

    Spark's Python workers must run this interpreter (they import this package), so
    ``PYSPARK_PYTHON`` is pinned to ``sys.executable`` unless the operator set it.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(settings.spark.master).appName(settings.spark.app_name)
    for key, value in {**DEFAULT_CONF, **settings.spark.conf}.items():
        builder = builder.config(key, value)
    # The JVM keeps a SIGTERM disposition of "ignore" it inherits, so a signal sent to the whole
    # process group (systemd, `timeout`, a terminal) reaches only us and we stop Spark in order.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN) if in_main else None
    try:
        spark = builder.getOrCreate()
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    spark.sparkContext.setLogLevel(settings.logging.spark_level)
    _quiet_query_failures(spark, settings.logging.spark_level)
    log.info("spark %s started (master %s)", spark.version, settings.spark.master)
    return spark


# Loggers that print a whole stack trace when a micro-batch fails; the daemon reports each failure
# itself in one line naming the dataset, so these only speak at DEBUG.
_QUERY_FAILURE_LOGGERS = (
    "org.apache.spark.sql.execution.streaming.runtime.MicroBatchExecution",
    "org.apache.spark.sql.execution.streaming.MicroBatchExecution",
    "org.apache.spark.sql.execution.streaming.runtime.StreamExecution",
    "org.apache.spark.storage.BlockManager",
    "org.apache.spark.broadcast.TorrentBroadcast",
)


def _quiet_query_failures(spark, spark_level: str) -> None:
    if spark_level in ("ALL", "DEBUG"):
        return
    try:
        jvm = spark.sparkContext._jvm
        level = jvm.org.apache.logging.log4j.Level.OFF
        for name in _QUERY_FAILURE_LOGGERS:
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)
    except Exception as exc:  # logging configuration is a nicety, never a reason not to start
        log.debug("could not quiet Spark's query-failure logging: %s", exc)
