"""Persistent contracts of the built-in sources: ledger stream ids and checkpoint folders.

A running deployment upgrades without reloading or skipping anything only if these stay exactly as
they were: ``landing:<table>:<query id>`` in ``<checkpoint_dir>/landing/<table>`` and
``endpoint:<table>:<query id>`` in ``<checkpoint_dir>/endpoints/<table>``.
"""

from __future__ import annotations

import json
import uuid

from connectors.landing.folders import LandingSource
from connectors.objectstore.stores import ObjectStoreSource
from connectors.rest.endpoints import EndpointSource
from streaming.sources import registry, stream_id
from tests.conftest import poll
from tests.restserver import json_response, rest_server_fixture  # noqa: F401


def test_built_in_sources_keep_their_ids_and_folders():
    assert {name: cls for name, cls in registry().items() if name != "numbers"} == {
        "landing": LandingSource, "endpoints": EndpointSource, "object_stores": ObjectStoreSource}
    assert stream_id(LandingSource, "orders", "q-1") == "landing:orders:q-1"
    assert stream_id(EndpointSource, "orders", "q-1") == "endpoint:orders:q-1"
    assert (LandingSource.checkpoint_folder, EndpointSource.checkpoint_folder) == ("landing", "endpoints")


def test_checkpoints_of_the_old_layout_are_adopted_with_their_query_ids(db, make_settings, run_daemon, rest_server,
                                                                        tmp_path):
    """Checkpoint folders written before sources were pluggable keep their query ids, so the ledger's
    stream ids, and with them exactly-once, carry over."""
    rest_server.route("/items", lambda request: json_response({"data": [{"id": 1}, {"id": 2}]}))
    settings = make_settings(endpoints=[{"name": "items", "url": rest_server.url("/items"), "records_path": "data",
                                         "poll_interval": "300ms", "mode": "upsert", "primary_key": ["id"]}])
    checkpoints = tmp_path / "checkpoints"
    ids = {}
    for folder, table in (("landing", "orders"), ("endpoints", "items")):
        ids[table] = str(uuid.uuid4())
        (checkpoints / folder / table).mkdir(parents=True)
        # What Spark wrote in a query's checkpoint when it first started (the old daemon's layout).
        (checkpoints / folder / table / "metadata").write_text(json.dumps({"id": ids[table]}) + "\n")
    (tmp_path / "landing" / "orders").mkdir(parents=True)
    (tmp_path / "landing" / "orders" / "o.csv").write_text("order_id,amount\n1,2.5\n2,3.5\n")
    run_daemon(settings)
    def loaded() -> int:
        if db.scalar("SELECT to_regclass(%s)", (f"{db.catalog}.loads",)) is None:
            return 0
        return db.scalar("SELECT count(DISTINCT dataset) FROM {c}.loads WHERE status = 'committed'")

    poll(lambda: loaded() == 2, 90, message="both datasets loaded")
    streams = dict(db.query("SELECT DISTINCT dataset, stream FROM {c}.loads WHERE status = 'committed'"))
    assert streams == {"orders": f"landing:orders:{ids['orders']}", "items": f"endpoint:items:{ids['items']}"}
    assert sorted(p.name for p in checkpoints.iterdir() if not p.name.startswith("_")) == ["endpoints", "landing"]
