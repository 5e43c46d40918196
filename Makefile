# One-command setup: every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sgl-betty-installed

.PHONY: install test test-fast demo gpu-check lint clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# betty-ml 0.2.1 declares Requires-Python <3.11 without a reason and runs fine on 3.11:
# install it first without that check, then the project (pip accepts the installed copy).
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --no-deps --ignore-requires-python betty-ml==0.2.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# One worker per core; a file's tests share a worker, so its module fixtures are built once.
PYTEST_PARALLEL := -n auto --dist loadfile

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_PARALLEL)

# Everything but the tests marked slow (recipes end to end, subprocesses, wheel builds).
test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow"

demo: $(STAMP)
	$(PY) benchmarks/cifar100.py preset=smoke

# The full-size search and evaluation on one CUDA GPU (a few minutes; without a GPU, the small
# version): one JSON line on stdout and gpu_check.json.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check sgl_betty problems engine benchmarks tests
	$(VENV)/bin/ruff format --check sgl_betty problems engine benchmarks tests

clean:
	rm -rf $(VENV) build *.egg-info
