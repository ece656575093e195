"""The daemon keeps every dataset moving: what PostgreSQL refuses is rejected or quarantined within
one batch, and a batch that waits out a failure that heals shows as not ready while it waits."""

from __future__ import annotations

import json
import secrets

from tests.conftest import poll
from tests.test_daemon import count, drop

FIRST = {
    "checked": "id,amount\n1,5\n",
    "indexed": "id,note\n1,short\n",
    "triggered": "id,code\n1,fine\n",
    "hinted": "id,qty\n1,3\n",
    "unique_by_hand": "id,v\n1,a\n",
    "long_names": ("id," + "a" * 100 + "_x," + "a" * 100 + "_y\n1,2,3\n"),
}
BAD = {
    "checked": "id,amount\n2,-1\n3,4\n",  # a CHECK constraint added by hand
    "indexed": f"id,note\n2,{secrets.token_hex(10_000)}\n",  # an index row over btree's 2704-byte limit
    "triggered": "id,code\n2,forbidden\n",  # a trigger that raises
    "hinted": "id,qty\n2,70000\n3,4\n",  # out of range for the configured smallint
    "unique_by_hand": "id,v\n1,b\n",  # a unique index added by hand
    "long_names": ("id," + "a" * 100 + "_x," + "a" * 100 + "_y," + "a" * 100 + "_z\n2,3,4,5\n"),  # names > 63 bytes
}
GOOD = {name: text.splitlines()[0] + "\n" + ",".join(["9"] + ["7"] * (text.splitlines()[0].count(","))) + "\n"
        for name, text in FIRST.items()}


def rejected(settings, dataset: str, name: str) -> dict | None:
    sidecar = settings.landing.path / "_rejected" / dataset / f"{name}.error.json"
    return json.loads(sidecar.read_text()) if sidecar.exists() else None


def test_inputs_postgres_refuses_do_not_stall_their_datasets(db, make_settings, run_daemon):
    settings = make_settings(datasets={"indexed": {"indexes": [["note"]]}, "hinted": {"columns": {"qty": "smallint"}}})
    daemon = run_daemon(settings)
    for name, text in FIRST.items():
        drop(settings, name, "first.csv", text)
    poll(lambda: all(count(db, name) == 1 for name in FIRST), 90, message="every first file loaded")
    db.query("ALTER TABLE {s}.checked ADD CONSTRAINT positive CHECK (amount > 0)")
    db.query("CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS "
             "$$ BEGIN RAISE EXCEPTION 'code % is not allowed', NEW.code; END $$")
    db.query("CREATE TRIGGER refuse BEFORE INSERT ON {s}.triggered FOR EACH ROW WHEN (NEW.code = 'forbidden') "
             "EXECUTE FUNCTION {s}.refuse()")
    db.query("CREATE UNIQUE INDEX ON {s}.unique_by_hand (id)")

    for name, text in BAD.items():
        drop(settings, name, "bad.csv", text)
    expected = {"checked": "violates check constraint", "indexed": "index row", "triggered": "code forbidden is not allowed",
                "unique_by_hand": "duplicate key value"}
    for name, says in expected.items():
        error = poll(lambda: rejected(settings, name, "bad.csv"), 60, message=f"{name}: bad.csv rejected")
        assert error["reason"] == "load_failed" and says in error["error"], error
    assert count(db, "checked") == 1 and count(db, "unique_by_hand") == 1 and count(db, "triggered") == 1
    # The value out of range is quarantined with its column; its file's other row loads.
    poll(lambda: count(db, "hinted") == 2, 60, message="hinted: the row in range loaded")
    assert db.query("SELECT column_name, raw_value FROM {c}.quarantine WHERE dataset = 'hinted'") == [("qty", "70000")]
    poll(lambda: count(db, "long_names") == 2, 60, message="long names loaded")
    assert len(db.columns("long_names")) == 4 and all(len(c) <= 63 for c in db.columns("long_names"))

    for name, text in GOOD.items():
        drop(settings, name, "good.csv", text)
    poll(lambda: all(db.scalar(f'SELECT count(*) FROM {{s}}."{name}" WHERE id = 9') == 1 for name in GOOD), 90,
         message="every dataset's next file loaded")
    registry = daemon.metrics.registry
    for name in FIRST:
        assert not registry.get_sample_value("dataops_query_restarts_total", {"dataset": name}), name
        assert registry.get_sample_value("dataops_query_up", {"dataset": name}) == 1, name
    ready, body = daemon.readiness()
    assert ready, body


def test_a_batch_that_waits_out_a_failure_shows_as_not_ready_then_loads(db, make_settings, run_daemon):
    role = f"r_{db.schema}"
    db.query(f'CREATE ROLE "{role}" LOGIN')
    db.query(f'GRANT CREATE ON DATABASE "{db.conn.info.dbname}" TO "{role}"')
    try:
        settings = make_settings(postgres={"dsn": f"postgresql://{role}@127.0.0.1:{db.conn.info.port}/"
                                                  f"{db.conn.info.dbname}"})
        daemon = run_daemon(settings)
        daemon.retrying_not_ready_seconds = 1.0
        drop(settings, "orders", "a.csv", "id\n1\n2\n")
        poll(lambda: count(db, "orders") == 2, 90, message="first file loaded")
        poll(lambda: daemon.readiness()[0], 30, message="ready")
        # The role may open no more sessions: PostgreSQL answers "too many connections" (it heals).
        db.query(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
        drop(settings, "orders", "b.csv", "id\n3\n")
        registry = daemon.metrics.registry
        poll(lambda: registry.get_sample_value("dataops_batch_retrying", {"dataset": "orders"}) == 1, 60,
             message="the batch retrying")
        state = poll(lambda: daemon.readiness()[1]["queries"]["orders"].startswith("retrying") and
                     daemon.readiness()[1]["queries"]["orders"], 30, message="retrying shown in readiness")
        assert "too many connections" in state
        assert not daemon.readiness()[0]
        db.query(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        poll(lambda: count(db, "orders") == 3, 60, message="the batch loaded once PostgreSQL let us in")
        # The rows are visible once the merge commits, a moment before the retry loop returns.
        poll(lambda: registry.get_sample_value("dataops_batch_retrying", {"dataset": "orders"}) == 0, 30,
             message="the batch no longer retrying")
        assert not (settings.landing.path / "_rejected" / "orders").exists() or \
            not list((settings.landing.path / "_rejected" / "orders").iterdir())
        poll(lambda: daemon.readiness()[0], 30, message="ready again")
        run_daemon.stop(daemon)
    finally:
        db.query(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
        db.query(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
