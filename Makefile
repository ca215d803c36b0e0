# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint registry-binary clean

$(VENV)/.run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run

run: $(VENV)/.run
	$(BIN)/watcher run --config config.example.toml

test: $(VENV)/.test registry-binary lint
	$(BIN)/pytest

lint: $(VENV)/.test
	$(BIN)/ruff format --check watcher tests
	$(BIN)/ruff check watcher tests
	$(BIN)/mypy

# The integration tests start Debian's docker-registry (CNCF distribution), one of
# them behind htpasswd basic auth (htpasswd comes with apache2-utils).
registry-binary:
	@if ! command -v docker-registry >/dev/null 2>&1 || ! command -v htpasswd >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's docker-registry and apache2-utils for the integration tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends docker-registry apache2-utils >/dev/null; \
	  else \
	    echo "make test needs Debian's docker-registry and apache2-utils: run 'sudo apt-get install docker-registry apache2-utils' and try again" >&2; \
	    exit 1; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
