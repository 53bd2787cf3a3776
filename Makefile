# `make run` starts the server on the embedded defaults; `make test` runs the whole suite.
# Each creates (once) its own virtual environment in .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test bench bench-side clean chromium promtool pg-client

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/tutor serve

# The browser tests drive Debian's Chromium (Playwright's own download is not used). Installed
# here when missing and we are root; otherwise those tests skip (and fail under CI=true).
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser tests will skip (fail under CI)"; \
	  else \
	    echo "$(CHROMIUM) is missing (apt-get install chromium as root): the browser tests will skip"; \
	  fi; \
	fi

# The alert tests run promtool (tests/test_alerts.py). Only the promtool binary is taken from
# Debian's prometheus package (no Prometheus service installed or started), into /usr/local/bin,
# when missing and we are root; otherwise those tests skip (and fail under CI=true).
promtool:
	@if ! command -v promtool >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing promtool (from Debian's prometheus package) for the alert tests"; \
	    tmp=$$(mktemp -d) && chmod 755 $$tmp; \
	    (cd $$tmp && apt-get update -qq && apt-get download -qq prometheus >/dev/null 2>&1 \
	      && dpkg -x prometheus_*.deb root && install -m 755 root/usr/bin/promtool /usr/local/bin/) \
	      || echo "promtool could not be installed: the alert tests will skip (fail under CI)"; \
	    rm -rf $$tmp; \
	  else \
	    echo "promtool is missing (Debian's prometheus package has it): the alert tests will skip"; \
	  fi; \
	fi

# The PostgreSQL backup tests (tests/test_backup.py) run pg_dump, pg_restore and psql.
pg-client:
	@if ! command -v pg_dump >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's postgresql-client for the backup tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends postgresql-client >/dev/null) \
	      || echo "postgresql-client could not be installed: the PostgreSQL backup tests will fail"; \
	  else \
	    echo "pg_dump is missing (apt-get install postgresql-client as root): PostgreSQL backup tests will fail"; \
	  fi; \
	fi

test: $(BIN)/.installed chromium promtool pg-client
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m bench.latency

# Ours (speculation off and on) against Pipecat 1.x, same fake provider and speech (~10 minutes).
# Installs Pipecat into its own venv, bench/.venv-pipecat, on first use.
bench-side: $(BIN)/.installed
	$(BIN)/python -m bench.side_by_side

clean:
	rm -rf $(VENV) bench/results
