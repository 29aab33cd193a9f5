# The two commands a new machine needs: `make demo` and `make test`.
# Both create .venv from requirements-dev.lock (the runtime lock plus test tools) when it is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
VENV_STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-output
PYTEST_ARGS ?=

.PHONY: venv demo test bench bench-real images local-aws clean

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip>=24'
	$(PY) -m pip install --quiet -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash local_test/demo.sh $(DEMO_DIR)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PY) bench/model_costs.py
	$(PY) bench/training_pipeline.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/serving.py

# The CPU recipe on genuine DAGM (../shared/data/dagm-real), three seeds; skips without it.
bench-real: venv
	$(PY) bench/real_dagm.py

# Both images, tagged with the commit and `latest` (needs a Docker daemon).
images:
	local_test/build_and_push.sh

# A local AWS in the foreground (moto plus real endpoints): AWS_ENDPOINT_URL=http://127.0.0.1:$(PORT)
PORT ?= 4566
local-aws: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHONPATH=local_test $(PY) -m local_aws --port $(PORT)

clean:
	rm -rf $(DEMO_DIR) bench-output .pytest_cache
