"""The daemon Spark forks its Python workers from: ``pyspark.daemon`` with every source loaded.

Spark starts one such daemon per executor (``spark.python.daemon.module``, set by
:mod:`streaming.session`) and forks a worker from it for each task; a worker that stays idle for a
minute exits. A fresh worker would import pyarrow, psycopg2 and the row stage before its first row
(about half a second, and the first large batch after a quiet minute would pay it on every core).
Imported here once, before any fork, every worker starts with them.

pyspark's own daemon imports its worker module only after the fork, because a library that
starts threads at import could leave a forked child holding a lock no thread will release. The
only thread these imports start is jemalloc's background purger (pyarrow), whose allocator stops
and re-creates it around ``fork`` itself.
"""

from __future__ import annotations

import sys


def _preload() -> None:
    """Import every installed source (and through it the row stage and the sink's staging writer)."""
    try:
        from streaming.sources import registry

        registry()
    except Exception as exc:  # a worker imports what it needs by itself; never stop the daemon for this
        print(f"dataops: Python workers start without preloaded sources: {exc}", file=sys.stderr)


if __name__ == "__main__":
    _preload()
    from pyspark.daemon import manager

    manager()
