# Two commands set everything up on a fresh machine:
#   make demo   the whole workflow on embedded defaults (local Ray, sqlite MLflow, generated data)
#   make test   lint + the test suite (make test-fast: the unit tier, on 2 processes)
# Each creates and fills .venv when it is missing.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch and torchvision are pinned to the builds that ship on this kind of machine's disk;
# timm needs a torchvision that matches torch exactly.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO_CONFIG ?= workflows/configs/demo.yaml
PYTEST_ARGS ?=

# The browser test drives Debian's chromium and the decode-format tests Debian's ffmpeg;
# `make test` installs them where apt-get exists (`browser` is the old name of `test-deps`).
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HAS_APT := $(shell command -v apt-get >/dev/null 2>&1 && echo 1)

.PHONY: venv demo test test-fast lint format bench clean-demo browser test-deps

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m workflows.pipeline --config $(DEMO_CONFIG) $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test-deps:
ifeq ($(HAS_APT),1)
	@missing="$$(command -v chromium >/dev/null 2>&1 || echo chromium) $$(command -v ffmpeg >/dev/null 2>&1 || echo ffmpeg)"; \
	if [ -n "$${missing# }" ]; then \
		echo "installing Debian's $$missing (headless browser test, decode-format tests)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
else
	@echo "no apt-get here: the browser test is skipped unless /usr/bin/chromium exists,"
	@echo "the decode-format tests unless ffmpeg is on PATH"
endif

browser: test-deps

# The unit tier on two processes first (it starts no Ray), then everything that starts Ray,
# a server or a browser, in one process (a local Ray, then the cluster; two processes, the cluster's
# tests beside the rest, measured no faster on 2 cores: 676-919 s against 801-1,059 s
# serial then; serial on 2026-12-02 710-924 s). The slowest tests are listed at the end.
PYTEST := $(if $(HAS_APT),AVARNET_REQUIRE_BROWSER=1) $(PY) -m pytest
test: lint test-deps
	$(PYTEST) -m "not integration" -q -n 2 $(PYTEST_ARGS)
	$(PYTEST) -m integration --durations=15 $(PYTEST_ARGS)

# The unit tier: everything that starts no Ray, server or browser (see tests/conftest.py).
test-fast: lint
	$(PY) -m pytest -m "not integration" -q -n 2 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/decode.py

clean-demo:
	rm -rf runs/demo
