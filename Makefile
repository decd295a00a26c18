# Two commands: `make demo` and `make test`. Both create (or reuse) .venv first, installed with the exact lock.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
LOCK ?= lock/py311.txt
VENV_PY := $(VENV)/bin/python
EXTRAS ?= cpu,test
comma := ,
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha1sum | cut -c1-12)-$(subst $(comma),_,$(EXTRAS))
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions/$(notdir $(VENV))
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib

# make compat: the second tested stack (Python 3.12, torch 2.11.0, torchvision 0.26.0), in its own venv.
COMPAT_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
# make wheelhouse: every wheel for another machine, e.g. make wheelhouse PY=3.12 EXTRAS=gpu-cu13 (PY: its Python)
PY ?= 3.11
PLATFORM ?= manylinux_2_28_x86_64
WHEELHOUSE ?= wheelhouse

.PHONY: venv lint test demo bench compat wheelhouse clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	@# The local wheel mirrors make pip warn about every package they lack; keep the log readable.
	set -o pipefail; $(VENV_PY) -m pip install --quiet --progress-bar off -c $(LOCK) -e '.[$(EXTRAS)]' 2>&1 \
		| { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP) lint
	$(VENV_PY) -m pytest -q -ra $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# ruff (pinned in the test extra): formatting and lint, before any test runs.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(VENV_PY) launchers/demo.py --config configs/demo.yaml

bench: $(STAMP)
	$(VENV_PY) launchers/bench.py all

compat:
	$(MAKE) test VENV=.venv-compat PYTHON=$(COMPAT_PYTHON) LOCK=lock/compat-py312.txt

# DeepSpeed's wheel is built with .venv's torch (made first if missing); EXTRAS names the target's extras.
wheelhouse:
	test -x .venv/bin/python || $(MAKE) venv VENV=.venv EXTRAS=cpu,test
	bash scripts/wheelhouse.sh --python $(PY) --platform $(PLATFORM) --extras '$(EXTRAS)' --out $(WHEELHOUSE) \
		--builder .venv/bin/python $(if $(WHEELHOUSE_CONSTRAINTS),--constraints $(WHEELHOUSE_CONSTRAINTS))

clean:
	rm -rf $(VENV) .venv-compat .cache .pytest_cache
