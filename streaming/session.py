"""The SparkSession factory: ``local[*]`` by default, any cluster master through config."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import warnings

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
    # Checkpoint logs (offsets, commits, the file source's list) live on a local (or locally mounted)
    # disk. Spark writes them through Hadoop's FileContext by default, which, without Hadoop's native
    # library (the pyspark package ships none), looks up a path's link status by running `readlink`:
    # several processes per rename, so per micro-batch, about 80 ms of a small batch's bookkeeping.
    # Hadoop's FileSystem API renames through Java, as atomically (one rename(2) of a finished
    # temporary file; a checkpoint has one writer, the daemon holding its lock), and its raw local
    # implementation writes no checksum side files, which doubled every create and rename.
    # Checkpoints written before (checksum files beside them, or none) read the same.
    "spark.sql.streaming.checkpointFileManagerClass":
        "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager",
    "spark.hadoop.fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem",
    "spark.hadoop.fs.AbstractFileSystem.file.impl": "org.apache.hadoop.fs.local.RawLocalFs",  # FileContext, if chosen
    # Python workers fork from a daemon that has already imported every source and the row stage.
    "spark.python.daemon.module": "streaming.pyworker",
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
    level = settings.logging.spark_level
    quiet_start(level, settings.spark.master)
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    conf = SparkConf().setMaster(settings.spark.master).setAppName(settings.spark.app_name)
    for key, value in {**DEFAULT_CONF, **settings.spark.conf}.items():
        conf.set(key, value)
    # log4j reads its configuration when the JVM starts, before any setLogLevel: give it ours, so the
    # start-up lines (default profile, NativeCodeLoader, loopback hostname) follow logging.spark_level.
    log4j = f"-Dlog4j2.configurationFile=file:{log4j_config(level)}"
    conf.set("spark.driver.extraJavaOptions", f"{log4j} {conf.get('spark.driver.extraJavaOptions', '')}".strip())
    with SparkContext._lock:
        if SparkContext._gateway is None:
            quiet = level not in ("ALL", "DEBUG", "INFO", "WARN")
            popen = {"start_new_session": True, **({"stderr": subprocess.PIPE} if quiet else {})}
            SparkContext._gateway = launch_gateway(conf, popen_kwargs=popen)
            SparkContext._jvm = SparkContext._gateway.jvm
            if quiet:
                _forward_stderr(SparkContext._gateway.proc.stderr)
    spark = SparkSession.builder.config(conf=conf).getOrCreate()
    spark.sparkContext.setLogLevel(settings.logging.spark_level)
    _quiet_query_failures(spark, settings.logging.spark_level)
    log.info("spark %s started (master %s)", spark.version, settings.spark.master)
    return spark


def warm_workers(spark) -> threading.Thread:
    """Start the executors' Python daemons now, in the background, rather than in the first batch.

    One trivial task per core makes each executor start :mod:`streaming.pyworker` (a Python
    process that imports pyarrow, psycopg2 and every source, over a second on a small machine) and
    fork its workers; the first large batch then starts its tasks at once.
    """
    def run() -> None:
        sc = spark.sparkContext
        slots = max(1, sc.defaultParallelism)
        try:
            sc.parallelize(range(slots), slots).map(_ready).collect()  # driver-ok: one int per task
        except Exception as exc:  # the first batch starts them instead
            log.debug("Python workers were not started ahead: %s", exc)

    thread = threading.Thread(target=run, name="dataops-warm-workers", daemon=True)
    thread.start()
    return thread


def _ready(_: int) -> int:
    return os.getpid()


_LOG4J = """# Written by dataops at start: Spark's logging at logging.spark_level.
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
# Spark announces "Setting default log level" when this logger's level differs from the root's.
logger.repl.name = org.apache.spark.repl.Main
logger.repl.level = {level}
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
"""


def log4j_config(level: str) -> str:
    """A log4j2 properties file setting Spark's root level to ``level``; returns its path."""
    path = os.path.join(tempfile.gettempdir(), f"dataops-log4j2-{level.lower()}-{os.getuid()}.properties")
    text = _LOG4J.format(level=level)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def quiet_start(spark_level: str, master: str) -> None:
    """Keep start-up noise off the console unless ``logging.spark_level`` asks for it.

    A local master binds to the loopback address (no "hostname resolves to a loopback address"
    warning, and nothing to reach from outside); pandas' and pyarrow's deprecation warnings are
    silenced in this process and, through ``PYTHONWARNINGS``, in Spark's Python workers.
    """
    if spark_level in ("ALL", "DEBUG", "INFO", "WARN"):
        return
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("SPARK_LOCAL_HOSTNAME", "localhost")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    warnings.filterwarnings("ignore", category=FutureWarning)


# Lines the JVM itself prints at start whatever log4j says (Spark 4 enables the vector module).
_JVM_NOISE = re.compile(rb"^WARNING: Using incubator modules|^Setting default log level|^To adjust logging level")


def _forward_stderr(stream) -> None:
    """Copy the JVM's stderr (its Python workers' included) to ours, less its start-up notices."""
    def pump() -> None:
        for line in iter(stream.readline, b""):
            if _JVM_NOISE.match(line):
                continue
            out = getattr(sys.stderr, "buffer", None)  # looked up per line: sys.stderr may be replaced
            try:
                if out is not None:
                    out.write(line)
                    out.flush()
                else:
                    sys.stderr.write(line.decode(errors="replace"))
            except (OSError, ValueError):  # our stderr is closed: keep draining so the JVM never blocks
                continue

    threading.Thread(target=pump, name="spark-stderr", daemon=True).start()


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
