PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint npm chromium postgres bench clean bundle

# The venv is rebuilt when pyproject.toml changes; the stamp records which extras are in it.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/tensorfeed-mcp demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check tensorfeed_mcp tests bench
	$(BIN)/ruff format --check tensorfeed_mcp tests bench
	$(BIN)/mypy

# What the tests need from Debian: installed with apt-get when missing and run as root, else the command is shown.
# npm: the MCP conformance suite, Claude Code's CLI and the bundle CLI. chromium: the dashboard tests (Playwright
# from pip brings only its driver, no browser).
define debian_package
	@command -v $(1) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q $(2); \
	  else echo "make test needs $(1): run  sudo apt-get install -y $(2)"; exit 1; fi; }
endef

npm:
	$(call debian_package,npm,nodejs npm)

chromium:
	$(call debian_package,chromium,chromium)

# postgres: the tests start their own PostgreSQL server from Debian's binaries (the system cluster is left alone).
postgres:
	$(call debian_package,pg_ctlcluster,postgresql)

test: lint npm chromium postgres
	$(BIN)/pytest -q -n 2 --dist loadfile

# The MCP Bundle, built with the official CLI (pinned; runs on Node 20): .mcpbignore says what goes in.
MCPB_VERSION := 2.1.2
MCPB := .cache/mcpb/$(MCPB_VERSION)/node_modules/.bin/mcpb

$(MCPB): | npm
	npm install --prefix .cache/mcpb/$(MCPB_VERSION) --no-save --no-audit --no-fund --no-update-notifier @anthropic-ai/mcpb@$(MCPB_VERSION)

bundle: $(MCPB)
	$(MCPB) validate manifest.json
	$(MCPB) pack . tensorfeed-mcp.mcpb

bench: $(VENV)/.installed-test chromium postgres  # the dashboard's render needs Chromium; the hosted section PostgreSQL
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
