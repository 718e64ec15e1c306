# Two commands a newcomer needs: `make example` (the main job: the toy-world demo) and
# `make test`.
# Both create .venv and install everything on first use: the CPU build of torch first
# (an unpinned torch would pull a multi-GB CUDA build), then this package with its extras.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install example example-quick test test-fast clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

example: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/lens-oracle demo --out demo_out

example-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/lens-oracle demo --quick --out demo_out_quick

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
