# The two commands of the README: `make demo` (set up + run the main job on built-in demo data)
# and `make test` (set up + run the tests). Both are idempotent: the environment is rebuilt only
# when pyproject.toml changes, the demo data only when its settings change.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samft-installed
DEMO_DATA ?= data/demo
PYTEST_ARGS ?=

.PHONY: setup setup-sam2 demo test test-long bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(MAKE) --no-print-directory setup-sam2
	touch $(STAMP)

# SAM 2.1 models (model.name=sam2_1_hiera_*) need Meta's sam2 package. It is not a pip extra: sam2 1.1.0 ships
# only a source archive whose setup.py imports torch (an isolated build would fetch a second torch), and
# hydra-core 1.3 pins omegaconf<2.4 while it runs on omegaconf 2.4 as well, so pip must not resolve its
# dependencies (it would downgrade omegaconf). Hence: no build isolation, no dependency resolution, and
# sam2's runtime dependencies named here. ~15 s from scratch (pure Python: SAM2_BUILD_CUDA=0 skips the
# optional CUDA post-processing kernel).
SAM2_RUNTIME := "hydra-core>=1.3.2,<1.4" "antlr4-python3-runtime==4.9.3" "iopath>=0.1.10" "portalocker>=2.0"

setup-sam2:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --quiet --no-build-isolation --no-deps "sam2==1.1.0"
	$(PY) -m pip install --quiet --no-deps $(SAM2_RUNTIME)

demo: $(STAMP)
	$(PY) tools/make_demo_data.py $(DEMO_DATA) --images 96
	$(PY) tools/train.py configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The long tests (marker `long`, each over ~30 s): training on real photos, SIGKILL-and-resume, DDP mixtures.
test-long: $(STAMP)
	$(PY) -m pytest -q -m long $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check samft tools tests benchmarks

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) outputs mlruns mlflow.db $(DEMO_DATA) .pytest_cache
