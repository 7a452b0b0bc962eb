"""The shipped Prometheus rules and Grafana dashboard work, and query only metrics the
code really exports (a renamed metric would silently blank a panel or an alert)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import workers.metrics  # noqa: F401 (registers the worker metrics in this process)
from ingest import create_app
from ingest.metrics import OUTCOMES
from tests.helpers import OPS
from tests.processes import ROOT

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "hookfleet.json"
METRIC = re.compile(r"\bhookfleet_[a-z0-9_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing; tests/run.sh installs it (apt-get install prometheus)")
    return subprocess.run([binary, *args], cwd=PROMETHEUS, capture_output=True, text=True)


def test_scrape_config_and_alert_rules_pass_promtool_check() -> None:
    config = promtool("check", "config", "prometheus.yml")
    rules = promtool("check", "rules", "alerts.yml")

    assert config.returncode == 0, config.stdout + config.stderr
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_alert_rules_fire_on_the_stories_in_their_unit_tests() -> None:
    done = promtool("test", "rules", "alerts_test.yml")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.fixture
def exported(
    settings_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> set[str]:
    """Every series name a scrape of the receiver can show (with the workers' metrics
    registered in this process too)."""
    # This process's own registry, whatever an earlier test left in os.environ.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    env = {**settings_env, "HOOKFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}"}
    from models.migrate import upgrade
    from models.settings import Settings

    upgrade(Settings.from_env(env))
    body = create_app(env).test_client().get("/metrics", base_url=OPS).text
    names = set()
    for family in text_string_to_metric_families(body):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_metric_in_the_alerts_and_the_dashboard_is_exported(exported: set[str]) -> None:
    wanted = {
        m for expr in alert_expressions() + dashboard_expressions() for m in METRIC.findall(expr)
    }

    assert wanted - exported == set()
    # And the other way round: nothing we export goes unwatched by the dashboard.
    on_dashboard = {m for e in dashboard_expressions() for m in METRIC.findall(e)}
    bases = {re.sub(r"_(bucket|count|sum)$", "", m) for m in on_dashboard}
    ours = {m for m in exported if METRIC.fullmatch(m) and not m.endswith("_created")}
    unwatched = {m for m in ours if re.sub(r"_(bucket|count|sum)$", "", m) not in bases}
    assert unwatched == set()


def test_outcomes_in_the_alerts_are_ones_the_receiver_counts() -> None:
    used = set()
    for expr in alert_expressions() + dashboard_expressions():
        for alternatives in re.findall(r'outcome=~?"([^"]+)"', expr):
            used |= set(alternatives.split("|"))

    assert used and used <= set(OUTCOMES)


def test_every_dashboard_panel_has_a_query_and_a_place() -> None:
    dashboard = json.loads(DASHBOARD.read_text())

    assert dashboard["uid"] == "hookfleet"
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


def test_queue_names_in_the_alerts_and_the_dashboard_are_the_contracts() -> None:
    """A renamed queue would leave an alert that selects it by name silent."""
    from models.contract import QUEUES

    text = (PROMETHEUS / "alerts.yml").read_text() + DASHBOARD.read_text()
    named = {
        name
        for found in re.findall(r'queue[!=~]+\\?"([^"\\]+)\\?"', text)
        for name in found.split("|")
    }
    assert named and named <= {queue.value for queue in QUEUES}
