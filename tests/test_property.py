"""Property: for any CSV, rows in = loaded + quarantined + duplicates removed, and loaded rows are real."""

from __future__ import annotations

import csv
import io
import uuid

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.helpers import accounted, load

cell = st.one_of(
    st.integers(-10**12, 10**12).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
    st.sampled_from(["", "NA", "null", "yes", "no", "2024-02-29", "2023-02-29", "2024-01-01T10:00:00Z", "007"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)


@st.composite
def csv_files(draw):
    width = draw(st.integers(1, 5))
    header = draw(st.lists(st.text(min_size=0, max_size=8), min_size=width, max_size=width))
    rows = draw(st.lists(st.lists(cell, min_size=width, max_size=width), min_size=1, max_size=30))
    ragged = draw(st.lists(st.lists(cell, min_size=0, max_size=width + 2), max_size=3))
    rows += [r for r in ragged if len(r) != width and r]
    rows = draw(st.permutations(rows))
    rows += draw(st.lists(st.sampled_from(rows), max_size=5))  # exact duplicates
    out = io.StringIO()
    # Minimal quoting must know both line-break characters; with "\n" alone every field is quoted.
    terminator, quoting = draw(st.sampled_from([("\r\n", csv.QUOTE_MINIMAL), ("\n", csv.QUOTE_ALL)]))
    writer = csv.writer(out, lineterminator=terminator, quoting=quoting)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue(), len(rows)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=csv_files())
def test_every_row_is_accounted_for(db, make_settings, tmp_path_factory, data):
    text, n_rows = data
    path = tmp_path_factory.mktemp("prop") / "random.csv"
    path.write_text(text, encoding="utf-8")
    settings_ = make_settings()
    dataset = f"p_{uuid.uuid4().hex[:12]}"
    result = load(settings_, dataset, path)
    if result.files[0]["status"] == "rejected":
        assert result.files[0]["reason"] in {"empty", "header_only", "binary"}
        return
    assert result.rows_in == n_rows
    assert accounted(result, db, rows=n_rows)
    table_rows = db.scalar(f'SELECT count(*) FROM "{db.schema}"."{dataset}"')
    assert table_rows == result.loaded
    assert db.scalar("SELECT count(*) FROM {c}.quarantine WHERE dataset = %s", (dataset,)) == result.quarantined
    # The same file again meets the table it created: same outcome, nothing fails to cast.
    again = load(settings_, dataset, path)
    assert (again.rows_in, again.loaded, again.quarantined) == (result.rows_in, result.loaded, result.quarantined)
    assert db.scalar(f'SELECT count(*) FROM "{db.schema}"."{dataset}"') == 2 * result.loaded
