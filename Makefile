# Two commands do everything: `make experiment NAME=deep_online` and `make test`.
# Each creates .venv and installs ojax into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NAME ?= deep_online
ARGS ?=
export MALLOC_MMAP_THRESHOLD_ ?= 8000000
export MALLOC_TRIM_THRESHOLD_ ?= 100000000
export MALLOC_TOP_PAD_ ?= 67108864
# Lets XLA:CPU update kernels in place inside the scan instead of copying them
# every step (the generic, unfused step of a batch-1 loop gains the most).
export XLA_FLAGS ?= --xla_cpu_copy_insertion_use_region_analysis=true

.PHONY: install experiment test test-slow test-min lint mutate bench results sweep \
  clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[experiments,test,lint]"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[experiments,test,lint,bench]"
	touch $@

install: $(VENV)/.installed

experiment: $(VENV)/.installed
	$(PY) -m experiments.main --config=experiments/configs/$(NAME).py $(ARGS)

sweep: $(VENV)/.installed
	$(PY) -m experiments.main --config=experiments/configs/$(NAME).py \
	  --config.sweep.lr="(0.003,0.01,0.03,0.1)" \
	  --config.sweep.oja_lr="(0.0,0.0003,0.001,0.003,0.01)" $(ARGS)

# The fast suite (< 3 min on 2 cores); test-slow runs the end-to-end tests.
test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 -m "not slow" --doctest-modules ojax tests $(ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 -m slow tests $(ARGS)

# What users get: builds the sdist and wheel (no deprecation warnings, twine
# check), installs the wheel into a fresh venv with the lowest versions
# pyproject allows (tests/min_requirements.py) and runs the library's tests
# there: every test module that does not import the harness. pytest's own
# script (not `python -m`) keeps the checkout off sys.path, so `import ojax`
# is the installed wheel.
MIN_VENV ?= .venv-min
LIB_TESTS = $(shell grep -LE "(from|import) (experiments|nbclient)" tests/test_*.py)
test-min:
	rm -rf $(MIN_VENV) build/dist && mkdir -p build
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip build twine
	$(MIN_VENV)/bin/python -m build -o build/dist . > build/build.log 2>&1 \
	  || { cat build/build.log; exit 1; }
	! grep -iE "deprecat|BuildBackendWarning" build/build.log
	$(MIN_VENV)/bin/python -m twine check --strict build/dist/*
	$(MIN_VENV)/bin/python -m pip install -q build/dist/*.whl \
	  $$($(PYTHON) tests/min_requirements.py) "pytest>=8" "pytest-xdist>=3.5"
	cd /tmp && $(CURDIR)/$(MIN_VENV)/bin/python -P -c "import ojax, jax, \
	  flax, optax; print('test-min: ojax', ojax.__version__, 'from', \
	  ojax.__file__, '| jax', jax.__version__, 'flax', flax.__version__, \
	  'optax', optax.__version__)"
	$(MIN_VENV)/bin/pytest -q -n 2 -p no:cacheprovider -m "not slow" $(LIB_TESTS)

# Mutation check: plants each bug of tests/mutate.py's table (a sign, a mean,
# a permutation, a threshold, Holm, a fingerprint field, ...) in a copy of the
# repository, runs the fast tests that cover it and prints which ones caught
# it and "mutation score: K/N killed"; fails if a bug goes unnoticed or the
# table no longer matches the code. Several minutes; ARGS=--only=NAME,...
mutate: $(VENV)/.installed
	$(PY) tests/mutate.py $(ARGS)

# ruff (lint and format) and mypy over the library; configured in pyproject.toml.
lint: $(VENV)/.installed
	$(PY) -m ruff check ojax
	$(PY) -m ruff format --check ojax
	$(PY) -m mypy

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/bench.py $(ARGS)

results: $(VENV)/.installed
	$(PY) -m experiments.results $(ARGS)

clean:
	rm -rf runs .pytest_cache
