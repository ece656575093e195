"""The catalog's column statistics, kept incrementally, checked against SQL over the table itself."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
from decimal import Decimal

import pytest

from streaming import catalog, cli
from tests.helpers import load

COLUMNS = ["id", "status", "amount", "ratio", "day", "note", "flag"]


def truth(db, table: str) -> dict:
    """Every statistic the catalog keeps, computed by SQL over the whole table."""
    types = db.columns(table)
    out = {"row_count": db.scalar(f'SELECT count(*) FROM {{s}}."{table}"'), "columns": {}}
    for name, kind in types.items():
        bound = f'length("{name}")' if kind == "text" else (f'"{name}"::int' if kind == "boolean" else f'"{name}"')
        nulls, distinct, lo, hi = db.query(
            f'SELECT count(*) - count("{name}"), count(DISTINCT "{name}"), min({bound}), max({bound}) '
            f'FROM {{s}}."{table}"')[0]
        mean = db.scalar(f'SELECT avg("{name}")::float8 FROM {{s}}."{table}"') if kind in (
            "integer", "bigint", "numeric", "double precision", "smallint", "real") else None
        # Equal numerics count together, shown with the largest scale the table holds them in.
        key = (f'(array_agg("{name}"::text ORDER BY scale("{name}") DESC))[1]' if kind == "numeric"
               else f'"{name}"::text')
        top = db.query(f'SELECT {key}, count(*) FROM {{s}}."{table}" WHERE "{name}" IS NOT NULL '
                       f'GROUP BY "{name}" ORDER BY 2 DESC, 1 LIMIT 10')
        out["columns"][name] = {"null_count": nulls, "distinct": distinct, "min": lo, "max": hi, "mean": mean,
                                "top": [list(t) for t in top]}
    return out


def assert_catalog_true(db, settings, dataset: str) -> dict:
    doc = catalog.show_dataset(settings.dsn, settings, dataset)
    expected = truth(db, dataset)
    assert doc["row_count"] == expected["row_count"]
    for column in doc["columns"]:
        want = expected["columns"][column["name"]]
        where = f"{dataset}.{column['name']}"
        assert column["null_count"] == want["null_count"], where
        assert column["non_null_count"] == expected["row_count"] - want["null_count"], where
        if column["distinct_estimated"]:
            assert abs(column["distinct_count"] - want["distinct"]) <= 0.02 * want["distinct"], where
        else:
            assert column["distinct_count"] == want["distinct"], where
        low, high = column["min"], column["max"]
        if isinstance(want["min"], dt.datetime):
            low, high = dt.datetime.fromisoformat(low), dt.datetime.fromisoformat(high)
        elif isinstance(want["min"], dt.date):
            low, high = dt.date.fromisoformat(low), dt.date.fromisoformat(high)
        if isinstance(want["min"], Decimal):
            want = {**want, "min": float(want["min"]), "max": float(want["max"])}
        assert (low, high) == (want["min"], want["max"]), where
        if want["mean"] is None:
            assert column["mean"] is None, where
        else:
            assert column["mean"] == pytest.approx(want["mean"], rel=1e-9), where
        if column["top_values"] is not None:
            assert [[t["value"], t["count"]] for t in column["top_values"]] == want["top"], where
    return doc


def random_file(rng: random.Random, path, rows: int, id_range: int) -> None:
    """A CSV with a low-cardinality column, nullable numbers, dates, text and booleans."""
    lines = [",".join(COLUMNS)]
    for _ in range(rows):
        maybe = lambda value: "" if rng.random() < 0.15 else value  # noqa: E731 - a null sometimes
        lines.append(",".join([
            str(rng.randrange(id_range)),
            maybe(rng.choice(["new", "paid", "shipped", "returned", "lost"])),
            maybe(f"{rng.randrange(-5000, 100000) / 100:.2f}"),
            maybe(repr(rng.random())),
            maybe((dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(2000))).isoformat()),
            maybe("x" * rng.randrange(0, 40) + str(rng.randrange(10**6))),
            maybe(rng.choice(["true", "false"])),
        ]))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("seed", [1, 2])
def test_random_appends_upserts_and_overwrites_keep_every_stat_exact(db, make_settings, tmp_path, seed):
    rng = random.Random(seed)
    for step in range(10):
        mode = rng.choice(["append", "upsert", "upsert", "overwrite"] if step else ["append"])
        settings = make_settings(datasets={"orders": {"mode": mode, "primary_key": ["id"]}})
        path = tmp_path / f"step{step}.csv"
        random_file(rng, path, rows=rng.randrange(50, 1500), id_range=3000)
        result = load(settings, "orders", path, batch_id=step)
        assert result.rows_in == result.loaded + result.quarantined + result.duplicates
        before = assert_catalog_true(db, settings, "orders")
    # The refresh command recomputes everything from the table: it agrees with the incremental path.
    catalog.refresh_dataset(settings.dsn, settings, "orders")
    after = assert_catalog_true(db, settings, "orders")
    for old, new in zip(before["columns"], after["columns"]):
        assert {k: v for k, v in old.items() if k != "distinct_count"} == \
            {k: v for k, v in new.items() if k != "distinct_count"}


def test_upsert_nulling_values_keeps_distinct_counts_true(db, make_settings, tmp_path):
    """Values an upsert overwrites leave the sketch; drift past its bound rebuilds the column's sketch."""
    settings = make_settings(datasets={"users": {"mode": "upsert", "primary_key": ["id"]}})
    first = tmp_path / "1.csv"
    first.write_text("id,email\n" + "".join(f"{i},user{i}@example.com\n" for i in range(4000)))
    load(settings, "users", first, batch_id=0)
    for step in range(1, 4):
        path = tmp_path / f"{step}.csv"
        # Three hundred addresses give way to one shared address: the distinct count drops by 299.
        path.write_text("id,email\n" + "".join(f"{i},team@example.com\n" for i in range(step * 300, step * 300 + 300)))
        load(settings, "users", path, batch_id=step)
        doc = assert_catalog_true(db, settings, "users")
        email = next(c for c in doc["columns"] if c["name"] == "email")
        assert email["distinct_estimated"] and email["null_count"] == 0


