# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint python-venv test-services clean

$(VENV)/.run: pyproject.toml | python-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml | python-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run

run: $(VENV)/.run
	$(BIN)/watcher run --config config.example.toml

test: $(VENV)/.test test-services lint
	$(BIN)/pytest

lint: $(VENV)/.test
	$(BIN)/ruff format --check watcher tests
	$(BIN)/ruff check watcher tests
	$(BIN)/mypy

# Debian's python3 makes virtual environments only with python3-venv.
python-venv:
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || $(call apt,python3-venv)

# The integration tests start Debian's docker-registry (CNCF distribution), one of
# them behind htpasswd basic auth (htpasswd comes with apache2-utils), and a real
# Prometheus; promtool checks the alert rules.
test-services:
	@command -v docker-registry >/dev/null 2>&1 && command -v htpasswd >/dev/null 2>&1 \
	  && command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
	  || $(call apt,docker-registry apache2-utils prometheus)

# $(call apt,PACKAGES): install Debian packages as root, or say how to.
define apt
  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
      echo "installing Debian packages: $(1)"; \
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends $(1) >/dev/null; \
    else \
      echo "this needs Debian packages: run 'sudo apt-get install $(1)' and try again" >&2; \
      exit 1; \
    fi; }
endef

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# `make bench`: issue #6's benchmark (bench/README.md); prints a table and writes
# bench/RESULTS.md. Flags go in BENCH_ARGS, e.g. BENCH_ARGS="--tags 100 --profile".
.PHONY: bench bench-services
BENCH_ARGS ?=

$(VENV)/.bench: pyproject.toml | python-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@ $(VENV)/.run

bench: $(VENV)/.bench bench-services
	$(BIN)/python -m bench $(BENCH_ARGS)

# The benchmark runs Debian's docker-registry and, for its baseline, curl.
bench-services:
	@command -v docker-registry >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 \
	  || $(call apt,docker-registry curl)
