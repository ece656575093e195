"""The ``dataops`` command: ``run``, ``ingest``, ``status`` and ``catalog``."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("dataops")

# Set by SIGTERM/SIGINT that arrive before the daemon installs its own handlers (while Python, the
# configuration or Spark are still loading): the daemon then stops as soon as it can, cleanly.
EARLY_STOP = threading.Event()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: EARLY_STOP.set())
    from streaming.config import load_settings
    from streaming.errors import DataOpsError

    try:
        settings = load_settings(args.config)
        _setup_logging(settings)
        return args.func(args, settings)
    except DataOpsError as exc:
        print(f"dataops: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dataops", description="Keep PostgreSQL tables loaded from CSV landing "
                                                                 "folders and REST APIs.")
    sub = parser.add_subparsers(dest="command", required=True)
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", help="YAML config file (default: $DATAOPS_CONFIG, else built-in defaults)")

    run = sub.add_parser("run", parents=[config], help="run the daemon in the foreground")
    run.add_argument("--grace", type=float, default=60.0, help="seconds to let in-flight batches finish on SIGTERM")
    run.set_defaults(func=cmd_run)

    ingest = sub.add_parser("ingest", parents=[config], help="load one file through the daemon's code path and exit")
    ingest.add_argument("file")
    ingest.add_argument("--dataset", required=True)
    ingest.add_argument("--mode", choices=["append", "overwrite", "upsert"])
    ingest.add_argument("--key", nargs="+", default=None, metavar="COL", help="primary key column(s) for upsert")
    ingest.add_argument("--quiet", action="store_true", help="no progress on stderr (the JSON summary still prints)")
    ingest.set_defaults(func=cmd_ingest)

    status = sub.add_parser("status", parents=[config],
                            help="ask the running daemon how it is doing (exit 0 ready, 1 not ready, 2 no daemon)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    catalog = sub.add_parser("catalog", help="describe the loaded datasets")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", required=True)
    listing = catalog_sub.add_parser("list", parents=[config], help="every dataset, one line each")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_catalog_list)
    show = catalog_sub.add_parser("show", parents=[config], help="one dataset: schema, counts, columns")
    show.add_argument("dataset")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_catalog_show)
    refresh = catalog_sub.add_parser("refresh", parents=[config],
                                     help="recompute a dataset's counts and column statistics from its table")
    refresh.add_argument("dataset")
    refresh.set_defaults(func=cmd_catalog_refresh)
    _discovery_commands(catalog_sub, config)
    return parser


def _discovery_commands(catalog_sub, config) -> None:
    search = catalog_sub.add_parser("search", parents=[config],
                                    help="datasets and columns whose names, descriptions, types or values match")
    search.add_argument("text")
    search.add_argument("--json", action="store_true")
    search.set_defaults(func=cmd_catalog_search)
    context = catalog_sub.add_parser("context", parents=[config],
                                     help="a compact, prompt-ready description of datasets (all when none named)")
    context.add_argument("datasets", nargs="*", metavar="DATASET")
    context.add_argument("--format", choices=["markdown", "json"], default="markdown")
    context.set_defaults(func=cmd_catalog_context)
    describe = catalog_sub.add_parser("describe", parents=[config], help="set a dataset's or column's description")
    describe.add_argument("dataset")
    describe.add_argument("--column", metavar="COL")
    describe.add_argument("text", help="the description; empty text clears it")
    describe.set_defaults(func=cmd_catalog_describe)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _setup_logging(settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.logging.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.logging.level)
    # urllib3 logs request URLs at DEBUG, which would show an API key sent in a query string.
    for noisy in ("py4j", "watchdog", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def _database(settings) -> Iterator[str]:
    """The configured DSN, or a private embedded PostgreSQL's, started for the command and stopped after."""
    if settings.dsn:
        yield settings.dsn
        return
    from streaming.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres()
    dsn = embedded.start()
    print(f"dataops: no postgres.dsn configured; using embedded PostgreSQL at {dsn}", file=sys.stderr)
    try:
        yield dsn
    finally:
        embedded.stop()


