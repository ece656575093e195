import pytest

from streaming.config import load_settings, parse_duration
from streaming.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "dataops.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(monkeypatch):
    monkeypatch.delenv("DATAOPS_CONFIG", raising=False)
    s = load_settings()
    assert s.postgres.schema_name == "public"
    assert str(s.landing.path) == "landing"
    assert s.spark.master == "local[*]"
    assert s.dataset("anything").mode == "append"


def test_yaml_and_env_overrides(tmp_path, monkeypatch):
    path = write(tmp_path, """
postgres: {dsn: "postgresql://u:secret@h/db", schema: sales}
spark: {trigger_interval: 2s}
csv: {null_tokens: ["", "-"]}
datasets:
  Orders: {mode: upsert, primary_key: [order_id], columns: {amount: int8}}
""")
    monkeypatch.setenv("DATAOPS_POSTGRES__SCHEMA", "override")
    monkeypatch.setenv("DATAOPS_DATASETS__ORDERS__INDEXES", '[["customer_id"]]')
    s = load_settings(path)
    assert s.postgres.schema_name == "override"
    assert s.spark.trigger_seconds == 2.0
    orders = s.dataset("Orders")
    assert orders.mode == "upsert" and orders.primary_key == ["order_id"]
    assert orders.columns == {"amount": "bigint"}
    assert orders.indexes == [["customer_id"]]
    assert orders.null_tokens == ["", "-"]  # inherited from the csv section
    assert "secret" not in repr(s)


def test_config_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAOPS_CONFIG", str(write(tmp_path, "landing: {path: /data/in}\n")))
    assert str(load_settings().landing.path) == "/data/in"


@pytest.mark.parametrize("text, key", [
    ("postgres: {dsnn: x}\n", "postgres.dsnn"),
    ("unknown_section: {}\n", "unknown_section"),
    ("datasets: {orders: {mode: upsertt}}\n", "datasets.orders.mode"),
    ("datasets: {orders: {mode: upsert}}\n", "datasets.orders"),
    ("datasets: {orders: {primary_key: [Order ID]}}\n", "datasets.orders.primary_key"),
    ("datasets: {orders: {columns: {amount: money}}}\n", "datasets.orders.columns"),
    ("spark: {trigger_interval: soon}\n", "spark.trigger_interval"),
    ("metrics: {port: 99999}\n", "metrics.port"),
    ("datasets: {orders: {date_formats: ['%Q/%d']}}\n", "datasets.orders.date_formats"),
    ("datasets: {orders: {date_formats: ['%d/%m/%y']}}\n", "datasets.orders.date_formats"),
    ("datasets: {orders: {on_schema_change: ignore}}\n", "datasets.orders.on_schema_change"),
    ("csv: {delimiter: ';;'}\n", "csv.delimiter"),
    ("csv: {encoding: klingon}\n", "csv.encoding"),
])
def test_bad_keys_and_values_are_refused_with_the_key_named(tmp_path, monkeypatch, text, key):
    monkeypatch.delenv("DATAOPS_CONFIG", raising=False)
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text))
    assert key in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "postgres: [unclosed\n"))


def test_durations():
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    assert parse_duration(3) == 3.0
    with pytest.raises(ValueError):
        parse_duration("fast")
