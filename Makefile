# One command each: `make repro` (the real experiment), `make demo` (offline, synthetic data, tiny
# CLIP, CPU, about a minute), `make test`. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# DVC stage commands call `python`: make it the project's interpreter.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv repro demo demo-multigen demo-cross compare test test-fast lint bench ui clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision unpinned from the registry: a matching pair, so `import open_clip` works.
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "import open_clip, torch, mlflow, dvc; print('venv ok: torch', torch.__version__)"
	@touch $@

repro: venv
	dvc repro

demo: venv
	aigi demo

# The demo, then linear_probe, full and contrastive as queued DVC experiments (offline, a few minutes on CPU).
compare: venv
	aigi compare

# Attribution offline: three synthetic generators, one of them (VAE) held out of training.
demo-multigen: venv
	aigi demo --dir demo-multigen --generators GAN,DIFFUSION,VAE --unseen VAE

# Cross-dataset offline: train on one synthetic dataset, test on another whose generators differ.
demo-cross: venv
	aigi demo --dir cross-demo --params params.cross-demo.yaml

test: venv
	MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 python -m pytest -q

# The edit-test loop: every test but the end-to-end ones (marked e2e). `make test` stays the whole suite (CI).
test-fast: venv
	MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 python -m pytest -q -m "not e2e"

lint: venv
	ruff check .

bench: venv
	python bench/preprocess.py
	python bench/finetune.py
	python bench/predict.py

# Prints each experiment's runs-table URL (headline columns), then serves the project's store.
ui: venv
	aigi ui

clean-demo:
	rm -rf demo demo-multigen cross-demo
