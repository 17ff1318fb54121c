# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch for this machine and CI. On a GPU host: make TORCH="torch==2.13.0" \
#   PIP_INDEX_URL=https://download.pytorch.org/whl/cu128 ... (see README).
TORCH ?= torch==2.13.0
PROMPT ?= a red fox running through fresh snow
PYTEST_ARGS ?=

.PHONY: venv demo test up lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/videogen demo --prompt "$(PROMPT)"

up: venv
	$(BIN)/videogen up

lint: venv
	$(BIN)/ruff check .

test: venv lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .data out .pytest_cache
