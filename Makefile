# The two commands a new machine needs: `make demo` and `make test`.
# Both create .venv from requirements.lock when it is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
VENV_STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-output
PYTEST_ARGS ?=

.PHONY: venv demo test bench clean

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip>=24'
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash local_test/demo.sh $(DEMO_DIR)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PY) bench/model_costs.py
	$(PY) bench/training_pipeline.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
