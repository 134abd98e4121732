# ferry — every set-up step lives here so a fresh clone needs only `make serve` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A real NVIDIA Triton for the gateway tests, from the nvidia-pytriton wheel, in its own venv: the
# wheel pins numpy<2, which cannot share .venv.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
# Type stubs of tritonclient's compiled protos (mypy's mypy_path), generated from their descriptors
PROTO_STUBS := build/stubs
PROTO_STUBS_STAMP := $(PROTO_STUBS)/.generated
PYTRITON_VERSION := 0.7.0
EXAMPLE_REPO ?= model_repository
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
PYTEST_ARGS ?=

.PHONY: help install serve test test-unit test-integration test-gpu lint typecheck fmt bench bench-python \
        bench-sequence proto-stubs fuzz chaos \
        example-repo system-deps triton-server image image-gpu clean

help:
	@echo "make serve   - set up and serve the example model repository on :8000/:8001/:8002"
	@echo "               (HTTP_PORT=, GRPC_PORT=, METRICS_PORT= choose other ports)"
	@echo "make test    - set up and run the whole test suite"
	@echo "make lint    - ruff + mypy"
	@echo "make fuzz    - the hypothesis fuzz tests, long"
	@echo "make chaos   - kill workers and model processes, reload models, under load (CHAOS_SECONDS=)"
	@echo "make bench   - serving benchmarks (prints ratios against in-process ONNX Runtime)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[export,dev]'
	touch $(STAMP)

install: $(STAMP)

$(TRITON_STAMP):
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q nvidia-pytriton==$(PYTRITON_VERSION)
	# the python-backend differential tests run ONNX steps as Python models calling onnxruntime
	$(TRITON_VENV)/bin/python -m pip install -q "onnxruntime>=1.18"
	$(TRITON_VENV)/bin/python -c "import pathlib, pytriton; \
	  assert (pathlib.Path(pytriton.__file__).parent / 'tritonserver/bin/tritonserver').is_file()"
	touch $(TRITON_STAMP)

# tritonserver (CPU, python backend) for tests/integration/server/test_triton_gateway.py.
triton-server: $(TRITON_STAMP)

# Debian packages the tests use (Prometheus + promtool, wrk, h2load, chromium for the HTML
# report test...). Installed only when missing.
system-deps:
	@bash scripts/install-system-deps.sh

# idempotent: keeps what REPO has, adds what is missing (e.g. the pipelines of an older REPO)
example-repo: $(STAMP)
	$(BIN)/python scripts/build_example_repository.py $(EXAMPLE_REPO)

serve: example-repo
	$(BIN)/ferry serve --model-repository $(EXAMPLE_REPO) \
	  --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

# lint first: a formatting or typing slip fails in seconds, before the 8-minute suite
test: lint system-deps $(TRITON_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP) system-deps $(TRITON_STAMP)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu $(PYTEST_ARGS)

# The hypothesis fuzz tests (marker `fuzz`, any test path) with many more examples than
# `make test` gives them (profiles in tests/conftest.py), without the suite's 600 s per-test timeout.
FUZZ_ARGS ?=
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -m fuzz -p no:randomly --timeout=3600 $(FUZZ_ARGS)

# Chaos under load in each serving mode (tests/integration/server/test_chaos.py): skipped in
# `make test`; run it after changing the workers, the Python runtime or model control.
CHAOS_SECONDS ?= 120
chaos: $(STAMP)
	FERRY_CHAOS_SECONDS=$(CHAOS_SECONDS) $(BIN)/python -m pytest -s tests/integration/server/test_chaos.py --timeout=3600 $(PYTEST_ARGS)


$(PROTO_STUBS_STAMP): $(STAMP) scripts/generate_proto_stubs.py
	rm -rf $(PROTO_STUBS)
	$(BIN)/python scripts/generate_proto_stubs.py $(PROTO_STUBS) > /dev/null
	touch $(PROTO_STUBS_STAMP)

proto-stubs: $(PROTO_STUBS_STAMP)


lint: $(STAMP) $(PROTO_STUBS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: $(STAMP) $(PROTO_STUBS_STAMP)
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP) system-deps
	PYTHONPATH=. $(BIN)/python -m bench.serving $(BENCH_ARGS)

# Python models vs the real Triton, the text ensemble vs the encoder alone, BLS cost per call
bench-python: $(STAMP) system-deps $(TRITON_STAMP)
	PYTHONPATH=. $(BIN)/python -m bench.python_models $(BENCH_ARGS)

# a GRU step model, 64 concurrent sequences: served steps/s vs in-process ORT batched 64
bench-sequence: $(STAMP) system-deps
	PYTHONPATH=. $(BIN)/python -m bench.sequence_batching $(BENCH_ARGS)

image:
	docker build --target cpu -t ferry:cpu .

image-gpu:
	docker build --target gpu -t ferry:gpu .

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(EXAMPLE_REPO) $(PROTO_STUBS) .pytest_cache .mypy_cache .ruff_cache
