# Two commands a user needs: `make demo` and `make test`. Everything else they
# call is set up here, from a bare Debian machine with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
EDGE_VENV ?= .venv-edge
TFLITE_VENV ?= .venv-tflite
BIN := $(VENV)/bin
LIB := fedge model_export quantization aggregation_service edge_client device_profiles privacy
PIP_FLAGS ?= --disable-pip-version-check -q

.PHONY: demo test lint typecheck unit venv clean bench system-deps

# The full development environment: every extra, TensorFlow included.
$(VENV)/.stamp: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/python -m pip install $(PIP_FLAGS) -e '.[all]'
	touch $@

# What a device installs: `fedge[edge]`, which must never pull TensorFlow.
$(EDGE_VENV)/.stamp: pyproject.toml
	test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install $(PIP_FLAGS) -e '.[edge]'
	touch $@

# The last tflite-runtime wheel (Raspberry Pi OS bookworm, Python 3.11): it is
# built against NumPy 1.x, so it lives in its own environment.
$(TFLITE_VENV)/.stamp: pyproject.toml
	test -x $(TFLITE_VENV)/bin/python || $(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/python -m pip install $(PIP_FLAGS) 'tflite-runtime==2.14.0' 'numpy<2' aiohttp zstandard pyyaml cryptography
	$(TFLITE_VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps -e .
	touch $@

venv: $(VENV)/.stamp $(EDGE_VENV)/.stamp $(TFLITE_VENV)/.stamp

demo: $(VENV)/.stamp
	$(BIN)/fedge demo

lint: $(VENV)/.stamp
	$(BIN)/ruff check $(LIB) tests bench

typecheck: $(VENV)/.stamp
	$(BIN)/mypy

# Debian packages the tests drive for real: chromium for the dashboard's
# browser test (Playwright drives it; it never downloads a browser of its
# own), fiu-utils for fault injection into a real fedge serve.
system-deps:
	scripts/system-deps.sh

unit: venv system-deps
	FEDGE_EDGE_PYTHON=$(abspath $(EDGE_VENV))/bin/python \
	FEDGE_TFLITE_PYTHON=$(abspath $(TFLITE_VENV))/bin/python \
	$(BIN)/pytest -n 2 --dist loadfile

test: venv lint typecheck unit

bench: $(VENV)/.stamp
	$(BIN)/fedge bench

clean:
	rm -rf $(VENV) $(EDGE_VENV) $(TFLITE_VENV) .mypy_cache .ruff_cache .pytest_cache

.PHONY: arm64-check
# Raspberry Pi OS (Debian bookworm arm64, Python 3.11) under qemu-user: builds or
# reuses the rootfs in .cache/arm64-rootfs, trains the exported mlp under
# tflite-runtime 2.14 and runs one agent cycle against `fedge serve` on loopback.
# Needs root, the Debian archive and PyPI; a first build takes 10-20 minutes,
# so it is not part of `make test` (see docs/raspberry-pi.md).
arm64-check: $(VENV)/.stamp $(TFLITE_VENV)/.stamp
	VENV=$(VENV) TFLITE_VENV=$(TFLITE_VENV) scripts/arm64/check.sh
