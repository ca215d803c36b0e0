"""The configuration file: every problem reported at once, by line and key."""

from __future__ import annotations

import textwrap

import pytest

from watcher.config import format_duration, load, parse_duration
from watcher.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "watcher.toml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path, environ=None):
    with pytest.raises(ConfigError) as caught:
        load(path, environ or {})
    assert str(path) in str(caught.value)
    return caught.value.problems


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            pytest.param("30s", 30, id="seconds"),
            pytest.param("15m", 900, id="minutes"),
            pytest.param("6h", 21600, id="hours"),
            pytest.param("1d", 86400, id="days"),
            pytest.param("1h30m", 5400, id="compound"),
            pytest.param("250ms", 0.25, id="milliseconds"),
            pytest.param(45, 45, id="bare-number"),
        ],
    )
    def test_parses(self, text, seconds):
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["", "6x", "h", "1h 30m", "-5s", "0s", True])
    def test_rejects_with_the_accepted_form(self, text):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(text)

    @pytest.mark.parametrize("seconds", [0.5, 1, 59, 90, 3600, 5400, 86400 + 61])
    def test_format_round_trips(self, seconds):
        assert parse_duration(format_duration(seconds)) == seconds


class TestLoad:
    def test_defaults_apply_to_a_minimal_file(self, tmp_path):
        settings = load(write(tmp_path, '[[watch]]\nimage = "alpine"\n'), {})

        assert settings.database_url == "sqlite:///watcher.db"
        assert settings.interval == 6 * 3600
        assert settings.listen == "0.0.0.0:9877"
        assert str(settings.watch[0].image) == "docker.io/library/alpine:latest"
        assert settings.interval_of(settings.watch[0]) == 6 * 3600

    def test_per_watch_interval_overrides_the_default(self, tmp_path):
        path = write(
            tmp_path,
            """
            interval = "6h"
            [[watch]]
            image = "alpine:3"
            interval = "30m"
            """,
        )

        settings = load(path, {})

        assert settings.interval_of(settings.watch[0]) == 1800
        assert settings.jitter_of(settings.watch[0]) == 180

    def test_default_jitter_is_capped_at_five_minutes(self, tmp_path):
        settings = load(write(tmp_path, '[[watch]]\nimage = "alpine"\n'), {})

        assert settings.jitter_of(settings.watch[0]) == 300

    def test_registry_password_is_read_from_the_environment(self, tmp_path):
        path = write(
            tmp_path,
            """
            [registries."index.docker.io"]
            username = "me"
            password_env = "HUB_TOKEN"
            """,
        )

        settings = load(path, {"HUB_TOKEN": "s3cret-value"})

        registry = settings.registry("docker.io")
        assert registry.password is not None
        assert registry.password.get_secret_value() == "s3cret-value"
        assert "s3cret-value" not in repr(settings)
        assert settings.secrets() == ["s3cret-value"]

    def test_every_problem_is_reported_with_line_and_key(self, tmp_path):
        path = write(
            tmp_path,
            """\
            interval = "6x"
            colour = "blue"

            [registries."ghcr.io"]
            endpoint = "ftp://mirror"
            concurency = 8

            [[watch]]
            image = "python:3.12-slim"

            [[watch]]
            image = "Nginx:1"
            interval = "soon"
            """,
        )

        problems = problems_of(path)

        assert len(problems) == 6
        assert any(
            p.startswith("line 1: interval: expected a duration") for p in problems
        )
        assert any(
            p.startswith("line 2: colour: unknown key; expected one of:")
            for p in problems
        )
        assert any(
            p.startswith('line 5: registries."ghcr.io".endpoint: expected an http://')
            for p in problems
        )
        assert any(
            p.startswith('line 6: registries."ghcr.io".concurency: unknown key')
            and "concurrency" in p
            for p in problems
        )
        assert any(
            p.startswith(
                "line 12: watch[1].image: parse reference 'Nginx:1': repository must be lowercase"
            )
            for p in problems
        )
        assert any(
            p.startswith("line 13: watch[1].interval: expected a duration")
            for p in problems
        )

    @pytest.mark.parametrize(
        "endpoint",
        [
            "ftp://mirror",
            "http://",
            "http://host:99999",
            "http://ho st",
            "mirror.example.com",
        ],
    )
    def test_bad_endpoint_is_refused(self, tmp_path, endpoint):
        path = write(tmp_path, f'[registries."ghcr.io"]\nendpoint = "{endpoint}"\n')

        (problem,) = problems_of(path)

        assert problem.startswith(
            'line 2: registries."ghcr.io".endpoint: expected an http://'
        )

    def test_missing_environment_variable_names_it_and_the_fix(self, tmp_path):
        path = write(
            tmp_path,
            """\
            [registries."docker.io"]
            username = "me"
            password_env = "HUB_TOKEN"
            """,
        )

        (problem,) = problems_of(path)

        assert problem.startswith('line 3: registries."docker.io".password_env')
        assert "HUB_TOKEN is not set" in problem

    def test_duplicate_watch_is_reported_by_normalised_name(self, tmp_path):
        path = write(
            tmp_path,
            """\
            [[watch]]
            image = "alpine"
            [[watch]]
            image = "docker.io/library/alpine:latest"
            """,
        )

        (problem,) = problems_of(path)

        assert problem.startswith("line 4: watch[1].image")
        assert "already watched by watch[0]" in problem

    def test_digest_only_watch_is_refused_with_the_fix(self, tmp_path):
        path = write(tmp_path, f'[[watch]]\nimage = "alpine@sha256:{"a" * 64}"\n')

        (problem,) = problems_of(path)

        assert "pins a digest, which never changes; watch a tag instead" in problem

    def test_invalid_toml_names_the_line(self, tmp_path):
        (problem,) = problems_of(write(tmp_path, 'interval = "6h\n'))

        assert "not valid TOML" in problem
        assert "line 1" in problem

    def test_missing_file_says_how_to_fix(self, tmp_path):
        (problem,) = problems_of(tmp_path / "nope.toml")

        assert "file not found" in problem
        assert "config.example.toml" in problem

    def test_secret_in_a_bad_notify_url_is_not_echoed(self, tmp_path):
        path = write(tmp_path, '[notify]\nurls = ["hooks.example.com/T0KEN-xyz"]\n')

        (problem,) = problems_of(path)

        assert problem.startswith("line 2: notify.urls")
        assert "T0KEN-xyz" not in problem

    def test_every_kind_of_problem_is_reported_in_one_pass_sorted_by_line(
        self, tmp_path
    ):
        path = write(
            tmp_path,
            """\
            interval = "6x"

            [registries."docker.io"]
            username = "me"
            password_env = "HUB_TOKEN"

            [notify]
            urls = ["json://127.0.0.1/x", "bogus://nowhere"]
            """,
        )

        with pytest.raises(ConfigError) as caught:
            load(
                path, {}, check_urls=lambda urls: [(1, "Apprise does not accept this")]
            )

        lines = [p.split(":", 1)[0] for p in caught.value.problems]
        assert lines == ["line 1", "line 5", "line 8"]
        assert "HUB_TOKEN is not set" in caught.value.problems[1]
        assert (
            caught.value.problems[2]
            == "line 8: notify.urls[1]: Apprise does not accept this"
        )

    def test_history_commands_start_without_registry_secrets(self, tmp_path):
        path = write(
            tmp_path,
            '[registries."docker.io"]\nusername = "me"\npassword_env = "HUB_TOKEN"\n',
        )

        settings = load(path, {}, need_secrets=False)

        assert settings.registry("docker.io").password is None

    def test_password_file_is_read_and_trimmed(self, tmp_path):
        secret = tmp_path / "hub.password"
        secret.write_text("from-a-file\n")
        path = write(
            tmp_path,
            f'[registries."ghcr.io"]\nusername = "me"\npassword_file = "{secret}"\n',
        )

        settings = load(path, {})

        password = settings.registry("ghcr.io").password
        assert password is not None
        assert password.get_secret_value() == "from-a-file"

    def test_tag_with_pinned_digest_watches_the_tag(self, tmp_path):
        path = write(tmp_path, f'[[watch]]\nimage = "alpine:3@sha256:{"a" * 64}"\n')

        (watch,) = load(path, {}).watch

        assert watch.name == "docker.io/library/alpine:3"

    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            pytest.param('interval = "100000d"', "at most 366d", id="too-long"),
            pytest.param("interval = inf", "positive duration", id="infinite"),
            pytest.param("interval = nan", "positive duration", id="nan"),
            pytest.param('interval = "500ms"', "at least 1s", id="too-short"),
            pytest.param(
                'notify_on_first_seen = "yes"',
                "expected true or false, got 'yes'",
                id="strict-bool",
            ),
            pytest.param(
                "concurrency = 0", "expected at least 1, got 0", id="below-minimum"
            ),
            pytest.param(
                'concurrency = "many"',
                "expected a whole number, got 'many'",
                id="not-a-number",
            ),
            pytest.param(
                'log_level = "loud"',
                "expected one of 'debug', 'info', 'warning' or 'error', got 'loud'",
                id="literal",
            ),
            pytest.param(
                'database_url = "watcher.db"',
                "expected an SQLAlchemy URL",
                id="database-url",
            ),
        ],
    )
    def test_bad_values_say_what_is_expected(self, tmp_path, line, expected):
        (problem,) = problems_of(write(tmp_path, line + "\n"))

        assert problem.startswith("line 1: ")
        assert expected in problem

    def test_a_ca_file_that_is_no_pem_bundle_is_refused(self, tmp_path):
        bogus = tmp_path / "ca.pem"
        bogus.write_text("not a certificate\n")
        path = write(tmp_path, f'[registries."r.example"]\nca_file = "{bogus}"\n')

        (problem,) = problems_of(path)

        assert problem == (
            f'line 2: registries."r.example".ca_file: {bogus} holds no PEM certificate; '
            "give a PEM CA bundle"
        )

    def test_jitter_can_be_turned_off(self, tmp_path):
        settings = load(
            write(tmp_path, 'jitter = "0s"\n[[watch]]\nimage = "alpine"\n'), {}
        )

        assert settings.jitter_of(settings.watch[0]) == 0

    def test_notifiers_with_filters_and_templates_load(self, tmp_path):
        path = write(
            tmp_path,
            """\
            [[notifier]]
            name = "platform"
            urls = ["json://127.0.0.1/hook"]
            images = ["ghcr.io/acme/*"]
            title = "$image moved"
            """,
        )

        (notifier,) = load(path, {}).notifier

        assert (notifier.name, notifier.images, notifier.title) == (
            "platform",
            ["ghcr.io/acme/*"],
            "$image moved",
        )

    @pytest.mark.parametrize(
        ("table", "expected"),
        [
            pytest.param(
                'name = "x"\nbody = "${digest}"',
                "unknown field ${digest}; the fields are image,",
                id="unknown-field",
            ),
            pytest.param(
                'name = "x"\nbody = "costs $5"',
                "a '$' starts no field; write $$",
                id="stray-dollar",
            ),
            pytest.param(
                'name = "Team A"', "expected 1 to 32 lowercase letters", id="bad-name"
            ),
            pytest.param(
                'name = "default"', "other than 'default'", id="reserved-name"
            ),
        ],
    )
    def test_bad_notifier_says_what_is_expected(self, tmp_path, table, expected):
        (problem,) = problems_of(write(tmp_path, f"[[notifier]]\n{table}\n"))

        assert expected in problem

    def test_notifier_names_must_differ(self, tmp_path):
        text = '[[notifier]]\nname = "a"\n[[notifier]]\nname = "a"\n'

        (problem,) = problems_of(write(tmp_path, text))

        assert "notifier 'a' is defined twice" in problem

    def test_example_configuration_is_valid(self):
        settings = load("config.example.toml", {})

        registries = {watch.image.registry for watch in settings.watch}
        assert {"docker.io", "ghcr.io", "quay.io"} <= registries
