# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch for this machine and CI. On a GPU host: make TORCH="torch==2.13.0" \
#   PIP_INDEX_URL=https://download.pytorch.org/whl/cu128 ... (docs/operations.md, "A real
#   model on a GPU host").
TORCH ?= torch==2.13.0
PROMPT ?= a red ball bouncing on a wooden floor
PYTEST_ARGS ?=
# e.g. TRAIN_ARGS="--set dit_steps=5000 --work .data/train" (python -m videogen.tiny.train --help)
TRAIN_ARGS ?=

.PHONY: venv demo test test-fast test-faults test-big up lint clean bench sim tools train-tiny eval-tiny

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

# Ruff's checks and formatting, and mypy on the packages (pyproject.toml says which).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# promtool checks the alert rules (tests/test_ops.py). It comes from Debian's prometheus
# package, unpacked into .venv: no root, no system install. A promtool on PATH is used as is.
# Chromium and ChromeDriver, for the web page's browser tests (tests/test_web.py), come the
# same way (tests/tools/get-chromium.sh; about 400 MB unpacked).
tools: $(BIN)/promtool $(BIN)/chromedriver

$(BIN)/promtool: | $(VENV)/.installed
	@if command -v promtool >/dev/null 2>&1; then ln -sf "$$(command -v promtool)" $@; \
	else tmp=$$(mktemp -d) && (cd $$tmp && apt-get download prometheus >/dev/null) \
	  && dpkg-deb -x $$tmp/prometheus_*.deb $$tmp/x && cp $$tmp/x/usr/bin/promtool $@ \
	  && rm -rf $$tmp; fi
	$@ --version | head -1

$(BIN)/chromedriver: tests/tools/get-chromium.sh | $(VENV)/.installed
	bash tests/tools/get-chromium.sh $(BIN)
	$@ --version

test: venv lint tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fast tier: no services, nothing slow (pytest markers `stack` and `slow`), about a minute.
test-fast: venv tools
	$(BIN)/python -m pytest -m "not stack and not slow" -q $(PYTEST_ARGS)

# The fault tier alone: outages injected into real services, each test with its own time budget
# (pytest.mark.timeout). `make test` runs these too.
test-faults: venv tools
	$(BIN)/python -m pytest -m fault -q $(PYTEST_ARGS)

# The Wan directories of the 14B-wide and 5B-wide variants (several GB each), which `make test`
# leaves out for time: about two minutes on 2 cores.
test-big: venv
	$(BIN)/python -m pytest -m big -q $(PYTEST_ARGS)

# The built-in model: train it again (about 50 minutes on 2 cores; writes videogen/tiny/model,
# which is committed), and measure its prompt adherence (a few minutes; writes
# benchmarks/results/tiny/). Neither is part of `make test`.
train-tiny: venv
	$(BIN)/python -m videogen.tiny.train $(TRAIN_ARGS)

eval-tiny: venv
	$(BIN)/python -m videogen.tiny.evaluate

# Benchmarks of the service on the embedded stack: figures printed and written to
# benchmarks/results/ (never part of `make test`'s pass/fail).
bench: venv
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Fleet simulator: the product requirements' cost table and the checkpoint-policy comparison
# (sim/README.md).
sim: venv
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m sim $(SIM_ARGS)

clean:
	rm -rf $(VENV) .data out .pytest_cache
