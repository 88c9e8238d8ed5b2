# The two commands a fresh machine needs: `make dashboard` and `make test`.
# Both build .venv from pyproject.toml the first time (and again when it changes).

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CODE := $(wildcard workers tui tests benchmarks)

.PHONY: dashboard test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	# Byte-compiled as a regular install would be: workers start faster where .pyc cannot be written later.
	$(VENV)/bin/python -m compileall -q workers tui
	touch $(STAMP)

dashboard: $(STAMP)
	$(VENV)/bin/dispatch-lab $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(CODE)
	$(VENV)/bin/ruff format --check $(CODE)
	$(VENV)/bin/mypy

# Two processes, a test file each at a time (a file's private broker node boots once): the tests wait on
# the broker more than they compute, so two halve the wall time on two cores (675 s -> 348 s, one run
# after the other on the same loaded machine). The files go out in the order tests/conftest.py gives them,
# the longest first (xdist's own reorder puts files with many tests first, and the lesson's 80 s last).
# TEST_JOBS=0 runs them in this process, one by one.
TEST_JOBS ?= 2

test: lint
	$(VENV)/bin/python -m pytest -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