def cmd_run(args, settings) -> int:
    from streaming.daemon import ConfigWatch, Daemon

    config_path = args.config or os.environ.get("DATAOPS_CONFIG")
    read = ConfigWatch.signature(config_path) if config_path else None  # before an embedded PostgreSQL starts
    with _database(settings) as dsn:
        return Daemon(settings, dsn, grace_seconds=args.grace, stop_event=EARLY_STOP, config_path=config_path,
                      config_read=read).run()


def cmd_ingest(args, settings) -> int:
    from connectors import postgres
    from connectors.files import LandedFile, load_files
    from streaming.batch import LoadContext
    from streaming.locks import CatalogLock
    from streaming.metrics import Metrics
    from streaming.progress import IngestProgress

    path = Path(args.file)
    if not path.is_file():
        print(f"dataops: {path} is not a file", file=sys.stderr)
        return 2
    cfg = settings.dataset(args.dataset).model_copy()
    if args.mode:
        cfg.mode = args.mode
    if args.key:
        cfg.primary_key = list(args.key)
    if cfg.mode == "upsert" and not cfg.primary_key:
        print("dataops: --mode upsert needs --key COL (or datasets.<name>.primary_key in config)", file=sys.stderr)
        return 2
    say = (lambda message: None) if args.quiet else _progress
    if args.quiet:  # errors and warnings only; the JSON summary still goes to stdout
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    with _database(settings) as dsn, contextlib.ExitStack() as held:
        pg = settings.postgres
        postgres.ensure_catalog(dsn, pg.catalog_schema, pg.schema_name)
        # Shared: ingests may run side by side, never beside a daemon on the same catalog.
        held.callback(CatalogLock(dsn, pg.catalog_schema, shared=True).acquire().release)
        spark = None
        if path.stat().st_size > settings.landing.local_parse_bytes:
            from streaming.session import create_session

            say(f"starting Spark ({settings.spark.master}) for {path.stat().st_size / 1e6:.1f} MB")
            spark = create_session(settings)
        progress = IngestProgress(dsn, pg.catalog_schema, f"{path.name} -> {args.dataset}", path.stat().st_size,
                                  IngestProgress.style_for(sys.stderr, args.quiet))
        ctx = LoadContext(settings=settings, dsn=dsn, metrics=Metrics(), spark=spark, progress=progress)
        say(f"loading {path} into dataset {args.dataset} ({cfg.mode})")
        started = time.monotonic()
        with progress:
            result = load_files(ctx, args.dataset, [LandedFile(str(path.resolve()), path.name)],
                                stream=f"ingest:{uuid.uuid4()}", batch_id=0, config=cfg,
                                source=f"file:{path.resolve()}", one_off=True)
        seconds = time.monotonic() - started
        if spark is not None:
            spark.stop()
    rejected = [f for f in result.files if f["status"] == "rejected"]
    summary = {
        "dataset": args.dataset, "load_id": result.load_id, "rows_in": result.rows_in, "loaded": result.loaded,
        "quarantined": result.quarantined, "duplicates": result.duplicates, "seconds": round(seconds, 3),
        "rejected": rejected[0]["detail"] if rejected else None,
    }
    print(json.dumps(summary))
    return 1 if rejected else 0


def _progress(message: str) -> None:
    print(f"dataops: {message}", file=sys.stderr, flush=True)


def cmd_status(args, settings) -> int:
    from streaming.status import fetch_status, render_status, status_url

    url = status_url(settings)
    doc = fetch_status(url)
    if doc is None:
        print(f"dataops: no daemon answers at {url}"
              f"{' (metrics.enabled is false)' if not settings.metrics.enabled else ''}", file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=2) if args.json else render_status(doc))
    return 0 if doc.get("ready") else 1


def cmd_catalog_list(args, settings) -> int:
    from streaming import catalog

    with _database(settings) as dsn:
        rows = catalog.list_datasets(dsn, settings)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
    else:
        print(catalog.format_table(rows, ["dataset", "table", "mode", "row_count", "quarantined_rows",
                                          "schema_version", "last_loaded_at"]))
    return 0


def cmd_catalog_show(args, settings) -> int:
    from streaming import catalog

    with _database(settings) as dsn:
        doc = catalog.show_dataset(dsn, settings, args.dataset)
    if doc is None:
        print(f"dataops: no dataset {args.dataset!r} in the catalog", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, default=str, indent=2))
    else:
        print(_show_text(doc))
    return 0


