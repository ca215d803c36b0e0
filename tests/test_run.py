"""`watcher run` as a real process: schedule, metrics, notification, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.helpers import wait_for_watcher, write_config
from tests.real.images import push_image

STARTUP_SECONDS = 20.0
STOP_SECONDS = 10.0


class Watcher:
    """A `watcher run` subprocess, always killed by the end of the test."""

    def __init__(self, config, port, environ=None):
        env = {**os.environ, **(environ or {})}
        self.stderr_path = config.parent / "watcher.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            env=env,
        )
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path):
        return httpx.get(f"{self.url}{path}", timeout=2)

    def metric(self, name, **labels):
        """The value of one sample on /metrics, or None when absent."""
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait_until(self, condition, what, timeout=STARTUP_SECONDS):
        wait_for_watcher(self.process, condition, what, self.log, timeout)

    def log(self):
        self._stderr.flush()
        return self.stderr_path.read_text()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


@pytest.fixture
def start_watcher():
    started = []

    def start(config, port, environ=None):
        watcher = Watcher(config, port, environ)
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.stop()


def test_run_notifies_a_change_once_and_stops_cleanly_on_sigterm(
    tmp_path, registry, repository_name, receiver, free_port, start_watcher
):
    first = push_image(registry.url, repository_name, "stable", "oci-index")
    image = f"{registry.host}/{repository_name}:stable"
    config = write_config(
        tmp_path,
        watches=[{"image": image, "interval": "1s"}],
        notify=[receiver.apprise_url()],
        listen=f"127.0.0.1:{free_port}",
        jitter="10ms",
    )
    watcher = start_watcher(config, free_port)
    watcher.wait_until(lambda: watcher.get("/healthz").status_code == 200, "/healthz")
    first_seen = {"registry": registry.host, "result": "first_seen"}
    watcher.wait_until(
        lambda: watcher.metric("watcher_checks_total", **first_seen) == 1,
        "the first check",
    )

    second = push_image(registry.url, repository_name, "stable", "oci-index")
    (message,) = receiver.wait_for(1, timeout=STARTUP_SECONDS)
    changed = {"registry": registry.host, "result": "changed"}
    watcher.wait_until(
        lambda: watcher.metric("watcher_checks_total", **changed) == 1,
        "the change to be counted",
    )
    unchanged = {"registry": registry.host, "result": "unchanged"}
    watcher.wait_until(
        lambda: (watcher.metric("watcher_checks_total", **unchanged) or 0) >= 2,
        "two more checks",
    )

    watcher.process.send_signal(signal.SIGTERM)
    assert watcher.process.wait(timeout=STOP_SECONDS) == 0, watcher.log()
    assert len(receiver.requests) == 1
    assert first.digest in message.body["message"]
    assert second.digest in message.body["message"]
    assert "service.stopped" in watcher.log()


def test_run_keeps_serving_when_a_registry_is_unreachable(
    tmp_path, free_port, start_watcher
):
    from tests.real.ports import free_port as another_port

    dead = another_port()
    config = write_config(
        tmp_path,
        watches=[f"127.0.0.1:{dead}/app:1", f"127.0.0.1:{dead}/app:2"],
        listen=f"127.0.0.1:{free_port}",
    )
    watcher = start_watcher(config, free_port)

    errors = {"registry": f"127.0.0.1:{dead}", "reason": "connect"}
    watcher.wait_until(
        lambda: watcher.metric("watcher_check_errors_total", **errors) == 2,
        "both checks to fail",
    )

    assert watcher.process.poll() is None
    assert watcher.get("/healthz").status_code == 200
    assert watcher.log().count("registry.unreachable") == 1
    assert f"registry='127.0.0.1:{dead}'" in watcher.log()
    watcher.process.send_signal(signal.SIGINT)
    assert watcher.process.wait(timeout=STOP_SECONDS) == 0


def test_secrets_never_reach_the_log_or_metrics(
    tmp_path, hub, registry, receiver, free_port, start_watcher
):
    password = "pw-2b7c9e1d-never-log-me"
    hook_secret = "hooktoken-5f1a77e0"
    push_image(registry.url, "team/app", "1", "oci-manifest")
    hub.behaviour.credentials = ("robot", password)
    config = write_config(
        tmp_path,
        watches=[{"image": "team/app:1", "interval": "1s"}],
        registries={
            "docker.io": {
                "endpoint": hub.url,
                "username": "robot",
                "password_env": "HUB_PW",
            }
        },
        notify=[receiver.apprise_url(f"/{hook_secret}")],
        notify_on_first_seen=True,
        listen=f"127.0.0.1:{free_port}",
        log_level="debug",
    )
    watcher = start_watcher(config, free_port, environ={"HUB_PW": password})

    receiver.wait_for(1, timeout=STARTUP_SECONDS)
    watcher.wait_until(
        lambda: (
            (
                watcher.metric(
                    "watcher_checks_total", registry="docker.io", result="unchanged"
                )
                or 0
            )
            >= 1
        ),
        "a second check",
    )
    metrics = watcher.get("/metrics").text
    watcher.process.send_signal(signal.SIGTERM)
    watcher.process.wait(timeout=STOP_SECONDS)
    log = watcher.log()

    assert "token.fetched" in log
    tokens = hub.issued_tokens
    assert tokens
    for secret in [password, hook_secret, *tokens]:
        assert secret not in log
        assert secret not in metrics
    database = (tmp_path / "watcher.db").read_bytes()
    assert password.encode() not in database
    assert hook_secret.encode() not in database


def test_a_taken_listen_address_is_one_line_and_exit_1(tmp_path, free_port):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port))
        taken.listen()
        config = write_config(
            tmp_path, watches=["alpine"], listen=f"127.0.0.1:{free_port}"
        )

        result = subprocess.run(
            [sys.executable, "-m", "watcher", "run", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=STARTUP_SECONDS,
        )

    assert result.returncode == 1
    assert f"listen on 127.0.0.1:{free_port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_stop_lets_a_hanging_check_end_without_a_crash_report(
    tmp_path, free_port, start_watcher
):
    """A registry that accepts and never answers; SIGTERM arrives mid-check."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        config = write_config(
            tmp_path,
            watches=[f"{host}/app:1"],
            registries={host: {"timeout": "2s", "retries": 0}},
            listen=f"127.0.0.1:{free_port}",
        )
        watcher = start_watcher(config, free_port)
        watcher.wait_until(
            lambda: watcher.metric("watcher_checks_in_flight") == 1, "a check in flight"
        )

        watcher.process.send_signal(signal.SIGTERM)
        code = watcher.process.wait(timeout=STOP_SECONDS)

    log = watcher.log()
    assert code == 0, log
    assert "Traceback" not in log
    assert "CancelledError" not in log
    assert "reason='timeout'" in log
