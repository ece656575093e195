"""Environment overrides that cannot be read stop the start with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streaming.config import load_settings
from streaming.errors import ConfigError


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.upper().startswith("DATAOPS_"):
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize("variable, value, says", [
    ("DATAOPS_DATASETS__ORDERS__PRIMARY_KEY", "id", "datasets.orders.primary_key takes a JSON list such as"),
    ("DATAOPS_ENDPOINTS", "not json", "endpoints takes a JSON list"),
    ("DATAOPS_POSTGRES", "x", "postgres takes a JSON object"),
    ("DATAOPS_FOO__BAR", "1", "unknown section 'foo'"),
    ("DATAOPS_DATASETS__ORDERS__MODE", "sideways", "datasets.orders.mode: Input should be"),
    ("DATAOPS_LANDING__SCAN_INTERVAL", "soon", "landing.scan_interval"),
])
def test_a_bad_override_names_its_variable(clean_env, variable, value, says):
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert variable in message and says in message and "\n" not in message


def test_good_overrides_and_other_dataops_variables_still_work(clean_env):
    clean_env.setenv("DATAOPS_DATASETS__ORDERS__PRIMARY_KEY", '["id"]')
    clean_env.setenv("DATAOPS_ENDPOINTS", "[]")
    clean_env.setenv("DATAOPS_POSTGRES", '{"schema": "sales"}')
    clean_env.setenv("DATAOPS_ITEMS_TOKEN", "not a setting: a secret named in an endpoint's auth")
    settings = load_settings()
    assert settings.dataset("orders").primary_key == ["id"]
    assert settings.postgres.schema_name == "sales"


def test_dataops_run_prints_one_line_and_exits_2(clean_env, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DATAOPS_")}
    env["DATAOPS_DATASETS__ORDERS__PRIMARY_KEY"] = "id"
    done = subprocess.run([sys.executable, "-m", "streaming.cli", "run"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("dataops: environment variable DATAOPS_DATASETS__ORDERS__PRIMARY_KEY")
