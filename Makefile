# Every target sets itself up: a fresh clone needs nothing but Python 3.11.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RECIPE ?= analyses/default.toml
DATA_ROOT ?=
SEEDS  ?=
JOBS   ?=
# The default recipe on its own seeds publishes its results into README.md (docs/results.md).
PUBLISH ?= $(if $(SEEDS),,$(if $(filter analyses/default.toml,$(RECIPE)),README.md,))

.PHONY: setup test figures bench plot clean compare

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@start=$$(date +%s); \
	$(PYTHON) -m venv $(VENV) && \
	$(PY) -m pip install -q --upgrade pip && \
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 && \
	$(PY) -m pip install -q -c constraints.txt -e '.[test]' && \
	echo $$(( $$(date +%s) - start )) > $(VENV)/.setup-seconds
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

figures: $(STAMP)
	$(PY) -m landscape figures $(RECIPE) $(if $(DATA_ROOT),--data-root $(DATA_ROOT),) \
		$(if $(SEEDS),--seeds $(SEEDS),) $(if $(JOBS),--jobs $(JOBS),) $(if $(PUBLISH),--publish $(PUBLISH),)

# quantizers x bit widths x layers (analyses/compare.toml); publishes its blocks into README.md
compare: $(STAMP)
	$(PY) -m landscape compare analyses/compare.toml $(if $(SEEDS),--seeds $(SEEDS),--publish README.md) \
		$(if $(JOBS),--jobs $(JOBS),)

plot: $(STAMP)
	$(PY) -m landscape plot

bench: $(STAMP)
	$(PY) benchmarks/run.py --publish README.md

clean:
	rm -rf $(VENV) build dist *.egg-info
