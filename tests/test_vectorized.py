"""The vectorized CSV path against the exact reader: the same rows staged, the same quarantine, row for row.

Each file is staged twice into real PostgreSQL staging tables, once by the vectorized reader and once
by the exact one, and the two staging tables, the two quarantine tables and the two reports must be
equal. Small blocks make every file cross block boundaries. Each case also says which path must have
done the work, so that a vectorized reader that silently hands everything to the exact one fails.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from connectors import csvfast, csvfile
from streaming import schema, vectorized
from streaming.config import CsvOptions
from streaming.rowstage import StageTask
from tests.helpers import load

CORPUS = Path(__file__).parent / "corpus"
OPTIONS = CsvOptions().model_dump()


def test_type_patterns_accept_exactly_what_the_typer_patterns_accept():
    rng = random.Random(5)
    values = ["1.5", "+1", "007", "-0", "1e5", "1.e5", ".5", "1234567890123456", "123456789012345.6",
              "1234567890123456.7", "1.23456789012345e10", "12345678901234567e1", "2024-02-29", "0000-01-01",
              "2024-13-01", "2024-04-31", "2024-01-31 10:00", "2024-01-31T10:00:00.123456", "2024-01-31T10:00:00Z",
              "2024-01-31T10:00:00+15:59", "2024-01-31 24:00", "1e100", ".", "+.5e-3", "9" * 9, "1" + "0" * 9,
              "9" * 18, "1" + "0" * 18, "٣", "1٣"]
    alphabet = "0123456789.eE+-: TZ"
    values += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 22))) for _ in range(30000)]
    array = pa.array(values)
    for kind, pattern in schema.RE2_VALUE.items():
        vector = pc.match_substring_regex(array, f"^(?:{pattern})$").to_pylist()
        exact = [bool(schema._ONE[kind].fullmatch(v)) for v in values]
        wrong = [v for v, a, b in zip(values, vector, exact) if a != b]
        # RE2's \d is ASCII; Python's also takes other scripts' digits, which the typer then checks one by one.
        assert all(any(not c.isascii() for c in v) for v in wrong), (kind, wrong[:5])


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def generated(rows: int, seed: int, newline: str = "\n") -> str:
    """A messy CSV: padding, null tokens, quoted delimiters, doubled quotes, line breaks in values,
    leading zeros, mixed numbers, dates, timestamps, booleans and non-ASCII text."""
    rng = random.Random(seed)
    notes = ["", "fragile", "call before\ndelivery", 'said "leave it"', "a, b, c", "crlf\r\ninside", "Zoë"]
    out = ["id,customer,amount,qty,when,day,flag,zip,note"]
    for i in range(rows):
        amount = rng.choice(["", "NULL", f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}", str(rng.randint(0, 9))])
        note = rng.choice(notes)
        out.append(",".join([
            str(i), '"' + rng.choice(["Smith, J", 'The "Best"', "plain", "Ünï"]).replace('"', '""') + '"', amount,
            rng.choice([f" {rng.randint(1, 50)} ", str(rng.randint(1, 50)), "NA"]),
            f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} 1{rng.randint(0, 9)}:00:00",
            rng.choice([f"2024-0{rng.randint(1, 9)}-2{rng.randint(0, 8)}", ""]),
            rng.choice(["true", "FALSE", "yes", ""]), f"{rng.randint(0, 99999):05d}",
            '"' + note.replace('"', '""') + '"' if rng.random() < 0.9 else note.replace("\n", " ").replace(",", ";")
                .replace('"', "").replace("\r", ""),
        ]))
    return newline.join(out) + newline


def _task(db, path: Path, suffix: str, **fields) -> StageTask:
    return StageTask(path=str(path), name=path.name, seq=0, dataset="vec", dsn=db.dsn, stage_schema=db.schema,
                     stage_table=f"stage_{suffix}", quarantine_table=f"quarantine_{suffix}",
                     options={**OPTIONS, **fields.pop("options", {})}, table_types=fields.pop("table_types", {}),
                     hints=fields.pop("hints", {}), primary_key=fields.pop("primary_key", ()), **fields)


def vectorized_reads(monkeypatch) -> list:
    """Small blocks, no size floor, and a list that gets an entry for each input the vectorized
    reader staged to its end."""
    monkeypatch.setattr(csvfast, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(csvfast, "MIN_BYTES", 0)
    finished = []
    original = csvfast.ArrowFile.copy_chunks

    def tracked(self):
        yield from original(self)
        finished.append(True)

    monkeypatch.setattr(csvfast.ArrowFile, "copy_chunks", tracked)
    return finished


def stage_both(db, monkeypatch, path: Path, **fields):
    """Stage ``path`` with the vectorized reader and with the exact one; return both reports and
    whether the vectorized reader staged the file to its end."""
    db.query("CREATE SCHEMA IF NOT EXISTS {s}")
    finished = vectorized_reads(monkeypatch)
    fast = csvfile.run_file_task(_task(db, path, "fast", **dict(fields)))
    with monkeypatch.context() as patch:
        patch.setattr(csvfile, "_vectorized", lambda task, encoding: None)
        exact = csvfile.run_file_task(_task(db, path, "exact", **dict(fields)))
    return fast, exact, bool(finished)


def assert_same(db, fast, exact, fast_table: str = "fast", exact_table: str = "exact") -> None:
    fields = ("status", "reason", "detail", "encoding", "delimiter", "columns", "staged_rows", "quarantined_rows")
    assert {f: getattr(fast, f) for f in fields} == {f: getattr(exact, f) for f in fields}
    if fast.status != "staged":
        return
    assert exact.staged_types is None
    # The vectorized reader stages typed columns; the exact one text, which the merge casts: compare
    # what the merge reads.
    true_tokens = "ARRAY[" + ", ".join(f"'{t.lower()}'" for t in OPTIONS["true_tokens"]) + "]"
    cast = ["_ord"] + [f"c{i}" if kind == "text" else
                       f"CASE WHEN c{i} IS NULL THEN NULL ELSE lower(c{i}) = ANY({true_tokens}) END" if kind == "boolean"
                       else f"c{i}::{kind}" for i, kind in enumerate(fast.staged_types or ["text"] * len(fast.columns))]
    selects = {"stage": (f"SELECT * FROM {{s}}.stage_{fast_table}",
                         f"SELECT {', '.join(cast)} FROM {{s}}.stage_{exact_table}")}
    if fast.quarantined_rows:
        selects["quarantine"] = (f"SELECT * FROM {{s}}.quarantine_{fast_table}",
                                 f"SELECT * FROM {{s}}.quarantine_{exact_table}")
    for table, (a, b) in selects.items():
        assert db.scalar(f"SELECT count(*) FROM ({a}) a") == db.scalar(f"SELECT count(*) FROM ({b}) b")
        assert db.scalar(f"SELECT count(*) FROM (({a} EXCEPT ALL {b}) UNION ALL ({b} EXCEPT ALL {a})) differ") == 0, table


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.iterdir()))
def test_corpus_file_stages_identically(db, monkeypatch, name):
    fast, exact, _ = stage_both(db, monkeypatch, CORPUS / name)
    assert_same(db, fast, exact)


HOSTILE = {
    # name: (how the clean text is spoiled, whether the vectorized reader can stage it to the end)
    "clean": (lambda t: t, True),
    "crlf": (lambda t: t.replace("\n", "\r\n").replace("\r\r\n", "\r\n"), True),
    "trailing blank lines": (lambda t: t + "\n\n\n", True),
    "no final line break": (lambda t: t.rstrip("\n"), True),
    "ragged row": (lambda t: t.replace("\n7,", "\n7,extra,", 1), False),
    "stray quote": (lambda t: t.replace("\n9,", '\n9x"y,', 1), False),
    "junk after a closing quote": (lambda t: t.replace('"plain"', '"plain"x', 1), False),
    "delimiter and junk after a closing quote": (lambda t: t.replace('"plain"', '"pl,"ain', 1), False),
    "space after a closing quote": (lambda t: t.replace('"plain"', '"plain" ', 1), False),
    "blank line": (lambda t: t.replace("\n12,", "\n\n12,", 1), False),
    "blank line after the header": (lambda t: t.replace("\n", "\n\n", 1), False),
    "unclosed quote at the end": (lambda t: t + '999,"never closed,1,2,2024-01-01 10:00:00,,true,00001,x\n', False),
    "bare CR in a value": (lambda t: t.replace("\n15,", "\n15\r5,", 1), False),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_generated_file_stages_identically(db, monkeypatch, tmp_path, case):
    spoil, vectorized_to_the_end = HOSTILE[case]
    path = _write(tmp_path / "messy.csv", spoil(generated(400, seed=len(case))))
    fast, exact, finished = stage_both(db, monkeypatch, path)
    assert fast.status == "staged"
    assert_same(db, fast, exact)
    assert finished is vectorized_to_the_end
    lines = path.read_bytes().count(b"\n") + (0 if path.read_bytes().endswith(b"\n") else 1)
    assert db.scalar("SELECT max(_ord) FROM {s}.stage_fast") <= lines


def test_existing_table_types_key_and_hints_quarantine_identically(db, monkeypatch, tmp_path):
    text = generated(300, seed=3).replace("\n40,", "\n40x,", 1).replace("\n41,", "\n,", 1)
    path = _write(tmp_path / "typed.csv", text)
    table = {"id": "integer", "customer": "text", "amount": "numeric", "qty": "smallint", "when": "timestamp",
             "day": "date", "flag": "boolean", "zip": "integer", "note": "text"}
    for policy in ("evolve", "fail"):
        fast, exact, finished = stage_both(db, monkeypatch, path, table_types=table, primary_key=("id",),
                                           policy=policy, hints={"qty": "smallint"}, fixed_columns=("day",))
        assert_same(db, fast, exact)
        assert finished
        assert fast.quarantined_rows > 2  # the two spoiled keys and the zip codes with leading zeros
        db.query("DROP TABLE {s}.stage_fast, {s}.stage_exact, {s}.quarantine_fast, {s}.quarantine_exact")


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp1252"])
def test_encodings_stage_identically(db, monkeypatch, tmp_path, encoding):
    path = _write(tmp_path / "enc.csv", generated(200, seed=9).replace("Zoë", "Zoë Café").replace("Ünï", "Ünï"),
                  encoding)
    fast, exact, finished = stage_both(db, monkeypatch, path)
    assert fast.encoding == encoding
    assert_same(db, fast, exact)
    assert finished


def test_parts_of_a_large_file_stage_identically(db, monkeypatch, tmp_path):
    path = _write(tmp_path / "big.csv", generated(3000, seed=11))
    finished = vectorized_reads(monkeypatch)
    plan = csvfile.plan_parts(str(path), path.name, OPTIONS, 3)
    assert plan is not None and len(plan.ranges) == 3
    db.query("CREATE SCHEMA IF NOT EXISTS {s}")
    totals, reports = {}, {}
    for mode in ("fast", "exact"):
        if mode == "exact":
            monkeypatch.setattr(csvfile, "_vectorized", lambda task, encoding: None)
        reports[mode] = [csvfile.run_file_task(dataclasses.replace(
            _task(db, path, f"{mode}{i}"), part=i, start=s, end=e, first_line=first, header=plan.header,
            encoding=plan.encoding, delimiter=plan.delimiter, last_part=i == 2))
            for i, (s, e, first) in enumerate(plan.ranges)]
        assert all(r.status == "staged" for r in reports[mode])
        totals[mode] = [(r.staged_rows, r.quarantined_rows, r.columns) for r in reports[mode]]
    assert totals["fast"] == totals["exact"]
    assert len(finished) == 3
    for i in range(3):
        assert_same(db, reports["fast"][i], reports["exact"][i], f"fast{i}", f"exact{i}")
    rows = sum(s for s, _, _ in totals["fast"]) + sum(q for _, q, _ in totals["fast"])
    assert rows == 3000


def test_a_load_through_the_vectorized_reader_equals_one_through_the_exact_reader(db, make_settings, tmp_path,
                                                                                   monkeypatch):
    path = _write(tmp_path / "orders.csv", generated(2000, seed=21))
    settings = make_settings(datasets={"keyed": {"mode": "upsert", "primary_key": ["id"]}})
    finished = vectorized_reads(monkeypatch)
    fast = load(settings, "plain", path)
    keyed_fast = load(settings, "keyed", path)
    assert len(finished) == 2
    with monkeypatch.context() as patch:
        patch.setattr(csvfile, "_vectorized", lambda task, encoding: None)
        exact = load(settings, "plain_exact", path)
    assert (fast.loaded, fast.quarantined, fast.duplicates) == (exact.loaded, exact.quarantined, exact.duplicates)
    assert keyed_fast.loaded == db.scalar("SELECT count(*) FROM {s}.keyed") == 2000
    assert db.columns("plain") == db.columns("plain_exact")
    assert db.scalar("SELECT count(*) FROM ((TABLE {s}.plain EXCEPT ALL TABLE {s}.plain_exact) UNION ALL "
                     "(TABLE {s}.plain_exact EXCEPT ALL TABLE {s}.plain)) d") == 0
    stats = ("SELECT name, type, null_count, distinct_count, min_value, max_value, value_sum, top_values::text "
             "FROM {c}.columns WHERE dataset = %s ORDER BY name")
    assert db.query(stats, ("plain",)) == db.query(stats, ("plain_exact",))


def test_a_column_typed_in_one_file_and_text_in_another_keeps_every_raw_value(db, make_settings, tmp_path,
                                                                            monkeypatch):
    finished = vectorized_reads(monkeypatch)
    raw = ["+5", "-0", "7", "12", "+0"]
    first = _write(tmp_path / "a.csv", "id,code,at\n" + "".join(
        f"{i},{raw[i % len(raw)]},2024-01-0{1 + i % 9}T10:00\n" for i in range(500)))
    second = _write(tmp_path / "b.csv", "id,code,at\n900,abc,later\n")
    result = load(make_settings(), "mixed", first, second)
    assert finished and result.loaded == 501
    assert db.columns("mixed")["code"] == "text" and db.columns("mixed")["at"] == "text"
    codes = db.query("SELECT code, at FROM {s}.mixed WHERE id < 900 ORDER BY id")
    assert codes == [(raw[i % len(raw)], f"2024-01-0{1 + i % 9}T10:00") for i in range(500)]


def test_ascending_span_of_integers_that_strictly_increase():
    assert vectorized.ascending_span(pa.array(["-3", "0", "7", "18"])) == (-3, 18)
    assert vectorized.ascending_span(pa.array(["5"])) == (5, 5)
    assert vectorized.ascending_span(pa.array(["1", "1"])) is None  # a step that does not go up
    assert vectorized.ascending_span(pa.array(["2", "1"])) is None
    assert vectorized.ascending_span(pa.array(["1", None])) is None
    assert vectorized.ascending_span(pa.array(["1", "x"])) is None
    assert vectorized.ascending_span(pa.array([], pa.string())) is None


def distinct_columns_found(monkeypatch) -> list:
    """A list that gets, for each merge, the column it found to keep the batch's rows apart (or None)."""
    from connectors import postgres

    found = []
    original = postgres._distinct_rows
    monkeypatch.setattr(postgres, "_distinct_rows", lambda staged, columns: found.append(
        original(staged, columns)) or found[-1])
    return found


