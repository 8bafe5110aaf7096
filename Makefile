# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=

.PHONY: run test dev-install system-deps system-deps-test clean fuzz
.PHONY: install uninstall check-packaging packaging-tools bench mutate man

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# What running needs (the daemon and the example OTA backend's Flask), not the test tools:
# `make run` installs only this; `make test` adds the test extras on top.
$(VENV)/.installed-run: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[examples]'
	touch $@

# The development environment (.venv) that `make run` uses.
dev-install: system-deps $(VENV)/.installed-run

system-deps:
	scripts/install-system-deps.sh run

system-deps-test:
	scripts/install-system-deps.sh test

run: dev-install
	scripts/run-dev.sh

test: system-deps-test packaging-tools $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The HTTP property fuzzing at length (make test runs a bounded profile of the same tests).
fuzz: $(VENV)/.installed
	QPROXY_FUZZ=deep $(VENV)/bin/python -m pytest tests/test_http_fuzz.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) run .pytest_cache *.egg-info

# qtls-server as a Linux service (README, "Production deployment"): as root, or staged with
# DESTDIR=... (no user, no chown; owners in $(PREFIX)/share/qproxy/install-manifest).
# QPROXY_SKIP_VENV=1 skips building the service's venv in /opt/qproxy.
PREFIX ?= /usr/local
DESTDIR ?=
QPROXY_SKIP_VENV ?=
# The service's venv is built on the system Python: a user-local one (pyenv, ~/.local) sits in
# a home directory that the unit's ProtectHome=yes hides. `make install INSTALL_PYTHON=...`
# picks another (install.sh refuses one under /home, /root or /run/user).
INSTALL_PYTHON ?= /usr/bin/python3

install:
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" QPROXY_SKIP_VENV="$(QPROXY_SKIP_VENV)" \
		PYTHON="$(INSTALL_PYTHON)" scripts/install.sh

uninstall:
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" scripts/uninstall.sh

# Man pages qtls-server(8) and qproxy(1) from the click commands (committed in man/; a test
# fails when they are out of date, and make install installs them).
man: $(VENV)/.installed
	$(VENV)/bin/python scripts/make-man.py --out man

# Tools that check the unit, AppArmor and SELinux policies, logrotate, audit and sysctl files.
packaging-tools:
	scripts/install-packaging-tools.sh

check-packaging: packaging-tools $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests/test_packaging.py $(PYTEST_ARGS)

# Benchmarks (benchmarks/RESULTS.md): qtls-server against nginx and the crypto bound.
BENCH_ARGS ?= --write
bench: system-deps-test $(VENV)/.installed
	$(VENV)/bin/python -m benchmarks.run $(BENCH_ARGS)

# A bounded mutation run (scripts/mutate.py): one line of proxy/, tls/protocol.py or daemon/
# broken at a time, the tests that claim it rerun, the mutants they miss listed. On demand, not
# part of `make test`. MUTATE_ARGS="qproxy/proxy/headers.py --max-mutants 30 --e2e" narrows or
# widens it.
MUTATE_ARGS ?=
mutate: $(VENV)/.installed
	$(VENV)/bin/python scripts/mutate.py $(MUTATE_ARGS)
