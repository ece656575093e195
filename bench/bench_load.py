"""Load benchmark: the warm daemon against `psql \\copy`, in one run on one machine.

Generates a messy CSV (quoted commas and quotes, embedded line breaks, padded numbers, empty
fields, leading-zero codes, non-ASCII text), then times

  (a) ``psql \\copy`` of the file into a hand-typed table: the floor on this machine;
  (b) the warm daemon loading the same file: dropped into the landing folder -> all rows committed;
  (c) the drop-to-visible latency of small files into the warm daemon (p50, p95);
  (d) the same file into an upsert dataset (``primary_key: [order_id]``), first into a new table
      (the dataset's query already started), then again with every tenth row changed;

and prints rows/s and the ratio to (a) for (b) and (d) (1.0 = as fast as psql), where each large
load's time went (detect: drop to batch start; stage, with the tasks' parse / clean_type / copy
seconds; merge; catalog and commit), with the peak
resident memory of the whole process tree (this process, the JVM and Spark's Python workers)
during each large load. ``--memory-rows N`` adds a load of an N-row file (8,000,000 rows is about
1 GB) and compares its peak memory with the 1,000,000-row file's.

``--only-small`` runs (c) alone (no large file is generated or loaded).

    python bench/bench_load.py [--rows 1000000] [--small-files 30] [--memory-rows 0] [--only-small] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg2  # noqa: E402

COLUMNS = ("order_id,customer,amount,quantity,unit_price,created_at,order_date,"
           "is_active,zip,email,score,note")
PSQL_TABLE = """CREATE TABLE {t} (order_id integer, customer text, amount numeric, quantity integer,
    unit_price numeric, created_at timestamp, order_date date, is_active boolean, zip text, email text,
    score double precision, note text)"""


def generate(path: Path, rows: int, seed: int = 7, changed_every: int = 0) -> None:
    """Write the benchmark's CSV; with ``changed_every`` = n, every n-th row gets another amount and
    note (the same keys and random draws otherwise, so the other rows are identical)."""
    rng = random.Random(seed)
    names = ["Smith, J", 'The "Best" Shop', "Zoë Müller", "O'Brien", "plain name", "Ünïcode Çafé"]
    notes = ["", "fragile", "call before\ndelivery", 'said "leave it"', "a, b, c", "ok"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(COLUMNS + "\n")
        for i in range(rows):
            customer = rng.choice(names)
            note = rng.choice(notes)
            amount = "" if i % 37 == 0 else f"{rng.randint(0, 99999)}.{rng.randint(0, 99):02d}"
            if changed_every and i % changed_every == 0:
                amount, note = f"{i % 1000}.5", "changed"
            f.write(
                f'{i},"{customer.replace(chr(34), chr(34) * 2)}",{amount}, {rng.randint(1, 50)} ,'
                f"{rng.randint(1, 999)}.{rng.randint(0, 9)},"
                f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00,"
                f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},{rng.choice(['true', 'false'])},"
                f"{rng.randint(0, 99999):05d},user{i}@example.com,{rng.random() * 1000:.3e},"
                f'"{note.replace(chr(34), chr(34) * 2)}"\n'
            )


def psql_copy(dsn: str, path: Path, schema: str) -> float:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
        cur.execute(PSQL_TABLE.format(t=f'"{schema}".floor'))
    conn.close()
    started = time.perf_counter()
    subprocess.run(["psql", dsn, "-v", "ON_ERROR_STOP=1", "-qc",
                    f"\\copy \"{schema}\".floor FROM '{path}' WITH (FORMAT csv, HEADER)"], check=True)
    return time.perf_counter() - started


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (read from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total


class PeakMemory:
    """Samples the process tree's resident memory every 0.2 s while a load runs."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(0.2)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Phases:
    """Where each large load's time goes: the daemon's phase marks (its progress hook) and the stage
    tasks' own split of their time (the log line the landing source writes for each batch)."""

    def __init__(self):
        import logging

        self.marks: list[tuple[str, float]] = []
        self.tasks: list[str] = []
        self.last = ""  # the report of the last load
        phases = self

        class Capture(logging.Handler):
            def emit(self, record):
                message = record.getMessage()
                if "task seconds:" in message:
                    phases.tasks.append(message.split("task seconds: ", 1)[1])

        logging.getLogger("streaming.batch").addHandler(Capture(logging.INFO))
        logging.getLogger("streaming.batch").setLevel(logging.INFO)

    def progress(self, phase: str, _value) -> None:
        self.marks.append((phase, time.perf_counter()))

    def start(self) -> float:
        self.marks.clear()
        self.tasks.clear()
        return time.perf_counter()

    def report(self, dropped: float, visible: float) -> str:
        at = {}
        for phase, t in self.marks:
            at.setdefault(phase, t)
        if not {"stage", "merge", "catalog"} <= set(at):
            return "    phases: not recorded"
        detect, stage = at["stage"] - dropped, at["merge"] - at["stage"]
        merge, catalog = at["catalog"] - at["merge"], visible - at["catalog"]
        tasks = f" ({'; '.join(self.tasks)}, summed over tasks)" if self.tasks else ""
        return (f"    phases: detect {detect:.2f} s, stage {stage:.2f} s{tasks}, merge {merge:.2f} s, "
                f"catalog + commit {catalog:.2f} s (catalog share {catalog / (visible - dropped):.0%})")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-files", type=int, default=30)
    parser.add_argument("--dsn", default=os.environ.get("DATAOPS_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--memory-rows", type=int, default=0, help="also load a file this large, for peak memory")
    parser.add_argument("--only-small", action="store_true", help="run only (c), the small-file latency")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dataops-bench-"))
    token = uuid.uuid4().hex[:8]
    schema, catalog = f"bench_{token}", f"bench_{token}_cat"
    big = work / "orders_big.csv"
    if not args.only_small:
        print(f"generating {args.rows:,} rows ...", flush=True)
        generate(big, args.rows)
        print(f"  {big.stat().st_size / 1e6:.1f} MB", flush=True)

    from streaming.config import Settings
    from streaming.daemon import Daemon

    try:
        if not args.only_small:
            floor = psql_copy(args.dsn, big, schema + "_floor")
            print(f"(a) psql \\copy          {floor:7.2f} s  {args.rows / floor:>12,.0f} rows/s", flush=True)

        settings = Settings(
            postgres={"dsn": args.dsn, "schema": schema, "catalog_schema": catalog},
            landing={"path": str(work / "landing"), "settle_seconds": 0.25},
            spark={"master": args.master, "checkpoint_dir": str(work / "checkpoints")},
            datasets={"orders_upsert": {"mode": "upsert", "primary_key": ["order_id"]}},
            metrics={"enabled": False}, logging={"level": "WARNING"},
        )
        import logging

        logging.basicConfig(level=logging.WARNING)
        from connectors.postgres import ensure_catalog

        ensure_catalog(args.dsn, catalog, schema)
        daemon = Daemon(settings, args.dsn)
        phases = Phases()
        daemon.ctx.progress = phases.progress
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        conn = psycopg2.connect(args.dsn)
        conn.autocommit = True

        def committed_rows(dataset: str) -> int:
            with conn.cursor() as cur:
                cur.execute(f'SELECT coalesce(sum(rows_loaded), 0) FROM "{catalog}".loads '
                            "WHERE dataset = %s AND status = 'committed'", (dataset,))
                return cur.fetchone()[0]

        def drop_and_wait(dataset: str, source: Path, expect: int, timeout: float = 1800) -> float:
            """Drop ``source``; wait until ``expect`` more rows are committed (upsert counts rewritten rows)."""
            folder = work / "landing" / dataset
            folder.mkdir(parents=True, exist_ok=True)
            before = committed_rows(dataset)
            staged = folder / f".{uuid.uuid4().hex}.tmp"
            shutil.copyfile(source, staged)
            started = time.perf_counter()
            phases.start()
            staged.rename(folder / f"{uuid.uuid4().hex}.csv")  # the moment the file is dropped
            deadline = started + timeout
            while committed_rows(dataset) < before + expect:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"timed out waiting for {dataset}")
                time.sleep(0.005)
            phases.last = phases.report(started, time.perf_counter())
            return time.perf_counter() - started

        small = work / "small.csv"
        generate(small, 100, seed=11)
        # Warm up: JVM, query, Python workers, the table itself.
        for _ in range(3):
            drop_and_wait("orders", small, 100)
        big_rows = args.rows
        if not args.only_small:
            with PeakMemory() as memory:
                seconds = drop_and_wait("orders", big, big_rows)
            peak_big = memory.peak
            print(f"(b) warm daemon          {seconds:7.2f} s  {big_rows / seconds:>12,.0f} rows/s   ratio "
                  f"{floor / seconds:5.2f}   peak RSS {peak_big / 2**20:6.0f} MiB", flush=True)
            print(phases.last, flush=True)

        latencies = [drop_and_wait("events", small, 100) for _ in range(args.small_files + 2)][2:]
        latencies.sort()
        p50 = statistics.median(latencies)
        p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))]
        print(f"(c) 100-row files        p50 {p50 * 1000:6.0f} ms   p95 {p95 * 1000:6.0f} ms   "
              f"({len(latencies)} files)", flush=True)

        if not args.only_small:
            changed = work / "orders_changed.csv"
            generate(changed, args.rows, changed_every=10)
            # The dataset's query starts before its first file, so the first upsert meets no table.
            (work / "landing" / "orders_upsert").mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + 300
            while not any(k.endswith("orders_upsert") and v == "running"
                          for k, v in daemon.readiness()[1]["queries"].items()):
                if time.monotonic() > deadline:
                    raise SystemExit("timed out waiting for the orders_upsert query")
                time.sleep(0.05)
            for label, source in (("(d) upsert, new table", big), ("    upsert, 10% changed", changed)):
                with PeakMemory() as memory:
                    seconds = drop_and_wait("orders_upsert", source, big_rows)
                print(f"{label:24s} {seconds:7.2f} s  {big_rows / seconds:>12,.0f} rows/s   ratio "
                      f"{floor / seconds:5.2f}   peak RSS {memory.peak / 2**20:6.0f} MiB", flush=True)
                print(phases.last, flush=True)
        if args.memory_rows and not args.only_small:
            large = work / "orders_large.csv"
            generate(large, args.memory_rows, seed=13)
            with PeakMemory() as memory:
                seconds = drop_and_wait("orders_large", large, args.memory_rows, timeout=7200)
            print(f"(e) {large.stat().st_size / 1e9:.2f} GB file        {seconds:7.2f} s  "
                  f"{args.memory_rows / seconds:>12,.0f} rows/s   peak RSS {memory.peak / 2**20:6.0f} MiB "
                  f"({memory.peak / peak_big:.2f} x the {big.stat().st_size / 1e6:.0f} MB file's)", flush=True)
            print(phases.last, flush=True)
        daemon.request_stop()
        thread.join(timeout=120)
        conn.close()
    finally:
        conn = psycopg2.connect(args.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            for s in (schema, catalog, schema + "_floor"):
                cur.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
