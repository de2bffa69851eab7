# Two commands that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: venv demo test faults bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medreg build examples/demo.yaml --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

# slow or privileged fault trials: kill -9 at random points, concurrent builds, a full tmpfs (root)
faults: $(STAMP)
	$(PY) -m pytest -q -m faults

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf out .pytest_cache
