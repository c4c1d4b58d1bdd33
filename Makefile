# The two commands of the README. Each does all its setup on a fresh machine.
#   make ingest FILES="~/reports some.pdf"   ingest into the embedded store
#   make test                                the test suite (offline, stand-in model)
VENV ?= .venv
FILES ?=
PYTEST_ARGS ?=

.PHONY: setup setup-dev ingest test lint bench

setup:
	scripts/setup.sh

setup-dev:
	scripts/setup.sh --dev

ingest: setup
	$(VENV)/bin/pagerag ingest $(FILES)

test: setup-dev
	HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: setup-dev
	$(VENV)/bin/ruff check . && $(VENV)/bin/mypy
