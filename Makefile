# Two commands set everything up on a fresh machine:
#   make demo   the whole workflow on embedded defaults (local Ray, sqlite MLflow, generated data)
#   make test   lint + the test suite
# Each creates and fills .venv when it is missing.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch and torchvision are pinned to the builds that ship on this kind of machine's disk;
# timm needs a torchvision that matches torch exactly.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO_CONFIG ?= workflows/configs/demo.yaml
PYTEST_ARGS ?=

.PHONY: venv demo test lint format bench clean-demo

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

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/decode.py

clean-demo:
	rm -rf runs/demo
