# `make train` and `make test` set everything up on a fresh machine:
# a virtualenv in .venv with the pinned stack (constraints.txt), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
SITE ?= site
ARGS ?=

.PHONY: install train test test-slow test-fast lint docs bench clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

# the suite without the slow lane: at most 10 minutes on 2 cores; two workers, one test file
# each at a time (module fixtures train once per file)
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

# the slow lane: end-to-end runs of train.py, export, search and minutes of training (CI runs
# it after `make test`)
test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m slow tests

# the fast lane while you work: no end-to-end runs, no unit test that trains whole models
# (at most 3 minutes)
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not trains" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# the documentation site (mkdocs.yml, docs/): --strict fails on a broken link, anchor,
# reference or docstring; the command-line page is generated from the parsers (docs/hooks.py)
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(SITE)

$(DOCS_STAMP): $(STAMP) setup.py constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache $(SITE)
