# Two entry points for users: `make demo` (main job on the default data) and `make test`.
# Both create .venv if missing, install requirements.txt (again only when it changed) and
# make sure the default data set is present.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed
DATA_DIR := /usr/share/datasets/fashion-mnist
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup data browser demo example airflow serving-start serving-stop tensorboard test lint format clean bench reliability tf-serving-suite docs

setup: $(STAMP)

$(STAMP): requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required, found " + sys.version.split()[0] + " (set PYTHON=...)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip check
	@touch $@

data:
	@if [ -f $(DATA_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "data: Fashion-MNIST found in $(DATA_DIR)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "data: installing Debian package dataset-fashion-mnist"; \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
			|| { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; \
	else \
		echo "data: $(DATA_DIR) is missing. Install it with 'sudo apt-get install dataset-fashion-mnist'," >&2; \
		echo "      or run with --data-source idx:<folder of IDX files> or --data-source tfds:<name>" >&2; \
		echo "      (add --allow-download true for a TFDS download)." >&2; \
		exit 1; \
	fi

# The training DAG end to end (airflow dags test) on the full data, the local serving server
# left running with the stable model, and predictions for real test images over gRPC and REST.
# Debian's Chromium for the browser test of the Airflow UI (Playwright cannot download browsers here).
browser:
	@if [ -x /usr/bin/chromium ]; then \
		echo "browser: /usr/bin/chromium found"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "browser: installing Debian package chromium"; \
		apt-get install -y -qq chromium >/dev/null 2>&1 \
			|| { apt-get update -qq && apt-get install -y -qq chromium; }; \
	else \
		echo "browser: /usr/bin/chromium is missing: sudo apt-get install chromium" >&2; exit 1; \
	fi

demo: setup data
	$(BIN)/python deploy/local.py demo

# airflow standalone (UI on :8080) with the project's DAGs, plus the local serving server.
# EXECUTOR=celery: the CeleryExecutor with PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379),
# one Celery worker on the default queue and one on the training queue (deploy/celery_stack.py).
EXECUTOR ?= standalone
airflow: setup data
	$(BIN)/python deploy/local.py airflow --executor $(EXECUTOR)

serving-start: setup
	$(BIN)/python deploy/local.py serving-start

serving-stop:
	$(BIN)/python deploy/local.py serving-stop

# TensorBoard (http://localhost:6006) over the training logs of every run under artifacts/runs.
tensorboard: setup
	$(BIN)/python deploy/local.py tensorboard --port $(or $(PORT),6006)

# Benchmarks (not part of `make test`, which runs smoke versions): training speed and quality per
# preset and the input pipeline against in-memory batches (about 20 min on 2 cores), the tabular
# models against gradient boosting on three real tables, then serving latency on the model
# `make demo` published.
bench: setup data
	$(BIN)/python bench/training_speed.py
	$(BIN)/python bench/tabular.py
	$(BIN)/python bench/drift.py
	$(BIN)/python bench/serving_latency.py
	$(BIN)/python bench/tensor_encoding.py
	$(BIN)/python bench/data_scale.py
	$(BIN)/python bench/sharded_ingest.py

# The example project of the README's "Bring your own problem": the Palmer penguins table and its own model.
example: setup
	$(BIN)/python examples/penguins/get_data.py
	$(BIN)/python -m pipeline run --config examples/penguins/penguins.yaml

# Faults injected for real (kills, overlapping exports, hot swaps under load, fuzzing, full disks):
# the long versions, report in bench/results/reliability.{json,md}. make test runs the short ones.
reliability: setup data
	$(BIN)/python bench/reliability.py

# the documentation site on http://127.0.0.1:8000 (docs/, mkdocs.yml)
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# TF Serving's own model-server tests (tensorflow_model_server_test.py) against the local server.
# Needs a TF Serving source checkout: make tf-serving-suite TF_SERVING_SRC=~/src/serving
tf-serving-suite: setup
	@test -n "$(TF_SERVING_SRC)" || { echo "set TF_SERVING_SRC to a checkout of github.com/tensorflow/serving"; exit 2; }
	$(BIN)/python bench/tf_serving_suite.py --tf-serving-src "$(TF_SERVING_SRC)"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Two workers (this machine's cores); each test file stays on one worker, in order.
test: setup data browser lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=20

clean: serving-stop
	rm -rf artifacts airflow_home .pytest_cache .ruff_cache
