# The two Quick start commands. Each installs what is missing first (infra/bootstrap.sh:
# apt packages, .venv), so either works on a fresh machine.
#   make demo   the main job: start the local stack and run the demo
#   make test   type checks and the whole test suite (unit + integration on the real stack)

VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-kafka39 typecheck unit integration stack-up stack-down

install:
	@bash infra/bootstrap.sh

demo: install
	@$(VENV)/bin/tapstream demo

test: install typecheck
	@$(PY) -m pytest

# The integration suite again on the other supported Kafka line, in its own state folder and
# ports, so it never touches the default stack (CI runs it after `make test`).
KAFKA39 := TAPSTREAM_KAFKA__VERSION=3.9.2 TAPSTREAM_STATE_DIR=.tapstream/kafka-3.9 \
	TAPSTREAM_KAFKA__PORT=29092 TAPSTREAM_KAFKA__CONTROLLER_PORT=29093 TAPSTREAM_POSTGRES__PORT=55433

test-kafka39: install
	@$(KAFKA39) $(PY) -m pytest tests/integration
	@$(KAFKA39) $(VENV)/bin/tapstream stack down

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
