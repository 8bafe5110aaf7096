# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: run test install system-deps system-deps-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: system-deps $(VENV)/.installed

system-deps:
	scripts/install-system-deps.sh run

system-deps-test:
	scripts/install-system-deps.sh test

run: install
	scripts/run-dev.sh

test: system-deps-test $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) run .pytest_cache *.egg-info
