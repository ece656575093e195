"""The landing watcher: completeness, inbox naming, archive and reject (no Spark involved)."""

from __future__ import annotations

import json
import os
import time

from connectors.landing import Landing
from connectors.files import LandedFile
from tests.conftest import poll


def make(tmp_path, found=None):
    found = [] if found is None else found
    landing = Landing(tmp_path / "landing", settle_seconds=0.3, scan_interval=0.5, on_dataset=found.append)
    landing.start()
    return landing, found


def inbox_files(landing, dataset):
    inbox = landing.inbox(dataset)
    return sorted(p for p in inbox.iterdir() if not p.name.startswith("_")) if inbox.is_dir() else []


def test_a_file_being_written_is_not_admitted_until_complete(tmp_path):
    landing, found = make(tmp_path)
    try:
        (landing.root / "orders").mkdir()
        poll(lambda: "orders" in found, 5, message="dataset discovery")
        path = landing.root / "orders" / "slow.csv"
        with open(path, "w") as f:
            f.write("id,name\n")
            for i in range(8):  # a slow writer: longer in total than the settle time, file kept open
                f.write(f"{i},row{i}\n")
                f.flush()
                time.sleep(0.15)
                assert inbox_files(landing, "orders") == []
        moved = poll(lambda: inbox_files(landing, "orders"), 5, message="file admitted")
        assert len(moved) == 1 and moved[0].read_text().count("\n") == 9
        assert Landing.original_name(str(moved[0])) == "slow.csv"
    finally:
        landing.stop()


def test_files_present_before_start_and_odd_names(tmp_path):
    (tmp_path / "landing" / "sales").mkdir(parents=True)
    odd = tmp_path / "landing" / "sales" / "Q1 report: [final].csv"
    odd.write_text("a\n1\n")
    old = time.time() - 60
    os.utime(odd, (old, old))
    (tmp_path / "landing" / "sales" / ".hidden.csv").write_text("a\n1\n")
    (tmp_path / "landing" / "sales" / "download.csv.part").write_text("a\n1\n")
    landing, found = make(tmp_path)
    try:
        assert "sales" in found
        moved = poll(lambda: inbox_files(landing, "sales"), 5, message="file admitted")
        assert [Landing.original_name(str(p)) for p in moved] == ["Q1 report: [final].csv"]
        assert " " not in moved[0].name and ":" not in moved[0].name
        time.sleep(0.5)
        assert len(inbox_files(landing, "sales")) == 1  # hidden and partial downloads wait
    finally:
        landing.stop()


def test_archive_and_reject(tmp_path):
    landing, _ = make(tmp_path)
    try:
        for name in ("a.csv", "b.csv", "a.csv"):
            inbox = landing.inbox("ds")
            inbox.mkdir(parents=True, exist_ok=True)
            path = inbox / f"000_{name}"
            path.write_text("x\n1\n")
            landing.archive("ds", LandedFile(str(path), name))
        assert sorted(p.name for p in landing.processed("ds").iterdir()) == ["a.1.csv", "a.csv", "b.csv"]
        bad = landing.inbox("ds") / "001_bad.csv"
        bad.write_bytes(b"\x00\x01")
        landing.reject("ds", LandedFile(str(bad), "bad.csv"), "binary", "bad.csv: binary content", load_id=7)
        sidecar = json.loads((landing.rejected("ds") / "bad.csv.error.json").read_text())
        assert sidecar["reason"] == "binary" and sidecar["file"] == "bad.csv" and sidecar["load_id"] == 7
        assert landing.archive("ds", LandedFile(str(bad), "bad.csv")) is None  # already moved: idempotent
    finally:
        landing.stop()


def test_non_csv_files_are_rejected_on_arrival(tmp_path):
    landing, _ = make(tmp_path)
    try:
        (landing.root / "docs").mkdir()
        (landing.root / "docs" / "photo.jpg").write_bytes(b"\xff\xd8\xff")
        sidecar = landing.rejected("docs") / "photo.jpg.error.json"
        poll(sidecar.exists, 5, message="rejection sidecar")
        assert json.loads(sidecar.read_text())["reason"] == "extension"
    finally:
        landing.stop()


def test_admitted_files_carry_their_arrival_time(tmp_path):
    landing, _ = make(tmp_path)
    try:
        (landing.root / "old").mkdir()
        path = landing.root / "old" / "archive.csv"
        path.write_text("a\n1\n")
        os.utime(path, (1_000_000_000, 1_000_000_000))  # 2001: Spark would skip it as too old
        moved = poll(lambda: inbox_files(landing, "old"), 5, message="file admitted")
        assert moved[0].stat().st_mtime > time.time() - 60
    finally:
        landing.stop()


def test_an_empty_file_held_open_by_a_slow_writer_is_not_rejected(tmp_path):
    landing, _ = make(tmp_path)
    try:
        (landing.root / "exports").mkdir()
        path = landing.root / "exports" / "export.csv"
        with open(path, "w") as f:
            time.sleep(1.0)  # well past the settle time, still empty
            assert not landing.rejected("exports").exists() or not any(landing.rejected("exports").iterdir())
            f.write("id\n1\n")
        moved = poll(lambda: inbox_files(landing, "exports"), 5, message="file admitted")
        assert moved[0].read_text() == "id\n1\n"
    finally:
        landing.stop()
