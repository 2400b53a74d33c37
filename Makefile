PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint npm bench clean bundle

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

# The conformance tests run the official MCP suite, which needs npm (it fetches its own Node 22).
npm:
	@command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q nodejs npm; \
	  else echo "make test needs npm for the MCP conformance suite: run  sudo apt-get install -y nodejs npm"; exit 1; fi; }

test: lint npm
	$(BIN)/pytest -q -n 2 --dist loadfile

# The MCP Bundle, built with the official CLI (pinned; runs on Node 20): .mcpbignore says what goes in.
MCPB_VERSION := 2.1.2
MCPB := .cache/mcpb/$(MCPB_VERSION)/node_modules/.bin/mcpb

$(MCPB): | npm
	npm install --prefix .cache/mcpb/$(MCPB_VERSION) --no-save --no-audit --no-fund --no-update-notifier @anthropic-ai/mcpb@$(MCPB_VERSION)

bundle: $(MCPB)
	$(MCPB) validate manifest.json
	$(MCPB) pack . tensorfeed-mcp.mcpb

bench: $(VENV)/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
