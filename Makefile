# The two commands of the README: `make demo` (set up + run the main job on built-in demo data)
# and `make test` (set up + run the tests). Both are idempotent: the environment is rebuilt only
# when pyproject.toml changes, the demo data only when its settings change.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samft-installed
DEMO_DATA ?= data/demo
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/make_demo_data.py $(DEMO_DATA) --images 96
	$(PY) tools/train.py configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check samft tools tests benchmarks

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) outputs mlruns mlflow.db $(DEMO_DATA) .pytest_cache
