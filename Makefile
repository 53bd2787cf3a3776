# `make run` starts the server on the embedded defaults; `make test` runs the whole suite.
# Each creates (once) its own virtual environment in .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test bench clean chromium

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

test: $(BIN)/.installed chromium
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m bench.latency

clean:
	rm -rf $(VENV) bench/results
