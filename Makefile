# Set-up is part of every target: a fresh machine needs only `make run` or `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export DGLBACKEND := pytorch

.PHONY: setup run train test test-fast test-py312 lint bench clean

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# The API (http://127.0.0.1:8000, docs at /docs) and one worker, on SQLite, no external servers.
# `make run PORT=8001 HOST=0.0.0.0` serves elsewhere (unset: ALIGNAHEAD_API_PORT/_HOST, else the defaults).
HOST ?=
PORT ?=
run: setup
	$(PY) -m service.run_local $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# A job from the command line, no service: `make train SPEC=examples/synthetic-mixed.yaml`.
SPEC ?= examples/synthetic-mixed.yaml
train: setup
	$(VENV)/bin/alignahead train $(SPEC) --out runs/$(basename $(notdir $(SPEC)))

# Everything, the slow real-data runs included; starts PostgreSQL and Redis if they are down.
test: setup
	bash scripts/ensure-services.sh
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

# The library's tests on Python 3.12, where DGL does not install (its tests skip, saying so); the
# environment is cached outside the checkout (scripts/py312-env.sh). Exit 3: no Python 3.12 here.
test-py312:
	@venv=$$(bash scripts/py312-env.sh) && PYTHONPATH=$(CURDIR) $$venv/bin/python -m pytest -q -p no:cacheprovider \
		-m "not slow" --ignore=tests/service tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/compare.py

clean:
	rm -rf runs var .pytest_cache
