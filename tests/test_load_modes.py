"""Load modes, exactly-once replays and the Spark execution path, against real PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from tests.helpers import accounted, load


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_append_adds_rows_from_every_file(db, make_settings, tmp_path):
    settings = make_settings()
    load(settings, "sales", write(tmp_path, "a.csv", "id,amount\n1,10\n2,20\n"))
    load(settings, "sales", write(tmp_path, "b.csv", "id,amount\n3,30\n1,10\n"))
    assert db.query("SELECT id, amount FROM {s}.sales ORDER BY id, amount") == [(1, 10), (1, 10), (2, 20), (3, 30)]
    assert db.scalar("SELECT row_count FROM {c}.datasets WHERE name = 'sales'") == 4


def test_upsert_keeps_the_last_occurrence_in_file_order(db, make_settings, tmp_path):
    settings = make_settings(datasets={"people": {"mode": "upsert", "primary_key": ["id"]}})
    first = write(tmp_path, "1.csv", "id,name,city\n1,ann,Oslo\n2,bob,Rome\n")
    second = write(tmp_path, "2.csv", "id,name,city\n2,bobby,Rome\n3,cy,Lima\n2,robert,NA\n")
    third = write(tmp_path, "3.csv", "id,name,city\n3,cyrus,Lima\n")
    load(settings, "people", first)
    # Two files in one batch: file order, then line order decides which row wins.
    result = load(settings, "people", second, third)
    assert db.query("SELECT id, name, city FROM {s}.people ORDER BY id") == [
        (1, "ann", "Oslo"), (2, "robert", None), (3, "cyrus", "Lima")]
    assert (result.rows_in, result.loaded, result.duplicates) == (4, 2, 2)
    assert result.inserted == 1  # id 3 is new, id 2 was updated
    assert db.scalar("SELECT row_count FROM {c}.datasets WHERE name = 'people'") == 3
    assert db.scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'p' AND conrelid = %s::regclass",
                     (f"{db.schema}.people",)) == 1


def test_overwrite_replaces_the_table_atomically(db, make_settings, tmp_path):
    settings = make_settings(datasets={"snapshot": {"mode": "overwrite"}})
    load(settings, "snapshot", write(tmp_path, "1.csv", "id,v\n1,a\n2,b\n3,c\n"))
    seen = []
    stop = threading.Event()

    def reader():
        import psycopg2

        conn = psycopg2.connect(db.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute(f'SELECT count(*) FROM "{db.schema}".snapshot')
                seen.append(cur.fetchone()[0])
        conn.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(5):
            load(settings, "snapshot", write(tmp_path, f"{i}.csv", "id,v\n" + "".join(f"{n},x\n" for n in range(10))))
            load(settings, "snapshot", write(tmp_path, f"s{i}.csv", "id,v\n1,a\n2,b\n3,c\n"))
    finally:
        stop.set()
        thread.join()
    assert seen and set(seen) <= {3, 10}  # never empty, never half-loaded
    assert db.query("SELECT id, v FROM {s}.snapshot ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]
    assert db.scalar("SELECT row_count FROM {c}.datasets WHERE name = 'snapshot'") == 3


def test_a_replayed_batch_writes_nothing(db, make_settings, tmp_path):
    settings = make_settings()
    path = write(tmp_path, "a.csv", "id\n1\n2\n")
    first = load(settings, "events", path, stream="landing:events:q1", batch_id=7)
    again = load(settings, "events", path, stream="landing:events:q1", batch_id=7)
    assert again.replayed and again.load_id == first.load_id and again.loaded == first.loaded == 2
    assert db.scalar("SELECT count(*) FROM {s}.events") == 2
    # The same batch number of another stream (a new checkpoint) is a different batch.
    load(settings, "events", path, stream="landing:events:q2", batch_id=7)
    assert db.scalar("SELECT count(*) FROM {s}.events") == 4
    assert db.scalar("SELECT count(*) FROM {c}.loads WHERE dataset = 'events'") == 2


def test_a_refused_batch_commits_no_rows_and_leaves_no_staging(db, make_settings, tmp_path):
    settings = make_settings(datasets={"t": {"partition_by": "amount"}})
    result = load(settings, "t", write(tmp_path, "a.csv", "id,amount\n1,2\n"))
    (entry,) = result.files
    assert entry["status"] == "rejected" and "partition_by column amount" in entry["detail"]
    assert db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.t",)) is None
    assert db.query("SELECT rows_loaded, files_rejected FROM {c}.loads") == [(0, 1)]
    assert db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'stg%%'", (db.catalog,)) == 0


def test_spark_job_path_matches_the_driver_path(db, make_settings, tmp_path, spark):
    settings = make_settings(landing={"local_parse_bytes": 0})
    files = [write(tmp_path, f"{i}.csv", "id,name,amount\n" + "".join(
        f"{i * 1000 + n},n{n % 7},{n}.5\n" for n in range(500)) + f"{i},ragged\n") for i in range(3)]
    result = load(settings, "spark_path", *files, spark=spark)
    assert (result.rows_in, result.loaded, result.quarantined) == (1503, 1500, 3)
    assert accounted(result, db, rows=3 * 501)
    assert db.scalar("SELECT count(DISTINCT id) FROM {s}.spark_path") == 1500
    assert db.columns("spark_path") == {"id": "integer", "name": "text", "amount": "numeric"}


def test_partitions_and_indexes(db, make_settings, tmp_path):
    settings = make_settings(datasets={"ev": {"mode": "upsert", "primary_key": ["id", "day"], "partition_by": "day",
                                              "indexes": [["kind"], "day"]}})
    load(settings, "ev", write(tmp_path, "a.csv", "id,day,kind\n1,2024-01-05,a\n2,2024-02-10,b\n3,2024-02-11,a\n"))
    load(settings, "ev", write(tmp_path, "b.csv", "id,day,kind\n1,2024-01-05,z\n4,2024-03-01,c\n"))
    partitions = {r[0] for r in db.query(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        (f"{db.schema}.ev",))}
    assert partitions == {"ev_default", "ev_p202401", "ev_p202402", "ev_p202403"}
    assert db.query("SELECT id, kind FROM {s}.ev ORDER BY id") == [(1, "z"), (2, "b"), (3, "a"), (4, "c")]
    indexes = {r[0] for r in db.query("SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'ev'",
                                      (db.schema,))}
    assert {"ev_kind_idx", "ev_day_idx"} <= indexes


def test_hints_override_inference(db, make_settings, tmp_path):
    settings = make_settings(datasets={"h": {"columns": {"code": "text", "qty": "bigint"}}})
    result = load(settings, "h", write(tmp_path, "a.csv", "code,qty\n1,5\n2,x\n"))
    assert db.columns("h") == {"code": "text", "qty": "bigint"}
    assert result.quarantined == 1
    assert "not a valid bigint" in db.scalar("SELECT reason FROM {c}.quarantine")


def test_a_large_file_parsed_in_parts_matches_one_pass(db, make_settings, tmp_path, spark):
    """Parts are cut at record boundaries: quoted line breaks, line numbers and errors come out the same."""
    rows = []
    for n in range(40000):
        if n == 30000:
            rows.append(f'{n},"opens a quote that never closes,1\n')
        elif n % 997 == 0:
            rows.append(f"{n},ragged\n")
        else:
            rows.append(f'{n},"note {n}, with ""quotes""\nand a second line",{n % 13}\n')
    path = write(tmp_path, "big.csv", "id,note,qty\n" + "".join(rows))
    assert path.stat().st_size > 2 << 20
    split = make_settings(landing={"local_parse_bytes": 0, "split_bytes": 1 << 20})
    parts = load(split, "split", path, spark=spark)
    whole = load(make_settings(), "whole", path)
    assert parts.files[0]["parts"] == spark.sparkContext.defaultParallelism > 1
    assert (parts.rows_in, parts.loaded, parts.quarantined) == (whole.rows_in, whole.loaded, whole.quarantined)
    assert accounted(parts, db) and accounted(whole, db)
    assert db.query("SELECT id, note, qty FROM {s}.split EXCEPT SELECT id, note, qty FROM {s}.whole") == []
    assert db.scalar("SELECT note FROM {s}.split WHERE id = 39999") == 'note 39999, with "quotes"\nand a second line'
    lines = "SELECT line, reason FROM {c}.quarantine WHERE dataset = %s ORDER BY line"
    assert db.query(lines, ("split",)) == db.query(lines, ("whole",))


def test_a_cut_inside_a_quoted_field_is_detected_and_the_file_reparsed(db, make_settings, tmp_path, spark):
    # An opening quote that never closes flips quote parity for the rest of the file, so the planned cut
    # lands inside a quoted field; the part before it reports that and the file is parsed whole.
    rows = ['0,"opens and never closes,1\n'] + [f'{n},"multi\nline {n}",{n}\n' for n in range(1, 40000)]
    path = write(tmp_path, "tricky.csv", "id,note,qty\n" + "".join(rows))
    split = make_settings(landing={"local_parse_bytes": 0, "split_bytes": 1 << 20})
    parts = load(split, "split", path, spark=spark)
    whole = load(make_settings(), "whole", path)
    assert parts.files[0]["parts"] == 1  # planned in parts, then parsed in one piece
    assert (parts.rows_in, parts.loaded, parts.quarantined) == (whole.rows_in, whole.loaded, whole.quarantined)
    assert db.query("SELECT * FROM {s}.split EXCEPT SELECT * FROM {s}.whole") == []
    assert whole.loaded > 39000


def test_cuts_fall_on_record_boundaries(tmp_path):
    from connectors.csvfile import plan_parts
    from streaming.config import DatasetConfig

    options = DatasetConfig().model_dump()
    clean = write(tmp_path, "clean.csv", "a,b\n" + '1,"x ""y""\nz"\n' * 100000)
    plan = plan_parts(str(clean), "clean.csv", options, 2)
    assert plan is not None and len(plan.ranges) == 2
    start, _, first_line = plan.ranges[1]
    data = clean.read_bytes()
    assert data[:start].count(b"\n") + 1 == first_line and first_line % 2 == 0  # a record starts there


@pytest.mark.parametrize("case", ["stray quote", "cp1252 past the first bytes", "NUL past the first bytes"])
def test_a_split_file_its_parts_cannot_read_parses_as_one_piece(db, make_settings, tmp_path, spark, case):
    """Planning reads only the first bytes and the counts up to the cuts; a part that finds a stray
    quote (which breaks the quote counts), bytes of another encoding or a NUL sends the file back to
    be read as a whole, with the result of a file never split."""
    rows = "".join(f'{n},"note {n}, with a comma",padding padding padding\n' for n in range(40000))
    tail = {"stray quote": '40000,ab"c,x\n41000,"a\nb",y\n', "cp1252 past the first bytes": "40000,Caf\xe9,x\n",
            "NUL past the first bytes": "40000,a\x00b,x\n"}[case]
    body = ("id,note,pad\n" + rows + tail + rows.replace(",padding", ",more")).encode("latin-1")
    path = tmp_path / "big.csv"
    path.write_bytes(body)
    split = make_settings(landing={"local_parse_bytes": 0, "split_bytes": 1 << 20})
    parts = load(split, "split", path, spark=spark)
    whole = load(make_settings(), "whole", path)
    assert parts.files[0]["status"] == whole.files[0]["status"]
    if case == "NUL past the first bytes":
        assert parts.files[0]["reason"] == whole.files[0]["reason"] == "binary"
        assert parts.files[0]["detail"] == whole.files[0]["detail"]
        return
    assert parts.files[0]["parts"] == 1  # planned in parts, then parsed in one piece
    assert parts.files[0]["encoding"] == whole.files[0]["encoding"]
    assert (parts.rows_in, parts.loaded, parts.quarantined) == (whole.rows_in, whole.loaded, whole.quarantined)
    assert parts.rows_in == body.count(b"\n") - 1 - (1 if case == "stray quote" else 0)
    assert db.query("SELECT * FROM {s}.split EXCEPT ALL SELECT * FROM {s}.whole") == []
    assert db.scalar("SELECT count(*) FROM {s}.split") == whole.loaded


def test_a_split_file_is_rejected_whole_when_one_part_does_not_match(db, make_settings, tmp_path, spark):
    settings = make_settings(landing={"local_parse_bytes": 0, "split_bytes": 1 << 20},
                             datasets={"strict": {"on_schema_change": "fail"}})
    load(settings, "strict", write(tmp_path, "first.csv", "id,x\n1,1\n"))
    rows = "".join(f"{n},{n % 1000},padding padding padding padding\n" for n in range(60000))
    big = write(tmp_path, "big.csv", "id,x,note\n" + rows + "60000,5000000000,too big for integer\n")
    assert load(settings, "strict", big).files[0]["status"] == "rejected"  # new column: header diff
    big = write(tmp_path, "big2.csv", "id,x\n" + "".join(f"{n},{n % 1000}\n" for n in range(300000))
                + "300000,5000000000\n")
    result = load(settings, "strict", big, spark=spark)
    assert result.files[0]["status"] == "rejected"
    assert result.files[0]["diff"] == {"changed_types": {"x": {"table": "integer", "file": "bigint"}}}
    assert result.loaded == 0 and db.scalar("SELECT count(*) FROM {s}.strict") == 1
    assert db.scalar("SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'stg%%'", (db.catalog,)) == 0


def test_data_postgres_refuses_rejects_the_batch_instead_of_blocking_the_dataset(db, make_settings, tmp_path):
    settings = make_settings()
    load(settings, "checked", write(tmp_path, "a.csv", "id,qty\n1,5\n"))
    db.query('ALTER TABLE "{s}".checked ADD CONSTRAINT qty_positive CHECK (qty > 0)')
    refused = load(settings, "checked", write(tmp_path, "b.csv", "id,qty\n2,-1\n"))
    assert refused.files[0]["status"] == "rejected" and refused.files[0]["reason"] == "load_failed"
    assert "qty_positive" in refused.files[0]["detail"]
    accepted = load(settings, "checked", write(tmp_path, "c.csv", "id,qty\n3,7\n"))
    assert accepted.loaded == 1
    assert db.query("SELECT id FROM {s}.checked ORDER BY id") == [(1,), (3,)]


def test_append_with_a_primary_key_skips_existing_keys_as_duplicates(db, make_settings, tmp_path):
    settings = make_settings(datasets={"events": {"primary_key": ["id"]}})
    load(settings, "events", write(tmp_path, "a.csv", "id,v\n1,a\n2,b\n"))
    result = load(settings, "events", write(tmp_path, "b.csv", "id,v\n2,changed\n3,c\n"))
    assert (result.loaded, result.duplicates) == (1, 1) and accounted(result, db, rows=2)
    assert db.query("SELECT id, v FROM {s}.events ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]


def test_a_nul_byte_anywhere_rejects_the_file(db, make_settings, tmp_path):
    path = tmp_path / "late_nul.csv"
    path.write_bytes(b"id,v\n" + b"1,ok\n" * 20000 + b"2,bad\x00byte\n")
    result = load(make_settings(), "nul", path)
    assert result.files[0]["status"] == "rejected" and result.files[0]["reason"] == "binary"
    assert "offset" in result.files[0]["detail"]


def test_upsert_rewrites_only_rows_that_change(db, make_settings, tmp_path):
    """A re-sent file writes only its changed rows; a numeric of another scale is a change (it shows)."""
    from tests.test_catalog import assert_catalog_true

    settings = make_settings(datasets={"items": {"mode": "upsert", "primary_key": ["id"]}})
    first, second = tmp_path / "1.csv", tmp_path / "2.csv"
    rows = {i: (f"{i}.5", f"n{i}") for i in range(100)}
    first.write_text("id,price,note\n" + "".join(f"{i},{p},{n}\n" for i, (p, n) in rows.items()))
    rows[7] = ("7.50", "n7")
    rows[8] = ("8.5", "changed")
    rows[100] = ("100.5", "n100")
    second.write_text("id,price,note\n" + "".join(f"{i},{p},{n}\n" for i, (p, n) in rows.items()))
    load(settings, "items", first, batch_id=0)
    # The table the first load creates has its primary key (built after its rows went in).
    assert db.query("SELECT a.attname FROM pg_constraint k JOIN pg_attribute a ON a.attrelid = k.conrelid "
                    "AND a.attnum = ANY(k.conkey) WHERE k.contype = 'p' AND k.conrelid = %s::regclass",
                    (f'{db.schema}."items"',)) == [("id",)]
    result = load(settings, "items", second, batch_id=1)
    assert (result.rows_in, result.loaded, result.duplicates) == (101, 101, 0)
    table = {i: (p, n) for i, p, n in db.query('SELECT id, price::text, note FROM {s}."items"')}
    assert table == rows
    # Rows the second load wrote carry its transaction id: the two changed rows and the new one.
    written = db.query('SELECT id FROM {s}."items" WHERE xmin = (SELECT xmin FROM {s}."items" WHERE id = 100) '
                       'ORDER BY id')
    assert [i for (i,) in written] == [7, 8, 100]
    doc = assert_catalog_true(db, settings, "items")
    assert doc["row_count"] == 101
