"""What PostgreSQL refuses ends the batch with a reason; only failures that heal are retried."""

from __future__ import annotations

import psycopg2
import psycopg2.errors
import pytest

from connectors.postgres import classify_error, is_transient
from streaming.errors import BatchDataError, TransientSinkError
from tests.helpers import accounted, load


def pg_error(db, statement: str) -> psycopg2.Error:
    """The error PostgreSQL itself raises for ``statement``."""
    conn = psycopg2.connect(db.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    except psycopg2.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{statement} did not fail")


@pytest.mark.parametrize("statement, code", [
    ("SELECT " + ", ".join(["1"] * 1700), "54011"),  # program limit: target lists of at most 1664 entries
    ("SELECT 1/0", "22012"),
    ("SELECT 'x'::integer", "22P02"),
    ("SELECT * FROM no_such_table_anywhere", "42P01"),
    ("SELEC 1", "42601"),
    ("DO $$ BEGIN RAISE EXCEPTION 'refused by a trigger'; END $$", "P0001"),
])
def test_refusals_are_permanent(db, statement, code):
    exc = pg_error(db, statement)
    assert exc.pgcode == code
    assert not is_transient(exc)
    classified = classify_error(exc, "dataset d: loading batch 1")
    assert isinstance(classified, BatchDataError) and code in str(classified)


def test_failures_that_heal_are_transient(db):
    cancelled = pg_error(db, "SET statement_timeout = '10ms'; SELECT pg_sleep(1)")
    assert cancelled.pgcode == "57014" and is_transient(cancelled)
    # The server ends the session: an administrator command (57P01), or a connection closed under us.
    victim = psycopg2.connect(db.dsn)
    victim.autocommit = True
    db.query("SELECT pg_terminate_backend(%s)", (victim.get_backend_pid(),))
    with pytest.raises(psycopg2.OperationalError) as terminated:
        victim.cursor().execute("SELECT 1")
    assert terminated.value.pgcode in (None, "57P01") and is_transient(terminated.value)
    with pytest.raises(psycopg2.InterfaceError) as closed:
        victim.cursor().execute("SELECT 1")
    assert is_transient(closed.value)
    with pytest.raises(psycopg2.OperationalError) as refused:
        psycopg2.connect("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
    assert refused.value.pgcode is None and is_transient(refused.value)
    assert isinstance(classify_error(refused.value, "x"), TransientSinkError)
    # Too many connections (53300), here for a role limited to none.
    role = f"r_{db.schema}"
    db.query(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    try:
        with pytest.raises(psycopg2.OperationalError) as crowded:
            psycopg2.connect(db.dsn, user=role)
        assert "too many connections" in str(crowded.value) and is_transient(crowded.value)
    finally:
        db.query(f'DROP ROLE "{role}"')


def wide_csv(path, columns: int, rows: int):
    header = ",".join(f"c{i}" for i in range(columns))
    path.write_text(header + "\n" + "".join(",".join(str(r * columns + i) for i in range(columns)) + "\n"
                                            for r in range(rows)))
    return path


def test_a_500_column_file_loads_and_a_wider_one_is_rejected(db, make_settings, tmp_path):
    settings = make_settings()
    result = load(settings, "wide", wide_csv(tmp_path / "w.csv", 500, 100))
    assert accounted(result, db, rows=100) and result.loaded == 100
    assert len(db.columns("wide")) == 500
    assert db.scalar("SELECT count(*) FROM {s}.wide") == 100
    assert db.scalar("SELECT sum(c499) FROM {s}.wide") == sum(r * 500 + 499 for r in range(100))
    # The catalog has every column's statistics.
    assert db.scalar("SELECT count(*) FROM {c}.columns WHERE dataset = 'wide' AND non_null_count = 100") == 500
    assert db.scalar("SELECT max_value FROM {c}.columns WHERE dataset = 'wide' AND name = 'c499'") == \
        str(99 * 500 + 499)

    too_wide = load(settings, "wider", wide_csv(tmp_path / "x.csv", 1601, 2))
    (entry,) = too_wide.files
    assert entry["status"] == "rejected" and entry["reason"] == "too_wide"
    assert "1601 columns" in entry["detail"] and "1600" in entry["detail"]
    assert db.scalar("SELECT to_regclass(%s)", (f"{db.schema}.wider",)) is None


def test_widening_past_1600_columns_is_rejected_with_postgres_reason(db, make_settings, tmp_path):
    settings = make_settings()
    load(settings, "grows", wide_csv(tmp_path / "a.csv", 1000, 2))
    path = tmp_path / "b.csv"
    path.write_text(",".join(f"d{i}" for i in range(700)) + "\n" + ",".join("1" for _ in range(700)) + "\n")
    result = load(settings, "grows", path)
    (entry,) = result.files
    assert entry["status"] == "rejected" and entry["reason"] == "load_failed"
    assert "54011" in entry["detail"] and "1600" in entry["detail"]
    assert len(db.columns("grows")) == 1000 and db.scalar("SELECT count(*) FROM {s}.grows") == 2
    # The dataset keeps moving.
    assert load(settings, "grows", wide_csv(tmp_path / "c.csv", 1000, 3)).loaded == 3
    assert db.scalar("SELECT count(*) FROM {s}.grows") == 5


def test_a_partition_key_that_cannot_widen_quarantines_the_value(db, make_settings, tmp_path):
    settings = make_settings(datasets={"events": {"partition_by": "event_date"}})
    first = tmp_path / "1.csv"
    first.write_text("event_date,n\n2024-01-05,1\n2024-02-07,2\n")
    load(settings, "events", first)
    second = tmp_path / "2.csv"
    second.write_text("event_date,n\n2024-03-01 10:00:00,3\n2024-03-02,4\n")
    result = load(settings, "events", second)
    assert accounted(result, db, rows=2) and (result.loaded, result.quarantined) == (1, 1)
    assert db.columns("events")["event_date"] == "date"
    (reason,) = db.query("SELECT raw_value, reason FROM {c}.quarantine WHERE dataset = 'events'")
    assert reason[0] == "2024-03-01 10:00:00" and "partition key" in reason[1]
    third = tmp_path / "3.csv"
    third.write_text("event_date,n\n2024-04-01,5\n")
    assert load(settings, "events", third).loaded == 1
    assert db.query("SELECT n FROM {s}.events ORDER BY n") == [(1,), (2,), (4,), (5,)]


def test_a_partition_key_that_is_not_a_date_rejects_the_file(db, make_settings, tmp_path):
    settings = make_settings(datasets={"events": {"partition_by": "event_date"}})
    bad = tmp_path / "bad.csv"
    bad.write_text("event_date,n\nsoon,1\n")
    (entry,) = load(settings, "events", bad).files
    assert entry["status"] == "rejected" and "not a date or timestamp" in entry["detail"]
    good = tmp_path / "good.csv"
    good.write_text("event_date,n\n2024-01-05,1\n")
    assert load(settings, "events", good).loaded == 1