def test_replaced_rows_are_joined_with_their_new_versions_once_for_statistics_and_profiles(
        db, make_settings, tmp_path, monkeypatch):
    """An upsert that changes a repeated value makes the column unique again (the profiles), and the
    values it overwrote count as the sketch's drift (the statistics): both from one join."""
    from connectors import stats

    joins = []
    real = stats.replaced_changes

    def counting(cur, delta, columns):
        before = len(delta.changes)
        out = real(cur, delta, columns)
        joins.append(len(delta.changes) > before)
        return out

    monkeypatch.setattr(stats, "replaced_changes", counting)
    settings = make_settings(datasets={"codes": {"mode": "upsert", "primary_key": ["id"]}})
    first, second = tmp_path / "1.csv", tmp_path / "2.csv"
    first.write_text("id,code,note\n" + "".join(f"{i},c{i // 2},n{i}\n" for i in range(300)))  # each code twice
    load(settings, "codes", first, batch_id=0)
    assert next(c for c in catalog.show_dataset(settings.dsn, settings, "codes")["columns"]
                if c["name"] == "code")["unique"] is False
    # Every second row gets a code of its own; the notes stay as they were.
    second.write_text("id,code,note\n" + "".join(f"{i},d{i},n{i}\n" for i in range(1, 300, 2)))
    load(settings, "codes", second, batch_id=1)
    assert db.scalar("SELECT count(DISTINCT code) = count(*) FROM {s}.codes")
    doc = assert_catalog_true(db, settings, "codes")
    columns = {c["name"]: c for c in doc["columns"]}
    assert columns["code"]["unique"] is True and columns["note"]["unique"] is True
    drift = "SELECT name, sketch_drift FROM {c}.columns WHERE dataset = 'codes'"
    before = dict(db.query(drift))
    assert before["note"] == 0  # unchanged values drift nothing (the codes' drift rebuilt their sketch)
    third = tmp_path / "3.csv"
    third.write_text("id,code,note\n0,c0,another note\n")  # one value overwritten: within the drift bound
    load(settings, "codes", third, batch_id=2)
    assert_catalog_true(db, settings, "codes")
    assert dict(db.query(drift)) == {**before, "note": 1}
    # Each batch (the first one's replaced rows are none): the statistics join, the profiles reuse it.
    assert joins == [True, False] * 3


