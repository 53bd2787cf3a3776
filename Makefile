# `make run` starts the server on the embedded defaults; `make test` runs the whole suite.
# Each creates (once) its own virtual environment in .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test bench bench-side clean debian-tools turn-model

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(MAKE) turn-model
	touch $@

# The end-of-turn model behind semantic_vad (smart-turn v3, BSD-2) ships only inside Pipecat's
# wheel: installed without its dependencies (numba, Pillow, aiohttp... we need none of them),
# since we read its model file and never import pipecat (providers/smart_turn.py).
PIPECAT_MODEL_WHEEL := pipecat-ai==1.14.0
turn-model:
	$(BIN)/python -m pip install --quiet --no-deps '$(PIPECAT_MODEL_WHEEL)'

run: $(BIN)/.installed
	$(BIN)/tutor serve

# What some tests need from Debian, installed when missing and we are root (one apt-get update):
# chromium for the browser tests (Playwright's own download is never used), postgresql-client
# (pg_dump, pg_restore, psql) for the backup tests, haproxy to check deploy/haproxy.cfg, and
# promtool for the alert tests (only the binary, taken out of the prometheus package: no
# Prometheus service is installed or started). Otherwise those tests skip, and fail under CI=true.
debian-tools:
	@missing=""; \
	[ -x $(CHROMIUM) ] || missing="$$missing chromium"; \
	{ command -v pg_dump && command -v psql; } >/dev/null 2>&1 || missing="$$missing postgresql-client"; \
	command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	command -v promtool >/dev/null 2>&1 || promtool=1; \
	if [ -n "$$missing$$promtool" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing from Debian for the tests:$$missing$${promtool:+ promtool}"; \
	    apt-get update -qq || true; \
	    if [ -n "$$missing" ]; then \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	        $$missing >/dev/null || echo "could not install$$missing: their tests will skip (fail under CI)"; \
	    fi; \
	    if [ -n "$$promtool" ]; then \
	      tmp=$$(mktemp -d) && chmod 755 $$tmp; \
	      (cd $$tmp && apt-get download -qq prometheus >/dev/null 2>&1 \
	        && dpkg -x prometheus_*.deb root && install -m 755 root/usr/bin/promtool /usr/local/bin/) \
	        || echo "promtool could not be installed: the alert tests will skip (fail under CI)"; \
	      rm -rf $$tmp; \
	    fi; \
	  else \
	    echo "missing for some tests (apt-get install as root):$$missing$${promtool:+ promtool}; they will skip"; \
	  fi; \
	fi

# Two workers (pytest-xdist): tests are isolated (a database, a port and a temp dir each), and
# two suit a 2-core CI machine; more would mostly add PostgreSQL connections. PYTEST_WORKERS=0
# runs it serially.
PYTEST_WORKERS ?= 2

test: $(BIN)/.installed debian-tools
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS)

bench: $(BIN)/.installed
	$(BIN)/python -m bench.latency

# Ours (speculation off and on) against Pipecat 1.x, same fake provider and speech (~10 minutes).
# Installs Pipecat into its own venv, bench/.venv-pipecat, on first use.
bench-side: $(BIN)/.installed
	$(BIN)/python -m bench.side_by_side

clean:
	rm -rf $(VENV) bench/results
