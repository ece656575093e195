import pytest

from streaming.naming import MAX_IDENTIFIER_BYTES, normalize_columns, normalize_dataset_name, normalize_identifier


@pytest.mark.parametrize("raw, expected", [
    ("Amount (USD)", "amount_usd"),
    ("Order ID", "order_id"),
    ("OrderID", "order_id"),
    ("userId", "user_id"),
    ("HTTPServer", "http_server"),
    ("Prénom", "prenom"),
    ("2024 total", "_2024_total"),
    ("  spaced  out  ", "spaced_out"),
    ('x"; DROP TABLE users; --', "x_drop_table_users"),
    ("select", "select"),
    ("日本", ""),
])
def test_normalize_identifier(raw, expected):
    assert normalize_identifier(raw) == expected


def test_long_names_are_truncated_with_a_distinguishing_hash():
    a = normalize_identifier("a" * 70 + "x")
    b = normalize_identifier("a" * 70 + "y")
    assert len(a.encode()) <= MAX_IDENTIFIER_BYTES and len(b.encode()) <= MAX_IDENTIFIER_BYTES
    assert a != b and a[:50] == b[:50]


def test_columns_are_unique_and_blank_names_get_positions():
    assert normalize_columns(["name", "Name", "", "name_2", "NAME"]) == ["name", "name_3", "column_3", "name_2", "name_4"]


def test_dataset_name_must_have_letters():
    assert normalize_dataset_name("Sales Orders") == "sales_orders"
    with pytest.raises(ValueError, match="no letters or digits"):
        normalize_dataset_name("***")
