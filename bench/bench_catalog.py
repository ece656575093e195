"""Catalog benchmark: what keeping the column statistics costs a batch, on a small and a large table.

For each table size (10,000 and 1,000,000 rows by default) it builds a dataset of that size, then
loads the same kind of 1,000-row batch several times (appends, then upserts that replace existing
rows) through the daemon's load path, timing the whole batch and the catalog's share of it: the
statistics delta and the column profiles (semantic types, uniqueness, samples) inside the merge
transaction, and the key and join candidates evaluated after it (a second, 1,000-row dataset
``order_notes`` references ``orders.id``). The catalog's cost should not grow with the table:
the script prints both sizes' medians and their ratio (1.0 = no growth).

    python bench/bench_catalog.py [--sizes 10000 1000000] [--batches 7] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg2  # noqa: E402

from connectors import catalog_links, postgres, profile, stats  # noqa: E402
from connectors.files import LandedFile, load_files  # noqa: E402
from streaming.batch import LoadContext  # noqa: E402
from streaming.config import Settings  # noqa: E402
from streaming.metrics import Metrics  # noqa: E402

HEADER = "id,status,amount,ratio,day,note,flag\n"


def rows(rng: random.Random, ids) -> str:
    return "".join(
        f"{i},{rng.choice(['new', 'paid', 'shipped', 'lost'])},{rng.randrange(100000) / 100},{rng.random()},"
        f"2024-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d},note {rng.randrange(10**6)},"
        f"{rng.choice(['true', 'false'])}\n" for i in ids)


class Timed:
    """Wraps a catalog step (``stats.apply`` by default) to add up the time it takes in each batch."""

    def __init__(self, inner=None):
        self.seconds = 0.0
        self.inner = inner or stats.apply

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def run_size(dsn: str, size: int, batches: int, workdir: Path) -> dict:
    token = uuid.uuid4().hex[:8]
    schema, cat = f"bench_{token}", f"bench_{token}_cat"
    settings = Settings(postgres={"dsn": dsn, "schema": schema, "catalog_schema": cat},
                        datasets={"orders": {"mode": "upsert", "primary_key": ["id"]}},
                        metrics={"enabled": False})
    postgres.ensure_catalog(dsn, cat, schema)
    ctx = LoadContext(settings=settings, dsn=dsn, metrics=Metrics(), spark=None)
    rng = random.Random(size)
    seed = workdir / f"seed_{size}.csv"
    seed.write_text(HEADER + rows(rng, range(1000)))
    load_files(ctx, "orders", [LandedFile(str(seed), seed.name)], "bench", 0)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        # Grow the table in SQL, then let the catalog recompute itself from it.
        cur.execute(f'INSERT INTO "{schema}".orders SELECT g, (ARRAY[\'new\',\'paid\',\'shipped\',\'lost\'])[1 + g % 4], '
                    f"(g % 100000) / 100.0, random(), date '2024-01-01' + g % 365, 'note ' || g, g % 2 = 0 "
                    f"FROM generate_series(1000, {size - 1}) g")
    start = time.perf_counter()
    postgres.refresh_catalog(dsn, cat, "orders")
    refresh = time.perf_counter() - start
    notes = workdir / f"notes_{size}.csv"
    notes.write_text("order_id,note\n" + "".join(f"{rng.randrange(size)},n{i}\n" for i in range(1000)))
    load_files(ctx, "order_notes", [LandedFile(str(notes), notes.name)], "bench-notes", 0)
    timings = []
    timed, profiled, linked = Timed(), Timed(profile.apply), Timed(catalog_links.refresh)
    stats.apply, profile.apply, catalog_links.refresh = timed, profiled, linked
    try:
        for b in range(batches):
            path = workdir / f"batch_{size}_{b}.csv"
            ids = range(size + b * 1000, size + (b + 1) * 1000) if b % 2 == 0 else rng.sample(range(size), 1000)
            path.write_text(HEADER + rows(rng, ids))
            timed.seconds = profiled.seconds = linked.seconds = 0.0
            start = time.perf_counter()
            load_files(ctx, "orders", [LandedFile(str(path), path.name)], "bench", b + 1)
            timings.append((time.perf_counter() - start, timed.seconds + profiled.seconds + linked.seconds,
                            profiled.seconds, linked.seconds))
    finally:
        stats.apply, profile.apply, catalog_links.refresh = timed.inner, profiled.inner, linked.inner
    with conn.cursor() as cur:
        cur.execute(f'SELECT containment, method FROM "{cat}".join_candidates')
        joins = cur.fetchall()
    with conn.cursor() as cur:
        cur.execute(f'DROP SCHEMA "{schema}" CASCADE; DROP SCHEMA "{cat}" CASCADE')
    conn.close()
    catalog = [t[1] for t in timings]
    return {"size": size, "refresh": refresh, "batch": statistics.median(t[0] for t in timings),
            "catalog": statistics.median(catalog), "catalog_mean": statistics.mean(catalog), "catalog_max": max(catalog),
            "profile": statistics.median(t[2] for t in timings), "links": statistics.median(t[3] for t in timings),
            "joins": joins}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--batches", type=int, default=7, help="1,000-row batches per size (appends and upserts)")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_size(args.dsn, size, args.batches, Path(tmp)) for size in args.sizes]
    print(f"{'table rows':>12}  {'refresh s':>9}  {'batch s (median)':>16}  {'catalog s (median)':>18}  "
          f"{'catalog s (mean)':>16}  {'catalog s (max)':>15}  {'profiles s':>10}  {'keys+joins s':>12}  joins found")
    for r in results:
        print(f"{r['size']:>12,}  {r['refresh']:>9.2f}  {r['batch']:>16.3f}  {r['catalog']:>18.3f}  "
              f"{r['catalog_mean']:>16.3f}  {r['catalog_max']:>15.3f}  {r['profile']:>10.3f}  {r['links']:>12.3f}  "
              f"{r['joins']}")
    small, large = results[0], results[-1]
    print(f"catalog cost ratio, {large['size']:,} vs {small['size']:,} rows: {large['catalog'] / small['catalog']:.2f} "
          f"(1.0 = independent of table size); profiles {large['profile'] / small['profile']:.2f}, "
          f"keys and joins {large['links'] / small['links']:.2f}")


if __name__ == "__main__":
    main()
