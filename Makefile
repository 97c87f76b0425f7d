# The two commands of the README. Both create .venv on first use: the library
# installed editable with the experiment suite's extras; the trainer runs from
# this checkout as `python -m train` (it is not installed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean mutate docs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m train

# Two workers, one per core of the machines here: most tests are small
# single-threaded compiles and steps, and tests/conftest.py shares one XLA
# compilation cache across them (1249 tests, 11m04s on 2 cores with two
# nice-19 training runs beside it, 2026-12-03; 15m45s before the cache).
test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist worksteal

bench: $(VENV)/.installed
	$(PY) benchmarks/update_overhead.py
	$(PY) benchmarks/train_throughput.py

# The API reference (Sphinx, from the docstrings; warnings are errors),
# into docs/api/_build/html/index.html.
docs: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[docs]'
	$(PY) -m sphinx -W --keep-going -b html docs/api docs/api/_build/html

# Mutation testing (docs/TESTING.md), not part of `make test`: hours per
# target on 2 CPU cores (3,571 mutants in rda_optax/); SAMPLE=300 in the
# environment runs a random sample instead.
mutate: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[mutate]'
	PYTHON=$(PY) scripts/mutate.sh lib
	PYTHON=$(PY) scripts/mutate.sh trainer

clean:
	rm -rf $(VENV) runs