# How `catalog show` prints a part of the document: the columns of its table. Parts not listed
# print every field they have.
SHOW_COLUMNS = {
    "columns": ["name", "source_name", "type", "nullable", "null_count", "distinct_count", "min", "max", "mean"],
    "meaning": ["column", "semantic_type", "confidence", "pii", "unique", "sample_values", "description"],
    "top_values": ["column", "top_values"],  # the most frequent values, apart: the widest text of all
    "join_candidates": ["column", "references", "containment"],
    "recent_loads": ["load_id", "started_at", "seconds", "rows_in", "rows_loaded", "rows_quarantined",
                     "duplicates_removed", "files_rejected", "status"],
}


def _show_text(doc: dict) -> str:
    """``catalog show`` for a person: the dataset's fields, then each part as a table."""
    from streaming.tables import render_document, render_table

    parts = dict(doc)
    parts["columns"] = [_column_row(c) for c in doc.get("columns") or []]
    parts["meaning"] = [{"column": c["name"], "semantic_type": c.get("semantic_type"),
                         "confidence": c.get("semantic_confidence"), "pii": c.get("pii"), "unique": c.get("unique"),
                         "sample_values": ", ".join(map(str, c.get("sample_values") or []))[:200],
                         "description": c.get("description")} for c in doc.get("columns") or []]
    parts["top_values"] = [{"column": c["name"], "top_values": c["top_values"]} for c in parts["columns"]
                           if c["top_values"]]
    parts["join_candidates"] = [{"column": j["column"], "containment": j["containment"],
                                 "references": f"{j['references']['dataset']}.{j['references']['column']}"}
                                for j in doc.get("join_candidates") or []]
    parts["key_candidates"] = "; ".join(", ".join(k) for k in doc.get("key_candidates") or []) or None
    parts["recent_loads"] = [{**r, "seconds": round((r["finished_at"] - r["started_at"]).total_seconds(), 3)
                              if r.get("finished_at") and r.get("started_at") else None}
                             for r in doc.get("recent_loads") or []]
    head = render_document({k: v for k, v in parts.items() if k not in SHOW_COLUMNS}, title="dataset")
    tables = [render_table(parts[k], columns, title=k) for k, columns in SHOW_COLUMNS.items()
              if parts.get(k)]
    return "\n\n".join([head, *tables, "(~ marks a HyperLogLog estimate; min/max of text columns are lengths)"])


def _column_row(c: dict) -> dict:
    unit = " chars" if c.get("min_max_of") == "length" else ""
    return {**c, "top_values": ", ".join(f"{t['value']} ({t['count']})" for t in c.get("top_values") or [])[:300],
            "distinct_count": f"~{c['distinct_count']}" if c.get("distinct_estimated") else c.get("distinct_count"),
            "min": None if c.get("min") is None else f"{c['min']}{unit}",
            "max": None if c.get("max") is None else f"{c['max']}{unit}"}


def cmd_catalog_refresh(args, settings) -> int:
    from streaming import catalog

    with _database(settings) as dsn:
        summary = catalog.refresh_dataset(dsn, settings, args.dataset)
    print(json.dumps(summary))
    return 0


def cmd_catalog_search(args, settings) -> int:
    from streaming import catalog, discovery

    with _database(settings) as dsn:
        items = discovery.search(dsn, settings, args.text)
    if args.json:
        print(json.dumps([{k: i[k] for k in ("dataset", "column", "matched", "score")} for i in items], indent=2))
    else:
        print(catalog.format_table([{**i, "text": (i["text"] or "")[:60]} for i in items],
                                   ["score", "dataset", "column", "matched", "text"]))
    return 0


def cmd_catalog_context(args, settings) -> int:
    from streaming import discovery

    with _database(settings) as dsn:
        docs = discovery.documents(dsn, settings, args.datasets)
    if args.format == "json":
        print(json.dumps(discovery.context_json(docs), default=str, indent=2, ensure_ascii=False))
    else:
        sys.stdout.write(discovery.context_markdown(docs))
    return 0


def cmd_catalog_describe(args, settings) -> int:
    from streaming import discovery

    with _database(settings) as dsn:
        print(json.dumps(discovery.describe(dsn, settings, args.dataset, args.column, args.text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
