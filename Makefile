# Every target sets itself up: a fresh clone needs nothing but Python 3.11.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RECIPE ?= analyses/default.toml
DATA_ROOT ?=
export OMP_NUM_THREADS ?= 2

.PHONY: setup test figures bench plot clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

figures: $(STAMP)
	$(PY) -m landscape.cli figures $(RECIPE) $(if $(DATA_ROOT),--data-root $(DATA_ROOT),)

plot: $(STAMP)
	$(PY) -m landscape.cli plot

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info
