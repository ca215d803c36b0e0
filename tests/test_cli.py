"""The `watcher` command as a user runs it: output, exit codes, error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.helpers import write_config
from tests.real.images import push_image
from watcher.cli import app

runner = CliRunner()

# `watcher check` in a fresh interpreter; its last line names the libraries loaded
# that start-up should only pay for when they are used.
CHECK_AND_NAME_LIBRARIES = """
import sys
from watcher.cli import app
try:
    app(["check", "--json", "--config", sys.argv[1]])
except SystemExit:
    pass
print(sorted(set(sys.modules) & {"alembic", "apprise"}))
"""


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def test_check_json_lists_each_image_with_its_digest(
    tmp_path, registry, repository_name
):
    pushed = push_image(registry.url, repository_name, "1", "oci-index")
    image = f"{registry.host}/{repository_name}:1"
    path = write_config(tmp_path, watches=[image])

    first = invoke("check", "--config", path, "--json")
    pushed_again = push_image(registry.url, repository_name, "1", "oci-index")
    second = invoke("check", "--config", path, "--json")

    assert first.exit_code == 0, first.output
    (before,) = json.loads(first.stdout)
    assert before["image"] == image
    assert before["digest"] == pushed.digest
    assert (before["previous_digest"], before["changed"], before["error"]) == (
        None,
        False,
        None,
    )
    (after,) = json.loads(second.stdout)
    assert (after["previous_digest"], after["digest"], after["changed"]) == (
        pushed.digest,
        pushed_again.digest,
        True,
    )


def test_check_exits_1_when_any_check_failed(tmp_path, registry, repository_name):
    push_image(registry.url, repository_name, "1", "docker-v2")
    path = write_config(
        tmp_path,
        watches=[
            f"{registry.host}/{repository_name}:1",
            f"{registry.host}/{repository_name}:gone",
        ],
    )

    result = invoke("check", "--config", path)

    assert result.exit_code == 1
    ok_line, failed_line = result.stdout.splitlines()[1:]
    assert "first_seen" in ok_line
    assert "error" in failed_line
    assert "not found" in failed_line.lower()


def test_bad_config_exits_2_with_each_problem_and_no_traceback(tmp_path):
    path = tmp_path / "watcher.toml"
    path.write_text('interval = "soon"\n[[watch]]\nimage = "Alpine"\n')

    result = invoke("check", "--config", path)

    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert f"invalid configuration {path}" in result.stderr
    assert "line 1: interval: expected a duration" in result.stderr
    assert (
        "line 3: watch[0].image: parse reference 'Alpine': repository must be lowercase"
        in result.stderr
    )


def test_unknown_notify_scheme_is_a_config_error_without_the_url(tmp_path):
    path = write_config(
        tmp_path, watches=["alpine"], notify=["nosuchscheme://user:TOPSECRET@host/x"]
    )

    result = invoke("check", "--config", path)

    assert result.exit_code == 2
    assert (
        "notify.urls[0]: Apprise does not accept this nosuchscheme:// URL"
        in result.stderr
    )
    assert "TOPSECRET" not in result.output


def test_history_shows_every_period(tmp_path, registry, repository_name):
    first = push_image(registry.url, repository_name, "1", "docker-list")
    image = f"{registry.host}/{repository_name}:1"
    path = write_config(tmp_path, watches=[image])
    invoke("check", "--config", path)
    second = push_image(registry.url, repository_name, "1", "docker-list")
    invoke("check", "--config", path)

    table = invoke("history", image, "--config", path)
    as_json = invoke("history", image, "--config", path, "--json")

    assert table.exit_code == 0
    assert table.stdout.index(first.digest) < table.stdout.index(second.digest)
    periods = json.loads(as_json.stdout)
    assert [p["digest"] for p in periods] == [first.digest, second.digest]
    assert periods[0]["replaced_at"] is not None
    assert periods[1]["replaced_at"] is None


def test_history_of_unknown_image_says_what_to_do(tmp_path):
    path = write_config(tmp_path, watches=["alpine"])

    result = invoke("history", "busybox", "--config", path)

    assert result.exit_code == 1
    assert "no history for docker.io/library/busybox:latest" in result.stderr


def test_history_with_bad_reference_exits_2(tmp_path):
    path = write_config(tmp_path, watches=["alpine"])

    result = invoke("history", "Busybox", "--config", path)

    assert result.exit_code == 2
    assert "repository must be lowercase; try 'busybox'" in result.stderr


def test_status_lists_every_watch_including_unchecked(
    tmp_path, registry, repository_name
):
    pushed = push_image(registry.url, repository_name, "1", "oci-manifest")
    checked = f"{registry.host}/{repository_name}:1"
    path = write_config(tmp_path, watches=[checked])
    invoke("check", "--config", path)
    path = write_config(tmp_path, watches=[checked, "alpine:3"])

    result = invoke("status", "--config", path, "--json")

    rows = {row["image"]: row for row in json.loads(result.stdout)}
    assert rows[checked]["digest"] == pushed.digest
    assert rows[checked]["result"] == "first_seen"
    assert rows["docker.io/library/alpine:3"]["last_check"] is None


def test_tags_lists_every_tag_of_a_repository(registry, repository_name):
    for tag in ("1.0", "1.1", "latest"):
        push_image(registry.url, repository_name, tag, "oci-manifest", seed="same")

    result = invoke("tags", f"{registry.host}/{repository_name}", "--json")

    assert result.exit_code == 0, result.output
    assert sorted(json.loads(result.stdout)) == ["1.0", "1.1", "latest"]


def test_tags_of_an_unknown_repository_exits_1(registry):
    result = invoke("tags", f"{registry.host}/no/such-repository")

    assert result.exit_code == 1
    assert "no/such-repository" in result.stderr


def test_ratelimit_reads_the_budget_without_spending_a_pull(tmp_path, registry, hub):
    push_image(registry.url, "team/app", "1", "oci-manifest")
    hub.behaviour.remaining = 42
    path = write_config(
        tmp_path,
        watches=["team/app:1"],
        registries={"docker.io": {"endpoint": hub.url}},
    )

    result = invoke("ratelimit", "docker.io", "--config", path, "--json")

    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row == {
        "registry": "docker.io",
        "limit": hub.behaviour.limit,
        "remaining": 42,
        "window": hub.behaviour.window,
        "source": hub.behaviour.source,
        "error": None,
    }
    assert hub.counts["get_manifest"] == 0


def test_ratelimit_says_when_a_registry_meters_nothing(
    tmp_path, registry, repository_name
):
    push_image(registry.url, repository_name, "1", "oci-manifest")
    path = write_config(tmp_path, watches=[f"{registry.host}/{repository_name}:1"])

    result = invoke("ratelimit", "--config", path)

    assert result.exit_code == 0, result.output
    assert "no rate-limit headers: not metered" in result.stdout


def test_ratelimit_of_an_unwatched_registry_asks_for_an_image(tmp_path):
    path = write_config(tmp_path, watches=["alpine"])

    result = invoke("ratelimit", "ghcr.io", "--config", path)

    assert result.exit_code == 2
    assert "no watched image on ghcr.io; name one to HEAD with --image" in result.stderr


def test_check_on_a_terminal_shows_progress_then_the_table(
    tmp_path, registry, repository_name
):
    import os
    import pty
    import subprocess
    import sys

    push_image(registry.url, repository_name, "1", "oci-manifest")
    path = write_config(tmp_path, watches=[f"{registry.host}/{repository_name}:1"])
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "watcher", "check", "--config", str(path)],
        stdout=follower,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)

    assert process.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "checking" in text
    assert "IMAGE" in text
    assert "first_seen" in text


@pytest.mark.parametrize(
    ("database", "notify", "loaded"),
    [
        pytest.param("at head", [], "[]", id="plain"),
        pytest.param(
            "at head", ["json://127.0.0.1:9/hook"], "['apprise']", id="notify"
        ),
        pytest.param("empty", [], "[]", id="empty-database"),
    ],
)
def test_check_loads_alembic_and_apprise_only_to_use_them(
    tmp_path, registry, repository_name, database, notify, loaded
):
    """An empty database or one at head needs no migration script, and no URL means
    nothing to check or send."""
    from watcher.store import upgrade as migrate

    push_image(registry.url, repository_name, "1", "oci-manifest")
    path = write_config(
        tmp_path, watches=[f"{registry.host}/{repository_name}:1"], notify=notify
    )
    if database == "at head":
        migrate(f"sqlite:///{tmp_path / 'watcher.db'}")

    checked = subprocess.run(
        [sys.executable, "-c", CHECK_AND_NAME_LIBRARIES, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[-1] == loaded


def test_db_upgrade_brings_an_old_database_to_the_current_schema(tmp_path):
    from watcher.store import schema_state
    from watcher.store import upgrade as migrate

    path = write_config(tmp_path, watches=["alpine"])
    url = f"sqlite:///{tmp_path / 'watcher.db'}"
    migrate(url, "0001")

    refused = invoke("check", "--config", path)
    status = invoke("db", "status", "--config", path)
    upgraded = invoke("db", "upgrade", "--config", path)
    again = invoke("db", "upgrade", "--config", path)

    assert refused.exit_code == 1
    assert "is at schema 0001" in refused.stderr
    assert "run: watcher db upgrade" in refused.stderr
    assert status.exit_code == 1
    assert "behind, at 0001" in status.stdout
    assert upgraded.exit_code == 0
    assert "schema 0001 -> " in upgraded.stdout
    assert "is already at schema" in again.stdout
    assert schema_state(url).status.value == "current"
