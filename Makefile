# Set-up is part of every target: a fresh machine needs only `make run` or `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export DGLBACKEND := pytorch

.PHONY: setup run train test test-fast lint bench clean

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# The API (http://127.0.0.1:8000, docs at /docs) and one worker, on SQLite, no external servers.
run: setup
	$(PY) -m service.run_local

# A job from the command line, no service: `make train SPEC=examples/synthetic-mixed.yaml`.
SPEC ?= examples/synthetic-mixed.yaml
train: setup
	$(VENV)/bin/alignahead train $(SPEC) --out runs/$(basename $(notdir $(SPEC)))

# Everything, the slow real-data runs included; starts PostgreSQL and Redis if they are down.
test: setup
	bash scripts/ensure-services.sh
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/compare.py

clean:
	rm -rf runs var .pytest_cache
