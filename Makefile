# The two commands of the README: `make demo` and `make test`. Both install into .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# CPU build from the local wheel on CPU-only machines; set TORCH_SPEC for another build.
TORCH_SPEC ?= torch==2.13.0
STAMP_BASE := $(VENV)/.installed-base
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test quick install install-dev export check-export nbtest pytest readme docker docs

$(PY):
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python venv module missing; installing python3-venv"; \
	  apt-get update -qq && apt-get install -y -qq python3-venv python3-pip >/dev/null && $(PYTHON) -m venv $(VENV); }

$(STAMP_BASE): settings.ini setup.py | $(PY)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	@touch $@

$(STAMP_DEV): $(STAMP_BASE)
	$(PIP) install -q -e ".[dev]"
	@touch $@

install: $(STAMP_BASE)
install-dev: $(STAMP_DEV)

## The main job: runs nbs/runs/demo.ipynb through papermill and records it in experiment_results/runs/.
demo: install
	$(PY) -m swebench_lab.runs demo

export: install-dev
	$(VENV)/bin/nbdev_export
	$(VENV)/bin/nbdev_clean

## nbdev_export must leave the library exactly as it is (the notebooks are the source).
check-export: install-dev
	@before=$$(sha256sum swebench_lab/*.py); \
	$(VENV)/bin/nbdev_export; \
	after=$$(sha256sum swebench_lab/*.py); \
	if [ "$$before" != "$$after" ]; then \
	  echo "error: nbdev_export changed swebench_lab/: the library differs from the notebooks."; \
	  echo "Edit the notebook, run 'make export', and commit notebook and module together."; \
	  diff <(echo "$$before") <(echo "$$after") || true; exit 1; \
	else echo "nbdev_export: library matches the notebooks"; fi

nbtest: install-dev
	$(VENV)/bin/nbdev_test --path nbs --n_workers 2

# Tests run in parallel workers (most of their time is spent waiting on containers and servers); each test checks only
# the containers it started. Tests that share an expensive module fixture (trained adapters) are one xdist group, so it
# is built once. Tests marked `alone` (the Ray cluster: a starting Ray node has a fixed 30 s to register, which a
# machine busy with image builds misses) run afterwards in one process. PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 3
pytest: install-dev
	@rc=0; \
	$(VENV)/bin/pytest tests $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup -m "not alone") --durations=25 || rc=$$?; \
	$(if $(filter 0,$(PYTEST_WORKERS)),,$(VENV)/bin/pytest tests -m alone --durations=10 || rc=$$?;) \
	exit $$rc

## The fast tier while you work: in-process tests only (no containers, no servers), well under a minute.
quick: install-dev
	$(VENV)/bin/pytest -m quick -q -p no:cacheprovider

## A Docker engine for the evaluation tests (Debian/Ubuntu: installs docker.io and debootstrap, starts dockerd).
docker: install
	$(PY) -m swebench_lab.environments provision

## Everything CI runs; ends with pytest's summary line.
test: check-export nbtest pytest

## The documentation site from the notebooks (into _docs/), checked page by page in headless Chromium (Debian's
## chromium, installed when missing); screenshots in _docs/screenshots/. `python -m swebench_lab.docsite serve` serves it.
## EXECUTE=1 runs the notebooks first (as nbdev_test does) so the pages show the examples' outputs (about 6 min here).
docs: install-dev
	$(PY) -m swebench_lab.docsite build --check $(if $(EXECUTE),--execute,)

## README.md is generated from nbs/index.ipynb.
readme: install-dev
	$(VENV)/bin/jupyter nbconvert --to markdown --execute nbs/index.ipynb --output-dir . --output README --log-level WARN
	@sed -i -e '/^#| /d' README.md
