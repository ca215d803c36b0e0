"""A real Prometheus scraping a real `watcher run`: the dashboard and the alerts.

watcher checks a tag on the local registry through the Hub double (tokens,
rate-limit headers), Prometheus scrapes it every second and evaluates
prometheus/alerts.yml with each `for:` cut to a second. Every query of
grafana/dashboards/watcher.json must then return data, and the alerts must fire
under the conditions they name, and only then.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import write_config
from tests.real.images import push_image
from tests.real.prometheus import PrometheusServer

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "watcher.json"

WAIT_SECONDS = 20.0
STOP_SECONDS = 10.0
POLL_SECONDS = 0.2
LOG_TAIL_CHARACTERS = 6000
# Pulls watcher leaves alone on the Hub double; the test brings the budget below.
RESERVE = 10
# Prometheus evaluates the rules every second here: after this many evaluations
# a true expression has made its alert pending at least once.
QUIET_EVALUATIONS = 3

# What Grafana puts in place of its built-in variables, for a test that has run
# well under a minute with one scrape a second.
GRAFANA_BUILTINS = {
    "$__interval_ms": "60000",
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "5m",
}


def prometheus_config(watcher_port: int) -> str:
    """prometheus/prometheus.yml, scraping this watcher every second."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (scrape,) = config["scrape_configs"]
    scrape["static_configs"] = [{"targets": [f"127.0.0.1:{watcher_port}"]}]
    config["rule_files"] = ["alerts.yml"]
    return str(yaml.safe_dump(config, sort_keys=False))


def fast_alert_rules() -> str:
    """prometheus/alerts.yml with every `for:` shortened to one second."""
    rules = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "1s"
    return str(yaml.safe_dump(rules, sort_keys=False))


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def grafana_expand(expr: str) -> str:
    """`expr` as Grafana sends it with every template variable at "All"."""
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            value = variable["allValue"]
            name = variable["name"]
            # A replacement string reads backslashes only; .* and names have none.
            expr = re.sub(rf"\$\{{{name}\}}|\${name}\b", value, expr)
    assert "$" not in expr, f"unexpanded variable in {expr}"
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and annotation, expanded."""
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} query {target['refId']}"
            found.append((where, grafana_expand(target["expr"])))
    for annotation in dashboard()["annotations"]["list"]:
        if "expr" in annotation:
            where = f"annotation {annotation['name']!r}"
            found.append((where, grafana_expand(annotation["expr"])))
    return found


def variable_queries() -> list[tuple[str, str, str]]:
    """(variable, label, series) of each `label_values(series, label)` variable."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
        assert match, (
            f"variable {variable['name']}: unexpected {variable['definition']}"
        )
        found.append((variable["name"], match[2], match[1]))
    return found


class Watcher:
    """A `watcher run` subprocess; killed by PID by the end of the test."""

    def __init__(self, config: Path, port: int) -> None:
        self.log_path = config.parent / "watcher.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
        self.url = f"http://127.0.0.1:{port}"

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture
def start_watcher():
    started: list[Watcher] = []

    def start(config: Path, port: int) -> Watcher:
        watcher = Watcher(config, port)
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.stop()


