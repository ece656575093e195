"""The SparkSession factory: ``local[*]`` by default, any cluster master through config."""

from __future__ import annotations

import logging
import os
import sys

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
    ``PYSPARK_PYTHON`` is pinned to ``sys.executable`` unless the operator set it. The JVM runs in a
    session of its own: a signal sent to our whole process group (Ctrl-C, ``timeout``, a service
    manager) reaches only us, and we stop Spark in order. The JVM still exits with us, as it watches
    its stdin pipe.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    conf = SparkConf().setMaster(settings.spark.master).setAppName(settings.spark.app_name)
    for key, value in {**DEFAULT_CONF, **settings.spark.conf}.items():
        conf.set(key, value)
    with SparkContext._lock:
        if SparkContext._gateway is None:
            SparkContext._gateway = launch_gateway(conf, popen_kwargs={"start_new_session": True})
            SparkContext._jvm = SparkContext._gateway.jvm
    spark = SparkSession.builder.config(conf=conf).getOrCreate()
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