def _rows(ids) -> str:
    return "id,name,amount\n" + "".join(f'{i},"n, ""{i % 7}""",{i % 100}.5\n' for i in ids)


@pytest.mark.parametrize("mode", ["append", "overwrite", "upsert"])
def test_rows_kept_apart_by_an_ascending_column_load_without_a_duplicate_search(db, make_settings, tmp_path,
                                                                              monkeypatch, mode):
    from tests.test_catalog import assert_catalog_true

    finished = vectorized_reads(monkeypatch)
    found = distinct_columns_found(monkeypatch)
    settings = make_settings(datasets={"orders": {"mode": mode, **({"primary_key": ["id"]} if mode == "upsert" else {})}})
    a = _write(tmp_path / "a.csv", _rows(range(0, 1500)))
    b = _write(tmp_path / "b.csv", _rows(range(1500, 2500)))
    result = load(settings, "orders", b, a)
    assert len(finished) == 2 and found == ["id"]
    assert (result.loaded, result.duplicates) == (2500, 0)
    assert db.scalar("SELECT count(*) FROM {s}.orders") == db.scalar("SELECT count(DISTINCT id) FROM {s}.orders") == 2500
    assert db.scalar("SELECT count(*) FROM {s}.orders WHERE name = 'n, \"3\"' AND amount = 3.5") == len(
        [i for i in range(2500) if i % 7 == 3 and i % 100 == 3])
    assert_catalog_true(db, settings, "orders")
    if mode == "upsert":  # the key is in place, and the next batch merges into the rows as usual
        assert db.scalar("SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
                         (f"{db.schema}.orders",)) == 1
        # 1000 rows as loaded, 500 changed, 500 new keys: the unchanged ones are left out as the batch is copied.
        changed = _rows(range(2000, 3000)).replace(".5\n", ".25\n")
        again = _write(tmp_path / "c.csv", _rows(range(1000, 2000)) + changed[changed.index("\n") + 1:])
        result = load(settings, "orders", again, batch_id=1)
        assert found == ["id", "id"]
        assert (result.loaded, result.inserted, result.duplicates) == (2000, 500, 0)
        # Only the changed and new rows were written (the first load's transaction still shows on the others).
        assert db.scalar("SELECT count(*) FROM {s}.orders WHERE xmin::text <> "
                         "(SELECT xmin::text FROM {s}.orders WHERE id = 0)") == 1000
        assert db.scalar("SELECT count(*) FROM {s}.orders") == 3000
        assert db.scalar("SELECT count(*) FROM {s}.orders WHERE amount % 1 = 0.25") == 1000
        assert_catalog_true(db, settings, "orders")


