# The two commands a new machine needs: `make demo` and `make test`.
# Both create .venv from requirements-dev.lock (the images' and deploy stages' locks plus test
# tools) when it is missing, and install the four distributions (code, serve, deploy, synth) editable.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
VENV_STAMP := $(VENV)/.installed
# MMS's JVM class-data archive (serve/dagm_serve/class_archive.py), where serve looks for it.
CLASS_ARCHIVE := $(VENV)/share/dagm-serve/mms-classes.jsa
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-output
PYTEST_ARGS ?=
# Where `make bench` and `make bench-real` write their records (bench/record.py) and
# `make figures` reads them; RECORD= writes none.
RECORD ?= docs/results
SUITE_RECORD := bench-output/suite.json

.PHONY: venv locks demo test docs bench bench-real bench-labels bench-serving figures images image-test local-aws clean

# An empty MLflow store at MLflow's schema, which each training job copies (dagm_defects/tracking/store.py).
MLFLOW_TEMPLATE_STAMP := $(VENV)/share/dagm-defects/.template-made

venv: $(VENV_STAMP) $(CLASS_ARCHIVE) $(MLFLOW_TEMPLATE_STAMP)

# editable_mode=compat: a plain path entry per project; setuptools' default import finders
# cost every Python process the tests start about 0.3 s more (measured with torch's import).
$(VENV_STAMP): requirements/train.lock requirements/serve.lock requirements/deploy.lock requirements/local-mode.lock \
		requirements-dev.lock \
		code/pyproject.toml serve/pyproject.toml deploy/pyproject.toml synth/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip>=24'
	$(PY) -m pip install --quiet -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation --config-settings editable_mode=compat \
		-e ./code -e ./serve -e ./deploy -e ./synth
	touch $@

$(CLASS_ARCHIVE): $(VENV_STAMP) docker/mms.properties
	MMS_CONFIG_FILE=docker/mms.properties DAGM_MMS_LOG_CONFIG=docker/mms-log4j2.xml \
		$(VENV)/bin/dagm-mms-class-archive $@

$(MLFLOW_TEMPLATE_STAMP): $(VENV_STAMP)
	$(PY) -m dagm_defects.tracking.store
	touch $@

# Rewrite requirements/*.lock from the pyproject.toml files and what .venv has installed.
locks: venv
	$(PY) requirements/lock.py

demo: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash local_test/demo.sh $(DEMO_DIR)

# The user guide (mkdocs.yml, strict: a broken link or a page missing from the nav fails).
SITE_DIR ?= site
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir $(SITE_DIR)

# A whole-suite run records its duration and counts (bench/suite_record.py) for `make figures`,
# and fails unless every command the docs show ran (tests/command_ledger.py). It lists its
# slowest tests, where a shorter suite starts.
# Two workers (pytest-xdist), each with its own local AWS; a test file stays on one worker, so
# its module fixtures are made once. Most tests wait on processes, so two workers share two
# cores well (the suite's record, docs/results.md). PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
test: venv docs
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(if $(PYTEST_ARGS),,--suite-record $(SUITE_RECORD) --doc-commands) \
		--durations 15 $(PYTEST_ARGS)

bench: venv
	$(PY) bench/model_costs.py
	$(PY) bench/training_pipeline.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/tracking_overhead.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/serving.py

# The CPU recipe on genuine DAGM (../shared/data/dagm-real), three seeds; skips without it.
bench-real: venv
	$(PY) bench/real_dagm.py $(if $(RECORD),--record $(RECORD)/real-dagm.json)

# The default recipe at several label budgets (masks kept, defective images kept) on genuine
# DAGM Class 8 and magnetic-tile Class 1 (../shared/data), one job after another; skips a set
# without its data.
bench-labels: venv
	$(PY) bench/label_budget.py $(if $(RECORD),--record $(RECORD)/label-budget.json)

# The serving figures the docs quote: the real `serve` on bench-real's seed-0 model (genuine
# class 8) against in-process, clean vs defective on the genuine class 8 images.
DAGM_REAL ?= ../shared/data/dagm-real
bench-serving: venv
	test -f bench-output/real/seed-0/model/model.pt || { echo "run make bench-real first"; exit 2; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) bench/serving.py --model-dir bench-output/real/seed-0/model \
		--verdict-images $(DAGM_REAL)/Class8 $(if $(RECORD),--record $(RECORD)/serving.json)

# The docs' measured figures (README.md, docs/**/*.md) rendered from $(RECORD)/*.json by
# bench/figures.py, taking in the last whole `make test` run's record first.
figures: venv
	if [ -f $(SUITE_RECORD) ]; then mkdir -p $(RECORD) && cp $(SUITE_RECORD) $(RECORD)/suite.json; fi
	$(PY) bench/figures.py --results $(RECORD)

# Both images, tagged with the commit and `latest` (needs a Docker daemon).
images:
	tools/build_and_push.sh

# Both images built from the committed Dockerfiles and run for real (tools/image_test):
# with Docker when a daemon answers, else with buildah on a Debian 12 base made by debootstrap,
# both installed here from Debian's packages when missing (as root, like CI).
image-test: venv
	@if ! docker info >/dev/null 2>&1 && ! { command -v buildah && command -v debootstrap; } >/dev/null; then \
		echo "installing buildah and debootstrap (Debian packages)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			buildah debootstrap; \
	fi
	PYTHONPATH=tools $(PY) -m image_test

# A local AWS in the foreground (moto plus real endpoints): AWS_ENDPOINT_URL=http://127.0.0.1:$(PORT)
PORT ?= 4566
local-aws: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHONPATH=tools $(PY) -m local_aws --port $(PORT)

clean:
	rm -rf $(DEMO_DIR) bench-output .pytest_cache $(SITE_DIR)
