# Two commands: `make demo` and `make test`. Both create (or reuse) .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,test
comma := ,
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)-$(subst $(comma),_,$(EXTRAS))
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib

.PHONY: venv lint test demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# The local wheel mirrors make pip warn about every package they lack; keep the log readable.
	set -o pipefail; $(PY) -m pip install --quiet --progress-bar off -e '.[$(EXTRAS)]' 2>&1 \
		| { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP) lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# ruff (pinned in the test extra): formatting and lint, before any test runs.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) launchers/demo.py --config configs/demo.yaml

bench: $(STAMP)
	$(PY) launchers/bench.py all

clean:
	rm -rf $(VENV) .cache .pytest_cache
