# Two commands that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: venv demo test lint faults bench clean wordnet

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medreg build examples/demo.yaml --out out/demo

# METEOR's WordNet synonyms: Debian's wordnet-base (NLTK would download its corpus at run time); optional
wordnet:
	@test -f /usr/share/wordnet/data.noun || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get install -y -q wordnet-base >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
	   apt-get install -y -q wordnet-base >/dev/null 2>&1))) || echo "wordnet-base not installed: METEOR without synonyms"

test: $(STAMP) wordnet
	$(PY) -m pytest -q

# the quality gate: ruff (E,F,W,B,UP,SIM,C90<=15, RUF100 no unused noqa, 120 columns) and mypy at zero findings (pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline flows schemas sources
	$(VENV)/bin/mypy

# slow or privileged fault trials: kill -9 at random points, concurrent builds, a full tmpfs (root)
faults: $(STAMP)
	$(PY) -m pytest -q -m faults

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf out .pytest_cache