@pytest.mark.parametrize("reader", ["exact", "vectorized"])
def test_sums_of_numerics_longer_than_28_digits_stay_exact(db, make_settings, tmp_path, monkeypatch, reader):
    """The catalog's sums are exact whatever the digits, through added and replaced rows, whichever
    reader staged them."""
    from connectors import csvfast

    if reader == "vectorized":
        monkeypatch.setattr(csvfast, "MIN_BYTES", 0)
    settings = make_settings(datasets={"ledger": {"mode": "upsert", "primary_key": ["id"]}})
    first, second = tmp_path / "1.csv", tmp_path / "2.csv"
    first.write_text("id,amount\n" + "".join(f"{i},{10 ** 24 + i * 7919}.{i:010d}\n" for i in range(300)))
    second.write_text("id,amount\n" + "".join(f"{i},-{10 ** 23 + i}.{i:011d}\n" for i in range(200, 400)))
    exact = "SELECT value_sum = (SELECT sum(amount) FROM {s}.ledger) FROM {c}.columns WHERE name = 'amount'"
    for batch, path in enumerate((first, second)):
        load(settings, "ledger", path, batch_id=batch)
        assert db.scalar("SELECT max(length(amount::text)) FROM {s}.ledger") > 30
        assert db.scalar(exact), batch


def test_schema_changes_keep_stats_true(db, make_settings, tmp_path):
    settings = make_settings()
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    a.write_text("id,v\n" + "".join(f"{i},{i}\n" for i in range(200)))
    b.write_text("id,v,extra\n" + "".join(f"{i},{i}.5,e{i % 3}\n" for i in range(200, 260)))  # widen + new column
    c.write_text("id,v,extra\n")  # header only
    load(settings, "evolving", a, batch_id=0)
    load(settings, "evolving", b, batch_id=1)
    load(settings, "evolving", c, batch_id=2)
    doc = assert_catalog_true(db, settings, "evolving")
    extra = next(col for col in doc["columns"] if col["name"] == "extra")
    assert extra["null_count"] == 200 and extra["distinct_count"] == 3 and not extra["distinct_estimated"]
    assert [t["count"] for t in extra["top_values"]] == [20, 20, 20]


def test_two_datasets_loading_at_once_both_stay_exact(db, make_settings, tmp_path):
    settings = make_settings(datasets={"left": {"mode": "upsert", "primary_key": ["id"]},
                                       "right": {"mode": "append"}})
    rng = random.Random(7)
    errors: list[BaseException] = []

    def run(dataset: str, offset: int) -> None:
        try:
            for step in range(6):
                path = tmp_path / f"{dataset}{step}.csv"
                random_file(rng, path, rows=400, id_range=2000)
                load(settings, dataset, path, batch_id=offset + step)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("left", 0)), threading.Thread(target=run, args=("right", 100)),
               threading.Thread(target=run, args=("left", 200))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert_catalog_true(db, settings, "left")
    assert_catalog_true(db, settings, "right")
    assert db.scalar("SELECT count(*) FROM {c}.loads WHERE status = 'committed'") == 18