class Scene:
    """The running pair, and bounded waits that report both logs on timeout."""

    def __init__(self, watcher: Watcher, prometheus: PrometheusServer) -> None:
        self.watcher = watcher
        self.prometheus = prometheus

    def wait_until(self, condition: Callable[[], object], what: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(POLL_SECONDS)
        pytest.fail(
            f"timed out after {WAIT_SECONDS} s waiting for {what}\n"
            f"alerts: {self.prometheus.alerts()}\n"
            f"watcher log (end):\n{self.watcher.log()[-LOG_TAIL_CHARACTERS:]}\n"
            f"prometheus log (end):\n{self.prometheus.log[-LOG_TAIL_CHARACTERS:]}"
        )

    def value(self, expr: str) -> float | None:
        """The value of a one-series expression, None while it has none."""
        result = self.prometheus.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def wait_for_evaluations(self, alertname: str, count: int) -> None:
        """Wait until the rule `alertname` has been evaluated `count` more times."""
        started = time.time()

        def evaluated() -> bool:
            (rule,) = [r for r in self.prometheus.rules() if r.get("name") == alertname]
            last = datetime.fromisoformat(rule["lastEvaluation"]).timestamp()
            return last >= started + count

        self.wait_until(evaluated, f"{count} evaluations of {alertname}")

    def alert_states(self, alertname: str) -> list[str]:
        return [
            alert["state"]
            for alert in self.prometheus.alerts()
            if alert["labels"]["alertname"] == alertname
        ]


@pytest.fixture
def scene(
    tmp_path,
    registry,
    hub,
    receiver,
    repository_name,
    free_port,
    start_watcher,
    start_prometheus,
):
    """watcher checking `docker.io/<repository_name>:stable` (every second) and
    `:missing` (once) through the Hub double, with a pull reserve, scraped by
    Prometheus."""
    push_image(registry.url, repository_name, "stable", "oci-index")
    hub.behaviour.limit = 100
    hub.behaviour.remaining = 90
    config = write_config(
        tmp_path,
        watches=[
            {"image": f"docker.io/{repository_name}:stable", "interval": "1s"},
            # Once: every failed check costs a pull (the GET after a 404 HEAD).
            {"image": f"docker.io/{repository_name}:missing", "interval": "1h"},
        ],
        registries={"docker.io": {"endpoint": hub.url, "reserve": RESERVE}},
        notify=[receiver.apprise_url()],
        notify_on_first_seen=True,
        listen=f"127.0.0.1:{free_port}",
        jitter="10ms",
    )
    watcher = start_watcher(config, free_port)
    prometheus = start_prometheus(
        prometheus_config(free_port), {"alerts.yml": fast_alert_rules()}
    )
    scene = Scene(watcher, prometheus)
    scene.wait_until(watcher.healthy, "watcher's /healthz")
    return scene


def test_dashboard_queries_return_data_and_alerts_fire_when_due(
    scene, registry, hub, repository_name
):
    """One watcher and one Prometheus for every assertion: starting them is most
    of the test's time."""
    prometheus = scene.prometheus
    stable = f"docker.io/{repository_name}:stable"
    missing = f"docker.io/{repository_name}:missing"
    remaining = 'watcher_registry_ratelimit_remaining{registry="docker.io"}'

    # Plenty of budget (90, less the GET the missing tag cost): the alert is quiet.
    scene.wait_until(lambda: scene.value(remaining), "the rate limit scraped")
    assert scene.value(remaining) in (89, 90)
    scene.wait_for_evaluations("WatcherRateLimitLow", QUIET_EVALUATIONS)
    assert scene.alert_states("WatcherRateLimitLow") == []

    # The tag moves: watcher reads the new index with a GET, which costs a pull.
    push_image(registry.url, repository_name, "stable", "oci-index")
    scene.wait_until(
        lambda: scene.value('sum(watcher_digest_changes_total{registry="docker.io"})'),
        "the change scraped",
    )

    # The budget runs low: the next HEAD brings the header, the alert fires.
    hub.behaviour.remaining = 5
    scene.wait_until(
        lambda: prometheus.firing("WatcherRateLimitLow"), "WatcherRateLimitLow"
    )
    (budget,) = prometheus.firing("WatcherRateLimitLow")
    assert budget["registry"] == "docker.io"
    assert budget["source"] == hub.behaviour.source

    # The tag moves again: with the budget under the reserve, the GET is held back.
    push_image(registry.url, repository_name, "stable", "oci-index")
    scene.wait_until(
        lambda: scene.value(
            'sum(watcher_registry_pulls_deferred_total{registry="docker.io"})'
        ),
        "a pull held back scraped",
    )

    # The missing tag fails its check; the tag that exists does not alert.
    scene.wait_until(
        lambda: prometheus.firing("WatcherCheckFailing"), "WatcherCheckFailing"
    )
    assert [a["image"] for a in prometheus.firing("WatcherCheckFailing")] == [missing]
    assert scene.value(f'watcher_image_last_check_failed{{image="{stable}"}}') == 0

    # Every dashboard query and variable has data.
    assert_dashboard_has_data(scene)

    # Every rule's expression is one Prometheus evaluates without error.
    for rule in prometheus.rules():
        assert rule["health"] == "ok", rule

    # watcher stops: the down alert fires.
    scene.watcher.process.send_signal(signal.SIGTERM)
    assert scene.watcher.process.wait(timeout=STOP_SECONDS) == 0, scene.watcher.log()
    scene.wait_until(lambda: prometheus.firing("WatcherDown"), "WatcherDown")
    (down,) = prometheus.firing("WatcherDown")
    assert down["job"] == "watcher"


def assert_dashboard_has_data(scene: Scene) -> None:
    """Poll until every query has a result (rates need two scrapes), then assert."""
    queries = dashboard_queries()
    empty: list[str] = []

    def all_have_data() -> bool:
        empty[:] = [
            f"{where}: {expr}"
            for where, expr in queries
            if not scene.prometheus.query(expr)
        ]
        return not empty

    deadline = time.monotonic() + WAIT_SECONDS
    while not all_have_data() and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)

    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    for name, label, series in variable_queries():
        values = scene.prometheus.label_values(label, series)
        assert values, f"variable {name}: no {label} on {series}"
