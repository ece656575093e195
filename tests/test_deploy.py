"""Deployment files: they parse, Prometheus accepts them, and every metric they use exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streaming.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
METRIC = re.compile(r"\bdataops_[a-z_]+")


def exported_names() -> set[str]:
    names = set()
    for metric in Metrics().registry.collect():
        names.add(metric.name)
        names.update(sample.name for sample in metric.samples)
        if metric.type == "counter":
            names.add(metric.name + "_total")
        if metric.type == "histogram":
            names.update(metric.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def test_contract_metric_names_are_exported():
    names = exported_names()
    for name in ("dataops_rows_written_total", "dataops_rows_quarantined_total", "dataops_duplicates_removed_total",
                 "dataops_batches_total", "dataops_batch_duration_seconds_bucket",
                 "dataops_last_batch_timestamp_seconds", "dataops_files_pending", "dataops_files_rejected_total",
                 "dataops_api_requests_total", "dataops_api_retries_total", "dataops_query_up",
                 "dataops_input_rows_per_second", "dataops_processed_rows_per_second"):
        assert name in names, name


def test_dashboard_and_alerts_use_only_exported_metrics():
    names = exported_names()
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "dataops.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used and used <= names, used - names
    assert len(dashboard["panels"]) >= 10


def test_compose_k8s_and_provisioning_parse():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert {"postgres", "dataops", "prometheus", "grafana"} <= set(compose["services"])
    kinds = [d["kind"] for d in yaml.safe_load_all((DEPLOY / "k8s" / "dataops.yaml").read_text())]
    assert {"ConfigMap", "Deployment", "Service", "PersistentVolumeClaim"} <= set(kinds)
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1


def test_the_sample_configs_are_valid(tmp_path):
    from streaming.config import load_settings

    assert load_settings(DEPLOY / "dataops.yaml").datasets["orders"].mode == "upsert"
    k8s = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "dataops.yaml").read_text()) if d["kind"] == "ConfigMap")
    path = tmp_path / "k8s.yaml"
    path.write_text(k8s["data"]["dataops.yaml"])
    assert load_settings(path).logging.format == "json"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_config_and_rules():
    for args in (["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")]):
        done = subprocess.run(["promtool", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