def test_cli_show_json_and_refresh_after_a_hand_edit(db, make_settings, tmp_path, capsys):
    settings = make_settings()
    path = tmp_path / "m.csv"
    path.write_text("id,name,score\n1,ann,3.5\n2,bob,\n3,,7\n")
    load(settings, "marks", path)
    config = str(tmp_path / "dataops.yaml")
    assert cli.main(["catalog", "show", "marks", "--json", "--config", config]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("dataset", "table", "row_count", "quarantined_rows", "schema_version"):
        assert key in doc
    score = next(c for c in doc["columns"] if c["name"] == "score")
    assert {k: score[k] for k in ("name", "source_name", "type", "nullable", "null_count", "distinct_count",
                                  "min", "max")} == {
        "name": "score", "source_name": "score", "type": "numeric", "nullable": True, "null_count": 1,
        "distinct_count": 2, "min": 3.5, "max": 7}
    assert score["mean"] == pytest.approx(5.25)
    name = next(c for c in doc["columns"] if c["name"] == "name")
    assert (name["min"], name["max"], name["min_max_of"]) == (3, 3, "length")

    db.query("UPDATE {s}.marks SET score = NULL; INSERT INTO {s}.marks (id, name) VALUES (4, 'dora')")
    assert cli.main(["catalog", "refresh", "marks", "--config", config]) == 0
    assert json.loads(capsys.readouterr().out)["row_count"] == 4
    doc = assert_catalog_true(db, settings, "marks")
    score = next(c for c in doc["columns"] if c["name"] == "score")
    assert (score["null_count"], score["distinct_count"], score["min"], score["mean"]) == (4, 0, None, None)
    assert cli.main(["catalog", "show", "marks", "--config", config]) == 0
    assert "score" in capsys.readouterr().out  # the columns table
    assert cli.main(["catalog", "refresh", "nope", "--config", config]) == 2
    assert "nope" in capsys.readouterr().err


def test_catalog_views_are_queryable(db, make_settings, tmp_path):
    settings = make_settings()
    path = tmp_path / "v.csv"
    path.write_text("k,n\na,1\nb,2\na,3\n")
    load(settings, "viewed", path)
    assert db.query("SELECT dataset, row_count FROM {c}.dataset_catalog") == [("viewed", 3)]
    assert db.query("SELECT column_name, distinct_count, distinct_estimated, mean FROM {c}.column_catalog "
                    "ORDER BY ordinal") == [("k", 2, False, None), ("n", 3, False, 2.0)]
    assert db.scalar("SELECT rows_loaded FROM {c}.load_history") == 3
    assert db.scalar("SELECT cause FROM {c}.schema_history") == "v.csv"


def test_equal_values_count_once_and_widening_recomputes(db, make_settings, tmp_path):
    settings = make_settings()
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("price,day\n1.5,2024-01-01\n1.50,2024-01-01\n2,2024-01-02\n")  # rows 1 and 2 are duplicates
    b.write_text("price,day\n1.500,2024-01-01 00:00:00\n3,2024-01-03 10:00:00\n")  # day widens to timestamp
    load(settings, "prices", a, batch_id=0)
    doc = assert_catalog_true(db, settings, "prices")
    price = next(c for c in doc["columns"] if c["name"] == "price")
    assert price["distinct_count"] == 2 and [t["value"] for t in price["top_values"]] == [
        db.scalar("SELECT price::text FROM {s}.prices WHERE price = 1.5"), "2"]  # as the table holds it
    load(settings, "prices", b, batch_id=1)
    assert db.columns("prices")["day"] == "timestamp without time zone"
    doc = assert_catalog_true(db, settings, "prices")
    day = next(c for c in doc["columns"] if c["name"] == "day")
    assert day["distinct_count"] == 3 and day["top_values"][0] == {"value": "2024-01-01 00:00:00", "count": 2}


def test_statistics_from_before_an_upgrade_are_recomputed_once(db, make_settings, tmp_path):
    settings = make_settings()
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id,v\n" + "".join(f"{i},{i % 7}\n" for i in range(100)))
    b.write_text("id,v\n" + "".join(f"{i},\n" for i in range(100, 110)))
    load(settings, "legacy", a, batch_id=0)
    # What a catalog written before column statistics existed looks like after its upgrade.
    db.query("UPDATE {c}.columns SET null_count = 0, non_null_count = 0, distinct_count = 0, min_value = NULL, "
             "max_value = NULL, value_sum = NULL, top_values = '{{}}'; DELETE FROM {c}.column_hll; "
             "UPDATE {c}.datasets SET stats_stale = true")
    load(settings, "legacy", b, batch_id=1)
    assert_catalog_true(db, settings, "legacy")
    assert db.scalar("SELECT stats_stale FROM {c}.datasets") is False


# Sketches older catalogs hashed otherwise: catalog 4 floats (as numeric), catalog 5 numerics (without
# their sign). (old version, column, its values in the first and second file, its type in the table)
_REHASHED = [
    (4, "ratio", lambda i: f"{i / 7:.4e}", "double precision"),
    (5, "amount", lambda i: f"-{i}.5" if i < 300 else f"{i}.5", "numeric"),
]


@pytest.mark.parametrize("version, column, value, kind", _REHASHED, ids=["catalog-4-float", "catalog-5-numeric"])
def test_an_old_catalogs_sketch_of_a_rehashed_type_is_rebuilt_from_the_table(db, make_settings, tmp_path,
                                                                            version, column, value, kind):
    """The upgrade drops the sketches an older catalog hashed otherwise and marks their statistics
    stale; the next load recomputes them from the table (the registers a refresh computes), once."""
    from connectors.postgres import ensure_catalog

    settings = make_settings()
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(f"id,{column}\n" + "".join(f"{i},{value(i)}\n" for i in range(300)))
    b.write_text(f"id,{column}\n" + "".join(f"{i},{value(i)}\n" for i in range(300, 400)))
    load(settings, "rehashed", a, batch_id=0)
    assert db.columns("rehashed")[column] == kind
    # The old catalog as it was: its sketch of the column built from other hashes (the id column's).
    db.query("UPDATE {c}.column_hll SET registers = (SELECT registers FROM {c}.column_hll WHERE column_name = 'id') "
             f"WHERE column_name = '{column}'; COMMENT ON TABLE {{c}}.datasets IS 'dataops catalog {version}'")
    sketch = f"SELECT registers FROM {{c}}.column_hll WHERE column_name = '{column}'"
    ensure_catalog(settings.dsn, settings.postgres.catalog_schema, settings.postgres.schema_name)
    assert db.scalar(f"SELECT count(*) FROM ({sketch}) s") == 0
    assert db.scalar("SELECT stats_stale FROM {c}.datasets") is True
    load(settings, "rehashed", b, batch_id=1)
    assert_catalog_true(db, settings, "rehashed")
    loaded = bytes(db.scalar(sketch))
    catalog.refresh_dataset(settings.dsn, settings, "rehashed")
    assert bytes(db.scalar(sketch)) == loaded
    ensure_catalog(settings.dsn, settings.postgres.catalog_schema, settings.postgres.schema_name)
    assert bytes(db.scalar(sketch)) == loaded  # the upgrade runs once


def test_a_column_past_the_value_limit_keeps_a_sketch_of_every_value(db, make_settings, tmp_path):
    """Exact value counts need no sketch scan; the sketch made from them and the batch's values when a
    column passes the limit is the one a scan of the whole table gives."""
    settings = make_settings()
    first, second = tmp_path / "1.csv", tmp_path / "2.csv"
    first.write_text("id,code,grp\n" + "".join(f"{i},c{i % 40},g{i % 3}\n" for i in range(400)))
    second.write_text("id,code,grp\n" + "".join(f"{i},c{30 + i % 40},g{i % 3}\n" for i in range(400, 800)))
    load(settings, "codes", first, batch_id=0)
    load(settings, "codes", second, batch_id=1)
    doc = assert_catalog_true(db, settings, "codes")
    code = next(c for c in doc["columns"] if c["name"] == "code")
    grp = next(c for c in doc["columns"] if c["name"] == "grp")
    assert code["distinct_estimated"] and code["top_values"] is None
    assert abs(code["distinct_count"] - db.scalar('SELECT count(DISTINCT code) FROM {s}."codes"')) <= 1
    assert not grp["distinct_estimated"] and grp["distinct_count"] == 3
    sketches = "SELECT column_name, registers FROM {c}.column_hll WHERE dataset = 'codes' ORDER BY 1"
    incremental = [(n, bytes(r)) for n, r in db.query(sketches)]
    catalog.refresh_dataset(settings.dsn, settings, "codes")
    assert [n for n, _ in incremental] == ["code", "grp", "id"]
    assert incremental == [(n, bytes(r)) for n, r in db.query(sketches)]


def test_sketches_computed_beside_the_merge_are_the_ones_a_scan_of_the_table_gives(db, make_settings, tmp_path,
                                                                                   monkeypatch):
    """A large batch's registers come from its staged rows on a second session; with duplicates left
    out, or rows whose keys the table has, they must still be the registers of the table's values."""
    from connectors import stats

    monkeypatch.setattr(stats, "SIDE_SKETCH_ROWS", 0)
    used = []
    original = stats.BatchSketches.result

    def result(self):
        registers = original(self)
        used.append(sorted(registers))
        return registers

    monkeypatch.setattr(stats.BatchSketches, "result", result)
    aggregated = []
    original_aggregates = stats.BatchSketches.aggregates
    monkeypatch.setattr(stats.BatchSketches, "aggregates",
                        lambda self: aggregated.append(True) or original_aggregates(self))
    merge_counts = []  # value counts the merge's own session ran (the others run beside it)
    original_counts = stats._value_counts
    monkeypatch.setattr(stats, "_value_counts", lambda cur, relation, columns: merge_counts.append(
        threading.current_thread().name) or original_counts(cur, relation, columns))
    sketches = "SELECT column_name, registers FROM {c}.column_hll WHERE dataset = %s ORDER BY 1"
    upsert = {"mode": "upsert", "primary_key": ["id"]}
    beside, counted_by_merge = {}, {}
    for dataset, config, repeated in (("plain", {}, 30), ("unique", {}, 0), ("keyed", {"primary_key": ["id"]}, 30),
                                      ("changing", upsert, 0), ("resent", upsert, 0)):
        settings = make_settings(datasets={dataset: config})
        before, counted_before = len(used), len(merge_counts)
        for step in range(3):
            path = tmp_path / f"{dataset}{step}.csv"
            # Each batch meets 250 of the table's keys; "changing" changes every other one of their rows.
            rows = [f"{i},v{i * 7 % 293},{i % 5 + (step if dataset == 'changing' and i % 2 else 0)}.5,"
                    f"2024-01-{1 + i % 28:02d}\n" for i in range(step * 150, step * 150 + 400)]
            path.write_text("id,code,amount,day\n" + "".join(rows + rows[:repeated]))  # repeated rows in the file
            load(settings, dataset, path, batch_id=step)
        beside[dataset] = len(used) - before
        counted_by_merge[dataset] = sum(1 for name in merge_counts[counted_before:]
                                        if not name.startswith("dataops-batch-sketches"))
        incremental = [(n, bytes(r)) for n, r in db.query(sketches, (dataset,))]
        catalog.refresh_dataset(settings.dsn, settings, dataset)
        assert incremental == [(n, bytes(r)) for n, r in db.query(sketches, (dataset,))]
        assert_catalog_true(db, settings, dataset)
    # The plain dataset's batches used the registers from beside the merge (code and id are sketched).
    assert used[:6] == [["code", "id"]] * 6
    assert len(aggregated) == 5  # the batches that left out no row (the unique dataset's, the upserts' first)
    # An upsert sketches beside the merge where most of its rows change the table (275 of 400 here, and
    # every row of the first batch, which makes the table); a re-sent file's few new rows are sketched
    # from the batch table.
    assert (beside["changing"], beside["resent"]) == (3, 1)
    # amount and day have few values: counted beside the merge where it left out no row (the unique
    # dataset's batches), by the merge itself where it left out repeated rows (the plain dataset's).
    assert (counted_by_merge["unique"], counted_by_merge["plain"]) == (0, 3)


def test_a_sketch_scan_grouping_only_high_ranks_gives_the_registers_of_every_value(db):
    """Registers from a scan that groups only the values of the ranks every register is expected to
    reach, and scans again the registers that reach none, equal those of a scan grouping every value:
    for distinct values, values repeated ten times, few values and nulls, with spreads guessed right
    (a floor of 2), too high (most registers scanned again) and far too high (all of them)."""
    import psycopg2.extensions
    from psycopg2 import sql

    from connectors import stats

    db.query("CREATE SCHEMA IF NOT EXISTS {s}")
    db.query("CREATE TABLE {s}.sk AS SELECT i AS uniq, (i % 40000)::bigint AS rep, md5(i::text) AS txt, "
             "(i % 300)::text AS few, CASE WHEN i % 3 = 0 THEN NULL ELSE i * 1.5 END AS gappy "
             "FROM generate_series(1, 400000) i")
    columns = {"uniq": "integer", "rep": "bigint", "txt": "text", "few": "text", "gappy": "numeric"}
    relation = sql.Identifier(db.schema, "sk")
    scans = []

    class Recording(psycopg2.extensions.cursor):
        def execute(self, query, params=None):
            scans.append(query.as_string(self))
            return super().execute(query, params)

    def registers(spread):
        out: dict[str, bytearray] = {}
        with db.conn.cursor(cursor_factory=Recording) as cur:
            stats._add_to_sketches(cur, relation, columns, out, spread)
        return {n: bytes(r) for n, r in out.items()}

    every = registers(None)
    assert len(scans) == 1 and "<" not in scans[0]  # one scan, grouping every value
    assert sum(map(bool, every["uniq"])) == stats.HLL_M and sum(map(bool, every["few"])) < 300
    assert stats.rank_floor(400_000 / stats.HLL_M) == 2 and stats.rank_floor(1e9 / stats.HLL_M) > 10
    for guess in (400_000, 5_000_000, 1e9):
        scans.clear()
        assert registers({n: guess / stats.HLL_M for n in columns}) == every, guess
        assert len(scans) == 2 and "< " in scans[0] and "= ANY(" in scans[1]
    # Registers already held merge in: the union, register by register.
    held = {"uniq": bytearray([60] * 10 + [0] * (stats.HLL_M - 10))}
    with db.conn.cursor() as cur:
        stats._add_to_sketches(cur, relation, {"uniq": "integer"}, held, {"uniq": 400_000 / stats.HLL_M})
    assert bytes(held["uniq"]) == bytes([60] * 10) + every["uniq"][10:]


def test_distinct_values_are_estimated_from_the_first_rows():
    from connectors import stats

    assert stats.distinct_estimate(10_000, 10_000, 1_000_000) == 1_000_000  # all distinct so far
    rng = random.Random(5)
    for values in (2_000, 100_000):
        seen = len({rng.randrange(values) for _ in range(10_000)})
        assert abs(stats.distinct_estimate(10_000, seen, 1_000_000) - values) < 0.15 * values
    assert stats.distinct_estimate(10_000, 9_999, 20_000) <= 20_000  # never more than the rows


def test_a_column_whose_values_come_late_in_a_large_batch_is_estimated(db, make_settings, tmp_path):
    """Values past the first rows a column is looked at in still end its exact counts."""
    settings = make_settings(datasets={"late": {"mode": "append", "primary_key": ["id"]}})
    path = tmp_path / "late.csv"
    path.write_text("id,tag,late\n" + "".join(
        f"{i},t{i % 4},{f'v{i}' if i >= 11_000 else ''}\n" for i in range(12_000)))
    load(settings, "late", path, batch_id=0)
    doc = assert_catalog_true(db, settings, "late")
    late = next(c for c in doc["columns"] if c["name"] == "late")
    tag = next(c for c in doc["columns"] if c["name"] == "tag")
    assert late["distinct_estimated"] and late["top_values"] is None and late["null_count"] == 11_000
    assert not tag["distinct_estimated"] and tag["distinct_count"] == 4


def typed_file(rng: random.Random, path, rows: int, id_range: int) -> None:
    """A CSV of every type the stage tasks summarize, written the ways PostgreSQL reads them alike
    (``+5``, ``1.50`` beside ``1.5``, ``1.5e-3``, zones and none, ``yes`` and ``TRUE``), with nulls."""
    lines = ["id,qty,status,amount,ratio,day,at,zoned,flag,note"]
    for _ in range(rows):
        maybe = lambda value: "" if rng.random() < 0.1 else value  # noqa: E731 - a null sometimes
        moment = dt.datetime(2023, 1, 1) + dt.timedelta(seconds=rng.randrange(10**8), microseconds=rng.choice([0, 500000, 123]))
        lines.append(",".join([
            str(rng.randrange(id_range)),
            maybe(rng.choice(["+", "", "-"]) + str(rng.randrange(50))),
            maybe(rng.choice(["new", "paid", "Zoë", "shipped"])),
            maybe(rng.choice([f"{rng.randrange(-500, 5000) / 100:.2f}", f"{rng.randrange(100) / 10:.1f}", "+1.50",
                              "0.00", "-0.0", ".5", "12."])),
            maybe(rng.choice([f"{rng.random():.6e}", f"{rng.random() * 1e-3:.3e}", "-0", "1E+3", "+7"])),
            maybe((dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(2000))).isoformat()),
            maybe(rng.choice([moment.isoformat(sep=" "), moment.isoformat(), moment.date().isoformat(),
                              moment.strftime("%Y-%m-%d %H:%M")])),
            maybe(moment.strftime("%Y-%m-%d %H:%M:%S") + rng.choice(["+05:30", "Z", "-0800", "+02"])),
            maybe(rng.choice(["true", "false", "yes", "no", "TRUE"])),
            maybe('"' + ("ü" * rng.randrange(0, 30) + str(rng.randrange(10**5)) + ', "x"').replace('"', '""') + '"'),
        ]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("seed", [3, 4])
def test_statistics_the_stage_tasks_compute_are_the_ones_sql_gives(db, make_settings, tmp_path, monkeypatch, seed):
    """Files read by the vectorized reader come with their columns' statistics (streaming.summaries):
    through appends, upserts and overwrites the catalog built from them is the SQL over the table."""
    from connectors import csvfast, postgres

    monkeypatch.setattr(csvfast, "MIN_BYTES", 0)
    monkeypatch.setattr(csvfast, "BLOCK_BYTES", 16384)
    covered = []
    original = postgres.batch_summary

    def spy(staged, columns):
        summary = original(staged, columns)
        covered.append({n for n in columns if summary.covers(n)})
        return summary

    monkeypatch.setattr(postgres, "batch_summary", spy)
    rng = random.Random(seed)
    for step in range(6):
        mode = rng.choice(["append", "upsert", "overwrite"] if step else ["append"])
        settings = make_settings(datasets={"typed": {"mode": mode, "primary_key": ["id"]}})
        path = tmp_path / f"step{step}.csv"
        typed_file(rng, path, rows=rng.randrange(300, 1200), id_range=2000)
        result = load(settings, "typed", path, batch_id=step)
        assert result.rows_in == result.loaded + result.quarantined + result.duplicates
        assert_catalog_true(db, settings, "typed")
    assert db.columns("typed") == {"id": "integer", "qty": "integer", "status": "text", "amount": "numeric",
                                   "ratio": "double precision", "day": "date", "at": "timestamp without time zone",
                                   "zoned": "timestamp with time zone", "flag": "boolean", "note": "text"}
    assert covered and all(c == set(db.columns("typed")) for c in covered)  # no column left to the SQL
    sketches = "SELECT column_name, registers FROM {c}.column_hll WHERE dataset = 'typed' ORDER BY 1"
    incremental = [(n, bytes(r)) for n, r in db.query(sketches)]
    catalog.refresh_dataset(settings.dsn, settings, "typed")
    assert incremental == [(n, bytes(r)) for n, r in db.query(sketches)]


@pytest.mark.parametrize("reader", ["exact", "vectorized"])
def test_a_number_and_its_negative_are_two_values_to_a_sketch(db, make_settings, tmp_path, monkeypatch, reader):
    """PostgreSQL's numeric hash leaves out the sign; the catalog's does not, whoever computes it."""
    from connectors import csvfast

    if reader == "vectorized":
        monkeypatch.setattr(csvfast, "MIN_BYTES", 0)
        monkeypatch.setattr(csvfast, "BLOCK_BYTES", 16384)
    settings = make_settings()
    path = tmp_path / "signed.csv"
    path.write_text("id,amount\n" + "".join(f"{i},{sign}{i // 2}.25\n" for i in range(4000)
                                             for sign in ("-" if i % 2 else "",)))
    load(settings, "signed", path)
    doc = assert_catalog_true(db, settings, "signed")
    amount = next(c for c in doc["columns"] if c["name"] == "amount")
    assert db.scalar('SELECT count(DISTINCT amount) FROM {s}."signed"') == 4000
    assert amount["distinct_estimated"] and abs(amount["distinct_count"] - 4000) <= 80
    sketch = "SELECT registers FROM {c}.column_hll WHERE column_name = 'amount'"
    loaded = bytes(db.scalar(sketch))
    catalog.refresh_dataset(settings.dsn, settings, "signed")
    assert bytes(db.scalar(sketch)) == loaded