@pytest.mark.parametrize("case", ["overlapping inputs", "a repeated row", "a step back"])
def test_exact_duplicates_are_still_removed_where_the_ascending_column_does_not_keep_rows_apart(
        db, make_settings, tmp_path, monkeypatch, case):
    finished = vectorized_reads(monkeypatch)
    found = distinct_columns_found(monkeypatch)
    ids = list(range(2000))
    if case == "overlapping inputs":  # each input ascends, but the second repeats the first's rows
        files = [_write(tmp_path / "a.csv", _rows(ids)), _write(tmp_path / "b.csv", _rows(ids))]
        duplicates = 2000
    elif case == "a repeated row":
        files = [_write(tmp_path / "a.csv", _rows(ids[:1200] + [1199] + ids[1200:]))]
        duplicates = 1
    else:  # far past the first block: the check spans blocks
        files = [_write(tmp_path / "a.csv", _rows(ids[:1800] + [3] + ids[1800:]))]
        duplicates = 1
    rows_in = sum(f.read_text().count("\n") - 1 for f in files)
    result = load(make_settings(), "orders", *files)
    assert len(finished) == len(files) and found == [None]
    assert result.duplicates == duplicates
    assert db.scalar("SELECT count(*) FROM {s}.orders") == rows_in - duplicates == result.loaded
    assert db.scalar("SELECT count(*) FROM (SELECT DISTINCT * FROM {s}.orders) d") == rows_in - duplicates
