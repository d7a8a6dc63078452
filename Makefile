# The two Quick start commands. Each installs what is missing first (infra/bootstrap.sh:
# apt packages, .venv), so either works on a fresh machine.
#   make demo   the main job: start the local stack and run the demo
#   make test   type checks and the whole test suite (unit + integration on the real stack)

VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install demo test typecheck unit integration stack-up stack-down

install:
	@bash infra/bootstrap.sh

demo: install
	@$(VENV)/bin/tapstream demo

test: install typecheck
	@$(PY) -m pytest

typecheck: install
	@$(VENV)/bin/mypy

unit: install
	@$(PY) -m pytest tests/unit

integration: install
	@$(PY) -m pytest tests/integration

stack-up: install
	@$(VENV)/bin/tapstream stack up

stack-down: install
	@$(VENV)/bin/tapstream stack down
