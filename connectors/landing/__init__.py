"""Landing folders as a source: users drop CSV files into ``<landing.path>/<dataset>/``.

:mod:`connectors.landing.watcher` decides when a dropped file is complete and moves it into the
dataset's inbox; :mod:`connectors.landing.folders` is the :class:`streaming.sources.Source`.
"""

from connectors.landing.watcher import CSV_SUFFIXES, Landing

__all__ = ["CSV_SUFFIXES", "Landing"]
