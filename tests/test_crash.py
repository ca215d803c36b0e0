"""`watcher run` killed with SIGKILL around a delivery, then restarted on its database.

The README promises at-least-once delivery: a message a change owes is never
lost, and the one duplicate possible is a message the receiver got just before
the kill. Each test stops a real process at one point of the story (during the
check, after the change is recorded but before the receiver has the message,
while the receiver holds the message unanswered), kills it, restarts it, and
counts what the receiver got. `notify_lease = "2s"` lets the restarted process
take over a dead one's claim quickly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.helpers import write_config
from tests.real import ports
from tests.real.images import push_image

STARTUP_SECONDS = 20.0
KILL_WAIT_SECONDS = 5.0
#: Longer than any wait below: the hub double sits on the check this long.
CHECK_HOLD_SECONDS = 5.0
TAG = "stable"


class WatcherProcess:
    """One `watcher run` subprocess; its stderr goes to a file of its own."""

    def __init__(self, config, port, stderr_path):
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        self.url = f"http://127.0.0.1:{port}"

    def metric(self, name, **labels):
        """The value of one sample on /metrics, or None when absent."""
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
        text = httpx.get(f"{self.url}/metrics", timeout=2).text
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait_until(self, condition, what, timeout=STARTUP_SECONDS, details=str):
        """Poll `condition` until true; fail with `details()` and stderr otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"watcher (pid {self.process.pid}) exited with {self.process.returncode} while waiting for {what}; {details()}\n{self.log()}"
                )
            try:
                if condition():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(
            f"timed out after {timeout} s waiting for {what}; {details()}\nwatcher (pid {self.process.pid}) stderr:\n{self.log()}"
        )

    def kill(self):
        """SIGKILL this process (by its pid) and reap it; safe to call twice."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=KILL_WAIT_SECONDS)
        self._stderr.close()

    def log(self):
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")


class Deployment:
    """`watcher run` on one database, started again after each kill.

    Each start rewrites the config file with a fresh metrics port, so no start
    waits on a killed process's port; the database is what a restart shares.
    """

    def __init__(self, directory, **config):
        self.directory = directory
        self.config = config
        self.started: list[WatcherProcess] = []

    def start(self):
        """Start a process on a fresh metrics port; wait until it serves /healthz."""
        port = ports.free_port()
        config = write_config(self.directory, listen=f"127.0.0.1:{port}", **self.config)
        stderr_path = self.directory / f"watcher-{len(self.started) + 1}.stderr"
        watcher = WatcherProcess(config, port, stderr_path)
        self.started.append(watcher)
        watcher.wait_until(
            lambda: httpx.get(f"{watcher.url}/healthz", timeout=2).status_code == 200,
            "/healthz",
        )
        return watcher

    def kill_all(self):
        for watcher in self.started:
            watcher.kill()


@pytest.fixture
def deploy(tmp_path):
    """Give `deploy(**config)`; every process it starts is SIGKILLed at teardown.

    Request it after the servers the processes talk to: fixtures are torn down
    in reverse, so the processes die before their keep-alive connections could
    hold up a server's shutdown.
    """
    deployments: list[Deployment] = []

    def make(**config):
        config.setdefault("jitter", "10ms")
        config.setdefault("notify_lease", "2s")
        config.setdefault("notify_retry", "1s")
        deployment = Deployment(tmp_path, **config)
        deployments.append(deployment)
        return deployment

    yield make
    for deployment in deployments:
        deployment.kill_all()


def checks(watcher, registry, result):
    return watcher.metric("watcher_checks_total", registry=registry, result=result) or 0


def wait_for_baseline(watcher, registry):
    watcher.wait_until(
        lambda: checks(watcher, registry, "first_seen") == 1, "the baseline check"
    )


def wait_for_delivery_and_quiet(watcher, receiver, registry, what):
    """Wait until `watcher` sent the message, has none pending, and checked again.

    Returns early once the receiver has a second answered message: the caller's
    assertions then name the duplicate.
    """
    watcher.wait_until(
        lambda: len(receiver.messages) >= 1,
        f"the message after restart ({what})",
        details=lambda: f"receiver saw {describe(receiver)}",
    )
    unchanged = checks(watcher, registry, "unchanged")
    watcher.wait_until(
        lambda: (
            len(receiver.messages) > 1
            or (
                sent(watcher) >= 1
                and watcher.metric("watcher_notifications_pending") == 0
                and checks(watcher, registry, "unchanged") > unchanged
            )
        ),
        f"the delivery to be marked and one more check ({what})",
        details=lambda: f"receiver saw {describe(receiver)}",
    )


def sent(watcher):
    return (
        watcher.metric("watcher_notifications_total", notifier="json", outcome="sent")
        or 0
    )


def describe(receiver):
    """What the receiver got, one entry per request: answered?, status, digests."""
    return [
        {
            "answered": request.answered,
            "status": int(request.status),
            "message": (request.body or {}).get("message", "")[:200],
        }
        for request in receiver.requests
    ]


def assert_announces(request, old, new):
    text = request.body["message"]
    assert old.digest in text, text
    assert new.digest in text, text


def watched_from_baseline(registry, repository_name, receiver, deploy, kind):
    """Push TAG, deploy a watch of it notifying `receiver`, start, and wait for the
    first check; return the pushed image, the deployment and the running process."""
    first = push_image(registry.url, repository_name, TAG, kind)
    image = f"{registry.host}/{repository_name}:{TAG}"
    deployment = deploy(
        watches=[{"image": image, "interval": "1s"}], notify=[receiver.apprise_url()]
    )
    before = deployment.start()
    wait_for_baseline(before, registry.host)
    return first, deployment, before


def test_kill_while_the_receiver_holds_the_message_redelivers_it_once(
    registry, repository_name, receiver, deploy
):
    """The receiver has the message but has not answered when the process dies."""
    what = "killed while the receiver held the delivery unanswered, then restarted"
    first, deployment, before = watched_from_baseline(
        registry, repository_name, receiver, deploy, "oci-index"
    )

    receiver.hold_next(1)
    second = push_image(registry.url, repository_name, TAG, "oci-index")
    receiver.wait_for_held(1, timeout=STARTUP_SECONDS)
    before.kill()
    receiver.release()
    after = deployment.start()
    wait_for_delivery_and_quiet(after, receiver, registry.host, what)

    held, *others = receiver.requests
    assert not held.answered, f"{what}: a dead process's request was answered"
    assert len(others) == 1, (
        f"{what}: expected the held copy and one redelivery, got {describe(receiver)}"
    )
    assert others[0].answered, f"{what}: the redelivery was not answered"
    assert others[0].body == held.body, f"{what}: the redelivery is another message"
    assert_announces(others[0], first, second)
    assert checks(after, registry.host, "changed") == 0, (
        f"{what}: the restarted process detected the change again instead of "
        "delivering the recorded one"
    )


def test_kill_before_the_receiver_reads_the_message_delivers_it_once(
    registry, repository_name, receiver, deploy
):
    """The change is recorded and sending began, but the receiver never read it."""
    what = "killed after recording the change, before the receiver read the message"
    first, deployment, before = watched_from_baseline(
        registry, repository_name, receiver, deploy, "docker-v2"
    )

    receiver.stall_next(1)
    second = push_image(registry.url, repository_name, TAG, "docker-v2")
    receiver.wait_for_stalled(1, timeout=STARTUP_SECONDS)
    assert receiver.requests == [], f"{what}: the stalled request was read"
    before.kill()
    receiver.release()
    after = deployment.start()
    wait_for_delivery_and_quiet(after, receiver, registry.host, what)

    assert len(receiver.requests) == 1, (
        f"{what}: expected exactly one message, got {describe(receiver)}"
    )
    (message,) = receiver.messages
    assert_announces(message, first, second)
    assert checks(after, registry.host, "changed") == 0, (
        f"{what}: the restarted process detected the change again instead of "
        "delivering the recorded one"
    )


def test_kill_during_the_check_notifies_the_change_once_after_restart(
    registry, hub, repository_name, receiver, deploy
):
    """The registry sits on the HEAD of the moved tag when the process dies."""
    what = "killed during the check of the moved tag, before recording the change"
    first = push_image(registry.url, repository_name, TAG, "oci-manifest")
    deployment = deploy(
        watches=[{"image": f"docker.io/{repository_name}:{TAG}", "interval": "1s"}],
        registries={"docker.io": {"endpoint": hub.url}},
        notify=[receiver.apprise_url()],
    )
    before = deployment.start()
    wait_for_baseline(before, "docker.io")

    hub.behaviour.latency = CHECK_HOLD_SECONDS
    seen = len(hub.requests)
    second = push_image(registry.url, repository_name, TAG, "oci-manifest")
    before.wait_until(
        lambda: (
            any("/manifests/" in r.path for r in hub.requests[seen:])
            and before.metric("watcher_checks_in_flight") == 1
        ),
        "a check waiting on the registry",
    )
    before.kill()
    hub.behaviour.latency = 0
    after = deployment.start()
    wait_for_delivery_and_quiet(after, receiver, "docker.io", what)

    assert checks(after, "docker.io", "changed") == 1, (
        f"{what}: the restarted process did not detect the change itself"
    )
    assert len(receiver.requests) == 1, (
        f"{what}: expected exactly one message, got {describe(receiver)}"
    )
    (message,) = receiver.messages
    assert_announces(message, first, second)
